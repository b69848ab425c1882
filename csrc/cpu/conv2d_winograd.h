// The Winograd convolution on the CPU (conv2d_winograd.cpp), for the conv2d op's glue: float and
// double (float16 and bfloat16 in float32 inside), 3x3 kernels, stride 1, dilation 1, groups 1;
// m = 2 or 4. Tensors contiguous NCHW, or all of a call's activations (x and out, dy and dx, x and
// dy) channels-last, which then run the channels-last pass (no NCHW copies). A NaN or an infinity
// would spread through a tile's transform to outputs that torch's convolution keeps finite, so the
// activations (x, dy) must be finite: the caller checks them (all_finite, cpu/memory.h) and runs
// im2col's kernels otherwise. The weight is checked by its filter transform: forward and grad_input
// return false, having written nothing, for a weight with a NaN or an infinity.
#pragma once

#include <ATen/ATen.h>

#include "common/conv2d_args.h"

namespace fastconv::cpu {

// out = conv(x, weight) + bias (bias may be undefined); the filter transform comes from the cache.
bool conv2d_winograd_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, at::Tensor& out,
                             const Conv2dShape& s, int m);

// dx = the transposed convolution of dy: a Winograd correlation of dy with the flipped, transposed
// filters (cached too) and padding 2 - p, which may be negative (then it crops).
// The least size in bytes of the transformed filters U (alpha^2 x K x C values) for which a
// convolution whose filters are transformed for that call only runs the fused pass
// (conv2d_winograd.cpp: run_fused); -1 is the rule's size. Returns the previous setting. For tests
// (0 sends every eligible problem through the fused pass) and measurements.
int64_t winograd_set_fused_min_bytes(int64_t bytes);
// How many passes have run fused since the process started (for tests: that the setting above took).
int64_t winograd_fused_passes();
// The most bytes of one thread's working set (its ring of transformed tiles) for which a forward or
// grad_input pass runs per block of tiles on one thread (conv2d_winograd.cpp: run_tiled,
// run_tiled_nhwc); -1 is the rule's (the L2; two blocks per thread at least), 0 never. Returns the
// previous setting. For tests (a large size sends every problem with a block through the tiled pass)
// and measurements.
int64_t winograd_set_tiled_max_bytes(int64_t bytes);
// How many passes have run tiled since the process started.
int64_t winograd_tiled_passes();

bool conv2d_winograd_grad_input(const at::Tensor& dy, const at::Tensor& weight, at::Tensor& dx, const Conv2dShape& s,
                                int m);

// dw = the weight gradient of out = conv(x, w) for grad_output dy, by Winograd's adjoint transforms
// (contiguous NCHW x and dy; dw K x C x 3 x 3, dense in any layout: written through its strides).
void conv2d_winograd_grad_weight(const at::Tensor& x, const at::Tensor& dy, at::Tensor& dw, const Conv2dShape& s,
                                 int m);

}  // namespace fastconv::cpu
