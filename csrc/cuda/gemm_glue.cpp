// CUDA glue for fastconv::gemm: checks (shared with the CPU), the output prefilled with beta's c, then
// on the current stream the tiled kernel of gemm.cu (float32, float64) or a tensor-core kernel for
// float16 and bfloat16: gemm_wgmma.cu (TMA + wgmma) on compute capability 9.0 when the build has its
// sm_90a image, else gemm_mma.cu (mma.sync) from 8.0; below 8.0 half precision runs in float32 inside.
//
//   torch.ops.fastconv_testing.cuda_gemm_path(a, b, trans_a, trans_b, path, out_dtype) runs one
// tensor-core kernel by name ("mma_sync" or "wgmma"), for tests and benchmarks; it refuses a kernel
// the device or the build lacks.
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

enum class TensorCorePath { mma_sync, wgmma };

// C = alpha op(A) op(B) + beta C on a tensor-core kernel (half operands, compute capability >= 8.0).
at::Tensor gemm_tensor_cores(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& c,
                             bool trans_a, bool trans_b, double alpha, double beta, const GemmShape& s,
                             TensorCorePath path) {
  at::Tensor out = gemm_output(a, c, beta, s);
  const bool reads_c = gemm_reads_c(c, beta);
  if (out.numel() == 0) return out;
  // with alpha == 0 or k == 0 no product is formed: the mma.sync kernel's epilogue alone (a TMA
  // tensor map cannot describe an empty K)
  const bool wgmma = path == TensorCorePath::wgmma && alpha != 0.0 && s.k > 0;
  at::Tensor keep_a, keep_b;   // operand copies where the layout needs one (common/mma_gemm_args.h)
  const MmaGemmParams p =
      mma_gemm_params(a, b, trans_a, trans_b, s, alpha, reads_c ? beta : 0.0, out, &keep_a, &keep_b, wgmma);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const DType in = to_dtype(a.scalar_type()), out_t = to_dtype(s.out_dtype);
  C10_CUDA_CHECK(wgmma ? gemm_wgmma(in, out_t, p, stream) : gemm_mma(in, out_t, p, stream));
  return out;
}

at::Tensor gemm_cuda(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& c, bool trans_a,
                     bool trans_b, double alpha, double beta, std::optional<at::ScalarType> out_dtype) {
  const GemmShape s = check_gemm(a, b, c, trans_a, trans_b, out_dtype, kOp);
  const c10::cuda::CUDAGuard guard(a.device());
  if (is_half(a.scalar_type()) && at::cuda::getCurrentDeviceProperties()->major >= 8) {
    const TensorCorePath path =
        gemm_wgmma_available(a.get_device()) ? TensorCorePath::wgmma : TensorCorePath::mma_sync;
    return gemm_tensor_cores(a, b, c, trans_a, trans_b, alpha, beta, s, path);
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

at::Tensor cuda_gemm_path(const at::Tensor& a, const at::Tensor& b, bool trans_a, bool trans_b,
                          c10::string_view path, std::optional<at::ScalarType> out_dtype) {
  constexpr const char* op = "cuda_gemm_path";
  const GemmShape s = check_gemm(a, b, std::nullopt, trans_a, trans_b, out_dtype, op);
  const c10::cuda::CUDAGuard guard(a.device());
  TORCH_CHECK(is_half(a.scalar_type()), "fastconv_testing::", op,
              ": expected float16 or bfloat16 operands, got ", a.scalar_type());
  TORCH_CHECK(at::cuda::getCurrentDeviceProperties()->major >= 8, "fastconv_testing::", op,
              ": the tensor-core kernels need compute capability 8.0 or later");
  if (path == "mma_sync") {
    return gemm_tensor_cores(a, b, std::nullopt, trans_a, trans_b, 1.0, 0.0, s, TensorCorePath::mma_sync);
  }
  TORCH_CHECK(path == "wgmma", "fastconv_testing::", op, ": expected path \"mma_sync\" or \"wgmma\", got \"",
              path, "\"");
  TORCH_CHECK(gemm_wgmma_available(a.get_device()), "fastconv_testing::", op,
              ": the wgmma kernel needs compute capability 9.0 and a build with an sm_90a image "
              "(FASTCONV_CUDA_ARCHS including 9.0a)");
  return gemm_tensor_cores(a, b, std::nullopt, trans_a, trans_b, 1.0, 0.0, s, TensorCorePath::wgmma);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) { m.impl("gemm", &gemm_cuda); }

TORCH_LIBRARY_FRAGMENT(fastconv_testing, m) {
  m.def("cuda_gemm_path(Tensor a, Tensor b, bool trans_a, bool trans_b, str path, ScalarType? out_dtype=None) "
        "-> Tensor");
}

TORCH_LIBRARY_IMPL(fastconv_testing, CUDA, m) { m.impl("cuda_gemm_path", &cuda_gemm_path); }

}  // namespace fastconv::cuda
