// The direct convolution's register-blocked tile kernel (torch-free), compiled per ISA from
// conv2d_direct.inc, and the CPU drivers that use it (conv2d_direct.cpp).
//
// One kernel serves the forward pass and grad_input. A tile is MR positions x NR channels of the
// result; its value is a sum over `taps` kernel taps and `depth` reduction channels:
//   acc[m][v] = sum over t < taps, r < depth of  src[t][m][first + r * stride] * wp[(t * depth + r) * NR + v]
// (stride: a plane in NCHW, 1 in NHWC)
// forward:    positions = output pixels, v = output channels, r = input channels, src = the input
//             pixel that tap t of output pixel m reads;
// grad_input: positions = input pixels, v = input channels, r = output channels, src = the output
//             pixel whose tap t reads input pixel m (grad_output there).
// A tap that falls outside the image (padding, or for grad_input a stride that skips the pixel; but
// see direct_grad_input_applies: grad_input runs here only at stride 1) points at a block of zeros as
// long as one image group of the source, so every tile runs the same loop and nothing is ever copied
// or padded (the zeros come from calloc: untouched pages of the kernel's shared zero page, or one
// small block, either way cache-resident).
// Per reduction step the kernel loads NR/lanes weight vectors, broadcasts MR source values and does
// MR * NR/lanes fused multiply-adds into accumulators that stay in registers.
#pragma once

#include <cstdint>

namespace fastconv::cpu {

template <typename T>
struct DirectConvKernels {
  int mr, nr;
  // The tile: src holds taps x mr pointers, read at first + r * stride for r < depth; the result
  // goes to out[v * ld + dst[m]] for m < h, v < w: plus bias[v] (when not null), or, with
  // accumulate, added to what out holds (a later chunk of the reduction).
  void (*tile)(int64_t taps, int64_t depth, const T* const* src, int64_t first, int64_t stride, const T* wp, T* out,
               const int64_t* dst, int64_t ld, int64_t h, int64_t w, const T* bias, bool accumulate);
};

extern const DirectConvKernels<float> direct_kernels_f32_avx512, direct_kernels_f32_avx2;
extern const DirectConvKernels<float> direct_kernels_f32_avx512_emulated;   // isa.h: avx512_emulated
extern const DirectConvKernels<double> direct_kernels_f64_avx512, direct_kernels_f64_avx2;
extern const DirectConvKernels<double> direct_kernels_f64_avx512_emulated;   // isa.h: avx512_emulated

}  // namespace fastconv::cpu

namespace fastconv {
struct Conv2dShape;
}

namespace fastconv::cpu {

// The weight's strides (output channel, input channel, kernel row, kernel column): the kernels read
// it in place in any layout (contiguous, channels-last) and repack it once per call.
struct DirectWeightStrides {
  int64_t k, c, i, j;
};

// The direct algorithm (conv2d_direct.cpp), for float and double, on contiguous NCHW tensors, or with
// `nhwc` on channels-last ones (x, out, dy and dx alike):
// out = conv(x, w) + bias (bias may be null), and dx = the transposed convolution of dy. Depthwise
// layers that conv2d_depthwise.h's kernels take (depthwise_applies) run on those instead.
template <typename T>
void conv2d_direct_forward(const T* x, const T* w, const DirectWeightStrides& ws, const T* bias, T* out,
                           const Conv2dShape& s, bool nhwc);
template <typename T>
void conv2d_direct_grad_input(const T* dy, const T* w, const DirectWeightStrides& ws, T* dx, const Conv2dShape& s,
                              bool nhwc);

// Whether algorithm="direct" computes grad_input by its own kernels (conv2d_direct_grad_input, which
// takes only these): the depthwise ones, or the transposed tiles where the stride is 1. With a stride,
// most of a transposed tile's taps fall between grad_output's pixels (3 of 4 at stride 2) and multiply
// zeros, in a vector over the input channels: ResNet-18's stem (7x7 stride 2, 3 input channels, batch
// 8, 224 px) took 432 ms, im2col's grad_input 19 and torch's 50; a 3x3 stride-2 layer of 64 -> 128
// channels fwd+bwd 0.58x torch. conv2d.cpp runs im2col's grad_input for those (the same sums in
// another order), as direct's grad_weight always does.
bool direct_grad_input_applies(const Conv2dShape& s, int64_t elem, bool nhwc);

}  // namespace fastconv::cpu
