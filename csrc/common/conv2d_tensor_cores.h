// conv2d's forward pass in half precision on the mma.sync tensor-core GEMM (issue 14): im2col of
// float16/bfloat16 images, then per (image, group) C = W x cols with float32 sums, the bias (prefilled
// into the output, beta = 1) added before the one rounding -- what the CPU's bfloat16 im2col does.
// Shared by the CUDA glue (cuda/conv2d_glue.cpp) and its CPU emulation (cpu/cuda_mma_emulation.cpp,
// torch.ops.fastconv_testing.cuda_conv2d_half), which run the same plan, pitches and batch offsets on
// their own Backend:
//   im2col(x, images, p0, pc, pitch, cols)   cols[row][p - p0] at row * pitch + (p - p0) for the rows
//                                            (n, c, i, j) of `images` images, positions [p0, p0 + pc)
//   gemm(params, batch)                      the tensor-core GEMM over a strided batch
// The GEMM reads 16-byte chunks, so every operand row starts 16-byte aligned: the filters are copied
// into rows of kc rounded up to 8 elements, each column row is padded to a multiple of 8 positions
// (the padding is never read: the GEMM's extents stop at kc and pc), and images come in bundles and
// positions in chunks of a multiple of 8 so that the columns fit the workspace.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <optional>

#include "common/conv2d_args.h"
#include "common/gemm_batch.h"
#include "common/mma_gemm.h"

namespace fastconv {

struct Conv2dTensorCorePlan {
  int64_t kc, kc8;      // a group's filter row (cg * kh * kw) and its padded pitch
  int64_t positions;    // output positions per image
  int64_t images;       // images per launch
  int64_t chunk;        // positions per launch: all, or a multiple of 8
};

// The largest bundle of images whose columns fit `workspace_elems`; where one image's do not, one
// image at a time in chunks of positions.
inline Conv2dTensorCorePlan conv2d_tensor_core_plan(const Conv2dShape& s, int64_t workspace_elems) {
  Conv2dTensorCorePlan plan;
  plan.kc = s.in_channels / s.groups * s.g.kh * s.g.kw;
  plan.kc8 = mma_pitch(plan.kc);
  plan.positions = s.g.out_h * s.g.out_w;
  const int64_t rows = s.in_channels * s.g.kh * s.g.kw, image = rows * mma_pitch(plan.positions);
  if (image <= workspace_elems || rows == 0) {
    plan.chunk = plan.positions;
    plan.images = std::clamp<int64_t>(image > 0 ? workspace_elems / image : s.batch, 1, std::max<int64_t>(s.batch, 1));
  } else {
    plan.images = 1;
    plan.chunk = std::min(plan.positions, std::max<int64_t>(8, workspace_elems / rows / 8 * 8));
  }
  return plan;
}

// The column workspace's elements for a plan.
inline int64_t conv2d_tensor_core_workspace(const Conv2dShape& s, const Conv2dTensorCorePlan& plan) {
  return plan.images * s.in_channels * s.g.kh * s.g.kw * mma_pitch(plan.chunk);
}

// out (NCHW, 16-bit elements) = conv(x, w8) (+ out's prior contents, the bias, when accumulate). w8:
// the filters as [out_channels][kc8].
template <class Backend>
void conv2d_tensor_core_forward(Backend& be, const Conv2dShape& s, const Conv2dTensorCorePlan& plan,
                                const uint16_t* x, const uint16_t* w8, uint16_t* out, bool accumulate,
                                uint16_t* cols) {
  const int64_t C = s.in_channels, K = s.out_channels, G = s.groups, kg = K / G, P = plan.positions;
  const int64_t hw = s.g.in_h * s.g.in_w;
  for (int64_t n0 = 0; n0 < s.batch; n0 += plan.images) {
    const int64_t nb = std::min(plan.images, s.batch - n0);
    for (int64_t p0 = 0; p0 < P; p0 += plan.chunk) {
      const int64_t pc = std::min(plan.chunk, P - p0), pitch = mma_pitch(pc);
      be.im2col(x + n0 * C * hw, nb, p0, pc, pitch, cols);
      MmaGemmParams p;
      p.m = kg;
      p.n = pc;
      p.k = plan.kc;
      p.a = {w8, plan.kc8, true, kg};
      p.b = {cols, pitch, false, pc};
      p.alpha = 1.0f;
      p.beta = accumulate ? 1.0f : 0.0f;
      p.c = out + n0 * K * P + p0;
      p.ldc = P;
      GemmBatch batch;   // GEMM z = (image z / G, group z % G)
      batch.count = nb * G;
      batch.inner = G;
      batch.a = {0, kg * plan.kc8, 0};
      batch.b = {G * plan.kc * pitch, plan.kc * pitch, 0};
      batch.c = {K * P, kg * P, 0};
      be.gemm(p, batch);
    }
  }
}

// The whole forward pass from tensors: output, filter copy, bias prefill, workspace, then the plan.
template <class Backend>
at::Tensor conv2d_tensor_cores(Backend& be, const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, const Conv2dShape& s,
                               int64_t workspace_bytes) {
  at::Tensor out = at::empty(conv2d_output_sizes(s), input.options());
  if (out.numel() == 0) return in_format(out, s.format);
  const Conv2dTensorCorePlan plan = conv2d_tensor_core_plan(s, workspace_bytes / 2);
  const at::Tensor x = input.contiguous();
  at::Tensor w8 = at::empty({s.out_channels, plan.kc8}, weight.options());
  w8.narrow(1, 0, plan.kc).copy_(weight.reshape({s.out_channels, plan.kc}));
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) conv2d_prefill_bias(out, *bias, s);   // the GEMM's beta term
  at::Tensor cols = at::empty({std::max<int64_t>(conv2d_tensor_core_workspace(s, plan), 8)}, input.options());
  conv2d_tensor_core_forward(be, s, plan, static_cast<const uint16_t*>(x.data_ptr()),
                             static_cast<const uint16_t*>(w8.data_ptr()), static_cast<uint16_t*>(out.data_ptr()),
                             has_bias, static_cast<uint16_t*>(cols.data_ptr()));
  return in_format(out, s.format);
}

}  // namespace fastconv
