// Launchers of the CUDA batch-norm kernels (torch-free; shared by the glue and batch_norm.cu).
//
// Layouts as on the CPU (cpu/batch_norm_kernels.h): planar x[(n*C + c)*S + s] or interleaved
// x[m*C + c]. Per-channel arrays are of the statistics type P: float for float/float16/bfloat16
// data, double for double; weight and bias arrive in P (the glue converts them, O(C)).
// The activation's parameters arrive in double and are narrowed to P (the glue computes them for the
// output's dtype, so a float value is held exactly). Every launcher returns cudaGetLastError() of its
// launches.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/batch_norm.h"
#include "common/dtype.h"

namespace fastconv::cuda {

struct BnCudaShape {
  int64_t N, C, S;
  bool interleaved;
};

// Blocks per channel used by the reductions; the workspace holds 2 * C * blocks doubles.
int64_t batch_norm_reduce_blocks(const BnCudaShape& sh);

// Training statistics: save_mean, save_invstd, batch_var (biased) and the scale/shift of the
// normalisation, from shifted sums reduced across blocks.
cudaError_t batch_norm_stats(DType dtype, const void* x, const BnCudaShape& sh, double eps, const void* weight,
                             const void* bias, double* workspace, void* save_mean, void* save_invstd, void* batch_var,
                             void* scale, void* shift, cudaStream_t stream);

// Inference (and backward) preparation: save_mean = mean, save_invstd = invstd (if running_var is
// given, invstd = 1/sqrt(running_var + eps) is written first), and scale/shift from them.
cudaError_t batch_norm_prepare(DType dtype, int64_t C, const void* mean, const void* running_var,
                               double eps, const void* weight, const void* bias, void* save_mean, void* save_invstd,
                               void* scale, void* shift, cudaStream_t stream);

cudaError_t batch_norm_normalize(DType dtype, const void* x, void* y, const BnCudaShape& sh, const void* scale,
                                 const void* shift, const BnActParams<double>& act, cudaStream_t stream);

// Backward: sums over the gradient masked by the activation's (common/batch_norm.h), then
// grad_weight/grad_bias (if not null) and the grad_input coefficients, then grad_input.
cudaError_t batch_norm_backward(DType dtype, const void* dy, const void* x, void* dx, const BnCudaShape& sh,
                                const void* save_mean, const void* save_invstd, const void* weight,
                                const void* scale, const void* shift, bool training,
                                const BnActParams<double>& act, bool need_sums, double* workspace, void* coeffs,
                                void* grad_weight, void* grad_bias, cudaStream_t stream);

}  // namespace fastconv::cuda
