// A CPU emulation of the CUDA im2col convolution's launches, for tests on machines without a GPU
// (most of ours). It runs common/conv2d_gemm_plan.h, the very plan the CUDA glue runs, with each
// launch replaced by host loops over the same thread bodies: common/conv2d.h's im2col_source and
// col2im_gather, and a GEMM that walks the kernel's block tiles (gemm_block_tile) and batch offsets
// (gemm_batch_offset) with the kernel's beta rule. Only the kernels' inner tiling and the launch
// syntax are left untested here.
//
// Registered in its own namespace, fastconv_testing, so that it is not one of fastconv's ops:
//   torch.ops.fastconv_testing.cuda_conv2d_plan(input, weight, grad_output, stride, padding, dilation,
//                                               groups, workspace_bytes) -> (out, grad_input, grad_weight)
// float64 CPU tensors, no bias; a small workspace_bytes forces chunking over images and positions.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "common/conv2d_args.h"
#include "common/conv2d_gemm_plan.h"

namespace fastconv::cpu {
namespace {

constexpr const char* kOp = "cuda_conv2d_plan";
constexpr int64_t kBM = 64, kBN = 64;   // the CUDA kernel's block tile (cuda/gemm.cu)

struct HostLaunches {
  const Conv2dShape& s;

  void im2col(const void* x, int64_t images, int64_t p0, int64_t pc, void* cols) const {
    const auto* xp = static_cast<const double*>(x);
    auto* cp = static_cast<double*>(cols);
    const int64_t total = images * s.in_channels * s.g.kh * s.g.kw * pc;
    for (int64_t e = 0; e < total; ++e) {
      const int64_t src = im2col_source<int64_t>(e, s.g, p0, pc);
      cp[e] = src >= 0 ? xp[src] : 0.0;
    }
  }

  void col2im_add(const void* cols, int64_t images, int64_t p0, int64_t pc, void* dx) const {
    const auto* cp = static_cast<const double*>(cols);
    auto* dp = static_cast<double*>(dx);
    const int64_t total = images * s.in_channels * s.g.in_h * s.g.in_w;
    for (int64_t e = 0; e < total; ++e) dp[e] += col2im_gather<double, int64_t>(cp, e, s.g, p0, pc);
  }

  // gemm_batched's semantics, walked block tile by block tile as the kernel's grid does.
  void gemm(int64_t m, int64_t n, int64_t k, const void* a, int64_t rs_a, int64_t cs_a, const void* b, int64_t rs_b,
            int64_t cs_b, double beta, void* c, int64_t rs_c, const GemmBatch& batch) const {
    if (m == 0 || n == 0 || batch.count == 0) return;
    const auto* ap = static_cast<const double*>(a);
    const auto* bp = static_cast<const double*>(b);
    auto* cp = static_cast<double*>(c);
    const int64_t m_tiles = (m + kBM - 1) / kBM, tiles = m_tiles * ((n + kBN - 1) / kBN);
    for (int64_t block = 0; block < tiles; ++block) {
      int64_t row0, col0;
      gemm_block_tile(block, m_tiles, kBM, kBN, &row0, &col0);
      for (int64_t z = 0; z < batch.count; ++z) {
        double* cz = cp + gemm_batch_offset(batch, batch.c, z, 0);
        for (int64_t i = row0; i < std::min(m, row0 + kBM); ++i) {
          for (int64_t j = col0; j < std::min(n, col0 + kBN); ++j) {
            double acc = 0;
            for (int64_t r = 0; r < batch.reduce; ++r) {
              const double* az = ap + gemm_batch_offset(batch, batch.a, z, r);
              const double* bz = bp + gemm_batch_offset(batch, batch.b, z, r);
              for (int64_t kk = 0; kk < k; ++kk) acc += az[i * rs_a + kk * cs_a] * bz[kk * rs_b + j * cs_b];
            }
            double& dst = cz[i * rs_c + j];
            dst = beta == 0.0 ? acc : acc + beta * dst;
          }
        }
      }
    }
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> cuda_conv2d_plan(const at::Tensor& input, const at::Tensor& weight,
                                                                const at::Tensor& grad_output, at::IntArrayRef stride,
                                                                at::IntArrayRef padding, at::IntArrayRef dilation,
                                                                int64_t groups, int64_t workspace_bytes) {
  TORCH_CHECK(input.scalar_type() == at::kDouble && weight.scalar_type() == at::kDouble &&
                  grad_output.scalar_type() == at::kDouble,
              "fastconv_testing::", kOp, ": expected float64 tensors");
  TORCH_CHECK(workspace_bytes > 0, "fastconv_testing::", kOp, ": expected workspace_bytes > 0, got ", workspace_bytes);
  const Conv2dShape s = check_conv2d(input, weight, std::nullopt, stride, padding, dilation, groups, "im2col", kOp);
  TORCH_CHECK(s.batched, "fastconv_testing::", kOp, ": expected a batched (4-D) input");
  const at::Tensor x = input.contiguous(), w = weight.contiguous(), dy = grad_output.contiguous();
  const Conv2dGemmDims d = conv2d_gemm_dims(s, sizeof(double), static_cast<size_t>(workspace_bytes));
  const Conv2dBatching batching = conv2d_batching(s, d, sizeof(double), static_cast<size_t>(workspace_bytes));
  TORCH_CHECK(dy.sizes() == at::IntArrayRef(conv2d_output_sizes(s)), "fastconv_testing::", kOp,
              ": grad_output has the wrong shape");
  const double nan = std::numeric_limits<double>::quiet_NaN();
  // Prefilled with NaN where the plan must write every element, so that an unwritten one shows.
  const int64_t ws = conv2d_batching_workspace(s, d, batching);
  at::Tensor cols = at::full({std::max<int64_t>(ws, 1)}, nan, x.options());
  at::Tensor out = at::full(conv2d_output_sizes(s), nan, x.options());
  at::Tensor dx = d.pointwise ? at::full(x.sizes(), nan, x.options()) : at::zeros(x.sizes(), x.options());
  at::Tensor dw = at::zeros(w.sizes(), w.options());
  HostLaunches be{s};
  void* cp = ws > 0 ? cols.data_ptr() : nullptr;
  if (out.numel() > 0) conv2d_plan_forward(be, s, d, batching, sizeof(double), x.data_ptr(), w.data_ptr(), out.data_ptr(), false, cp);
  conv2d_plan_grad_input(be, s, d, batching, sizeof(double), dy.data_ptr(), w.data_ptr(), dx.data_ptr(), cp);
  conv2d_plan_grad_weight(be, s, d, batching, sizeof(double), dy.data_ptr(), x.data_ptr(), dw.data_ptr(), cp);
  return {out, dx, dw};
}

}  // namespace

TORCH_LIBRARY(fastconv_testing, m) {
  m.def("cuda_conv2d_plan(Tensor input, Tensor weight, Tensor grad_output, int[2] stride, int[2] padding, "
        "int[2] dilation, int groups, int workspace_bytes) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastconv_testing, CPU, m) { m.impl("cuda_conv2d_plan", &cuda_conv2d_plan); }

}  // namespace fastconv::cpu
