// Channels-last (NHWC) convolution by im2col + the GEMM engine (conv2d_nhwc.cpp): float32 and float64,
// any geometry and groups, on tensors already in NHWC order.
#pragma once

#include <ATen/ATen.h>

#include "common/conv2d_args.h"

namespace fastconv::cpu {

// Whether this call runs in NHWC (im2col here, direct in conv2d_direct.cpp, Winograd's channels-last
// pass): a channels-last convolution (s.format) whose input is stored channels-last, with images, in
// float32 or float64, and for im2col runs of 16+ values per tap row (Cg channels, or kw taps x C
// channels in one group without dilation) or, in one group without dilation along the width, at most a
// K block of taps (kh * kw * C <= 256: the 3-channel stems), for Winograd 16+ channels per group; direct
// takes any.
bool conv2d_nhwc_applies(const at::Tensor& input, const Conv2dShape& s);

// x: N x H x W x C; w: the weight channels-last (K x kh x kw x C/groups), `weight` the caller's tensor
// (what the weight cache keys its packed form on); out: N x OH x OW x K.
template <typename T>
void conv2d_nhwc_forward(const T* x, const at::Tensor& weight, const T* w, const T* bias, T* out, const Conv2dShape& s);
// dy: N x OH x OW x K; dx (written): N x H x W x C.
template <typename T>
void conv2d_nhwc_grad_input(const T* dy, const at::Tensor& weight, const T* w, T* dx, const Conv2dShape& s);
// dw (written): the weight's shape, channels-last.
template <typename T>
void conv2d_nhwc_grad_weight(const T* dy, const T* x, T* dw, const Conv2dShape& s);

}  // namespace fastconv::cpu
