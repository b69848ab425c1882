// CUDA glue for fastconv::gemm: checks (shared with the CPU), the output prefilled with beta's c, then
// the tiled kernel of gemm.cu on the current stream. Half precision runs in float32 for now.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/gemm_args.h"
#include "cuda/gemm.h"

namespace fastconv::cuda {
namespace {

constexpr const char* kOp = "gemm";

at::Tensor gemm_cuda(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& c, bool trans_a,
                     bool trans_b, double alpha, double beta, std::optional<at::ScalarType> out_dtype) {
  const GemmShape s = check_gemm(a, b, c, trans_a, trans_b, out_dtype, kOp);
  if (is_half(a.scalar_type())) {
    // Half precision until the tensor-core kernel (issue 14): the operands (and c, in the output's
    // dtype) widened to float32 (exact), the float32 kernel, the result rounded once to nearest even.
    const std::optional<at::Tensor> c32 = c.has_value() && c->defined() ? std::optional<at::Tensor>(half_as_float(*c)) : c;
    return gemm_cuda(half_as_float(a), half_as_float(b), c32, trans_a, trans_b, alpha, beta, std::nullopt)
        .to(s.out_dtype);
  }
  const c10::cuda::CUDAGuard guard(a.device());
  at::Tensor out = at::empty({s.m, s.n}, a.options());
  const bool reads_c = gemm_reads_c(c, beta);
  if (reads_c) out.copy_(c->expand({s.m, s.n}));
  if (out.numel() == 0) return out;
  C10_CUDA_CHECK(gemm(to_dtype(a.scalar_type()), s.m, s.n, s.k, alpha, a.data_ptr(),
                      trans_a ? a.stride(1) : a.stride(0), trans_a ? a.stride(0) : a.stride(1), b.data_ptr(),
                      trans_b ? b.stride(1) : b.stride(0), trans_b ? b.stride(0) : b.stride(1),
                      reads_c ? beta : 0.0, out.data_ptr(), s.n, c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) { m.impl("gemm", &gemm_cuda); }

}  // namespace fastconv::cuda
