// bfloat16 direct convolution on the CPU's bfloat16 dot product (vdpbf16ps): an implicit GEMM with
// output positions as the micro-tile's rows and output channels as its columns, read straight from a
// zero-padded NHWC copy of the input, no column matrix. Products are summed in float32 and rounded
// once to nearest even, as torch's bfloat16 convolution does.
//
// Per call:
//   1. the input copied into padded NHWC pair words, a bundle of images at a time (kWorkspaceBytes) (channels innermost, a zero channel appended to
//      an odd count): a pixel's channels are then the K run of every tap;
//   2. the filters packed per 64 output channels as [tap][channel pair][64 lanes] pair words (the
//      WeightCache keeps them for a weight that does not require grad);
//   3. the output positions grouped by which taps fall inside the image (their row and column
//      masks: an interior pixel has all kh x kw, a corner of a 3x3 padding-1 layer 4), cut into tiles
//      of kBf16MR positions within a group; a tile multiplies only its positions' taps (the padding is
//      never multiplied), which spares 18-31% of the products on ResNet's 7x7 and 4x4 layers;
//   4. each (64 channels, tile) product: one micro-kernel call over the tile's taps (conv2d_bf16_direct.inc),
//      its float32 tile plus bias rounded into the NCHW output. Parallel over those pairs, in chunks
//      of tiles that every panel visits in turn (a chunk's input reused from cache) where the input
//      outweighs the filters, else panels outermost (a panel's filters reused by every tile).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "common/conv2d_args.h"
#include "cpu/gemm_bf16.h"
#include "cpu/memory.h"

namespace fastconv::cpu {

// Where the direct bfloat16 kernel applies: one group, kernels at most 32 taps on a side (a tile's
// 32-bit row and column tap masks).
bool bf16_direct_applies(const Conv2dShape& s);

// algorithm="auto" in bfloat16 where the direct kernel applies: see conv2d_bf16_direct.cpp.
bool bf16_direct_preferred(const Conv2dShape& s);

// The kernels for the active ISA (the real vdpbf16ps at avx512_bf16 and amx), or null.
const Bf16DirectKernels* bf16_direct_native();

// out (NCHW, bfloat16, s's output sizes) = conv(x, w) + bias by the given kernels; x and w contiguous
// bfloat16, `weight` the caller's tensor (the cache's key), bias bfloat16 or undefined; the NHWC copy
// takes at most workspace_bytes (but always one image).
void conv2d_bf16_direct(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& w, const at::Tensor& bias,
                        at::Tensor& out, const Conv2dShape& s, const Bf16DirectKernels& kernels,
                        int64_t workspace_bytes = int64_t(kWorkspaceBytes));

}  // namespace fastconv::cpu
