// Depthwise convolution on the CPU (conv2d_depthwise.cpp): one filter per channel (groups = input
// channels = output channels, MobileNet's 3x3 layers), any kernel, stride, padding and dilation, float32
// and float64, on NCHW or channels-last tensors in place. algorithm="direct" runs it for these shapes,
// and "auto" picks direct for them (common/conv2d_args.h).
//
// NCHW: each plane is copied zero-padded and split by columns into `stride` phases (column u*sw + f of
// the padded plane at phase f, column u), so that every tap of a row of outputs reads a contiguous run:
//   forward      out row oh = bias + sum over taps t of w[t] * (phase row of tap t)     (rows, gather)
//   grad_input   phase f of dx's row = sum over the taps reading it of w[t] * (a zero-padded dy row),
//                then merged back out of the phases into dx's row                  (rows, gather)
//   grad_weight  dw[c][t] = sum over images and rows of dot(dy row, phase row of tap t)  (dots)
// Channels-last: the channels of a pixel are the vector lanes:
//   forward      out[pixel][c] = bias[c] + sum over the taps inside the image of w[t][c] x[tap's pixel][c]
//   grad_input   dx[pixel][c] = sum over the output pixels whose tap t reads it of w[t][c] dy[..][c]
//   grad_weight  dw[t][c] += dy[pixel][c] x[tap's pixel][c], threads summing rows into partial sums
// In a row of pixels, those whose taps all fall inside the image's width read the same offsets from
// their own origin: they run a row at a time (channels_row, channels_acc_row: several pixels or taps
// per loaded vector, no per-pixel list of taps); grad_input does so where the horizontal stride is 1.
// NCHW planes of up to 256 pixels (1024 in the backward passes) run these kernels on channels-last copies.
#pragma once

#include <cstdint>

#include "cpu/conv2d_direct_kernels.h"

namespace fastconv::cpu {

// The most lanes of any ISA's vectors (AVX-512): the stride of dots' per-tap accumulators.
template <typename T>
constexpr int64_t kDepthwiseMaxLanes = 64 / sizeof(T);

// The vector primitives, compiled per ISA from conv2d_depthwise.inc.
template <typename T>
struct DepthwiseKernels {
  int lanes;   // per vector
  // Rows r < rows: out[r * ld + i] = bias + sum over t < taps of w[t] * src[r * taps + t][i], for i < n
  // (src is read up to n rounded up to whole vectors; out is written below n only).
  void (*gather)(T* out, int64_t ld, const T* const* src, int64_t rows, const T* w, int64_t taps, int64_t n, T bias);
  // acc[t * kDepthwiseMaxLanes + l] += the products a[i] * src[t][i] of i < n in lane l, for t < taps
  // (a and src are read up to n rounded up to whole vectors).
  void (*dots)(const T* a, const T* const* src, int64_t taps, int64_t n, T* acc);
  // out[c] = (bias ? bias[c] : 0) + sum over t < taps of w[t][c] * src[t][c], for c < C
  void (*channels)(T* out, const T* const* src, const T* const* w, int64_t taps, int64_t C, const T* bias);
  // channels for `count` pixels (out p * C apart) whose tap t reads src + p * step + off[t]: a row of
  // pixels with every tap inside the image
  void (*channels_row)(T* out, const T* src, int64_t step, const int64_t* off, const T* const* w, int64_t taps,
                       int64_t C, const T* bias, int64_t count);
  // acc[t][c] += a[c] * src[t][c], for t < taps, c < C
  void (*channels_acc)(T* const* acc, const T* a, const T* const* src, int64_t taps, int64_t C);
  // channels_acc for `count` pixels (a p * C apart) whose tap t reads src + p * step + off[t]
  void (*channels_acc_row)(T* const* acc, const T* a, const T* src, int64_t step, const int64_t* off, int64_t taps,
                           int64_t C, int64_t count);
  // The stride-2 column phases of h rows of w values: even[r * ld + u] = src[r * w + 2 u] and
  // odd[r * ld + u] = src[r * w + 2 u + 1] (nothing else written)
  void (*split2)(const T* src, int64_t h, int64_t w, T* even, T* odd, int64_t ld);
};

extern const DepthwiseKernels<float> depthwise_kernels_f32_avx512, depthwise_kernels_f32_avx2;
extern const DepthwiseKernels<float> depthwise_kernels_f32_avx512_emulated;   // isa.h: avx512_emulated
extern const DepthwiseKernels<double> depthwise_kernels_f64_avx512, depthwise_kernels_f64_avx2;
extern const DepthwiseKernels<double> depthwise_kernels_f64_avx512_emulated;   // isa.h: avx512_emulated

}  // namespace fastconv::cpu

namespace fastconv {
struct Conv2dShape;
}

namespace fastconv::cpu {

// Whether the depthwise kernels take this shape: groups = input channels = output channels, and in
// NCHW a padded plane of `elem`-byte values small enough for each thread's scratch memory.
bool depthwise_applies(const Conv2dShape& s, int64_t elem, bool nhwc);

// x, out, dy, dx: N x C x H x W, or with `nhwc` N x H x W x C; w: C x 1 x kh x kw through its strides;
// dw (written): C x kh x kw, the memory order of both the contiguous and the channels-last weight.
template <typename T>
void conv2d_depthwise_forward(const T* x, const T* w, const DirectWeightStrides& ws, const T* bias, T* out,
                              const Conv2dShape& s, bool nhwc);
template <typename T>
void conv2d_depthwise_grad_input(const T* dy, const T* w, const DirectWeightStrides& ws, T* dx, const Conv2dShape& s,
                                 bool nhwc);
template <typename T>
void conv2d_depthwise_grad_weight(const T* dy, const T* x, T* dw, const Conv2dShape& s, bool nhwc);

}  // namespace fastconv::cpu
