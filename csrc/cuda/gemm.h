// Launchers of the CUDA GEMM kernel (torch-free): C = alpha * op(A) * op(B) + beta * C on strided
// operands, as the CPU engine (cpu/gemm_kernels.h): element (i, k) of op(A) is a[i*rs_a + k*cs_a].
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype.h"
#include "common/gemm_batch.h"
#include "common/mma_gemm.h"

namespace fastconv::cuda {

// beta == 0: C is not read; alpha == 0: A and B are not read. dtype: f32 or f64. An empty output
// launches nothing.
cudaError_t gemm(DType dtype, int64_t m, int64_t n, int64_t k, double alpha, const void* a, int64_t rs_a,
                 int64_t cs_a, const void* b, int64_t rs_b, int64_t cs_b, double beta, void* c, int64_t rs_c,
                 cudaStream_t stream);

// The same over a strided batch with a summed reduction batch (common/gemm_batch.h), in one launch:
// a, b and c point at the operands of GEMM z = 0, r = 0.
cudaError_t gemm_batched(DType dtype, int64_t m, int64_t n, int64_t k, double alpha, const void* a, int64_t rs_a,
                         int64_t cs_a, const void* b, int64_t rs_b, int64_t cs_b, double beta, void* c, int64_t rs_c,
                         GemmBatch batch, cudaStream_t stream);

// The tensor-core GEMM (gemm_mma.cu, compute capability 8.0 and later): in f16 or bf16 operands as
// common/mma_gemm.h describes them, out f32, f16 or bf16 (p.c, prefilled with C where p.beta != 0).
cudaError_t gemm_mma(DType in, DType out, const MmaGemmParams& p, cudaStream_t stream);
// The same over a strided batch (common/gemm_batch.h, no reduction batch; mma_batch_entry): every
// batch offset must keep the operands' 16-byte alignment.
cudaError_t gemm_mma_batched(DType in, DType out, const MmaGemmParams& p, const GemmBatch& batch,
                             cudaStream_t stream);

// The Hopper tensor-core GEMM (gemm_wgmma.cu: TMA and wgmma), the same contract with both operands
// K-contiguous and k >= 1. Available on a compute capability 9.0 device when the build has an sm_90a
// image (FASTCONV_CUDA_ARCHS with "9.0a") and the driver has the tensor-map encoder; asked once per device.
bool gemm_wgmma_available(int device);
cudaError_t gemm_wgmma(DType in, DType out, const MmaGemmParams& p, cudaStream_t stream);

}  // namespace fastconv::cuda
