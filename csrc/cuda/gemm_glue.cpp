// CUDA glue for fastconv::gemm: checks (shared with the CPU), the output prefilled with beta's c, then
// on the current stream the tiled kernel of gemm.cu (float32, float64) or the tensor-core kernel of
// gemm_mma.cu (float16, bfloat16 on compute capability 8.0 and later; below it half precision runs in
// float32 inside).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/gemm_args.h"
#include "common/mma_gemm_args.h"
#include "cuda/gemm.h"

namespace fastconv::cuda {
namespace {

constexpr const char* kOp = "gemm";

at::Tensor gemm_cuda(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& c, bool trans_a,
                     bool trans_b, double alpha, double beta, std::optional<at::ScalarType> out_dtype) {
  const GemmShape s = check_gemm(a, b, c, trans_a, trans_b, out_dtype, kOp);
  const c10::cuda::CUDAGuard guard(a.device());
  if (is_half(a.scalar_type()) && at::cuda::getCurrentDeviceProperties()->major >= 8) {
    at::Tensor out = gemm_output(a, c, beta, s);
    const bool reads_c = gemm_reads_c(c, beta);
    if (out.numel() == 0) return out;
    at::Tensor keep_a, keep_b;   // operand copies where the layout needs one (common/mma_gemm_args.h)
    const MmaGemmParams p = mma_gemm_params(a, b, trans_a, trans_b, s, alpha, reads_c ? beta : 0.0, out, &keep_a, &keep_b);
    C10_CUDA_CHECK(gemm_mma(to_dtype(a.scalar_type()), to_dtype(s.out_dtype), p,
                            c10::cuda::getCurrentCUDAStream().stream()));
    return out;
  }
  if (is_half(a.scalar_type())) {
    // Half precision below compute capability 8.0 (no bf16 mma.sync): the operands (and c, in the
    // output's dtype) widened to float32 (exact), the float32 kernel, the result rounded once.
    const std::optional<at::Tensor> c32 = c.has_value() && c->defined() ? std::optional<at::Tensor>(half_as_float(*c)) : c;
    return gemm_cuda(half_as_float(a), half_as_float(b), c32, trans_a, trans_b, alpha, beta, std::nullopt)
        .to(s.out_dtype);
  }
  at::Tensor out = gemm_output(a, c, beta, s);
  const bool reads_c = gemm_reads_c(c, beta);
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
