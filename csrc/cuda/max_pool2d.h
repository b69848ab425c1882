// Launchers of the CUDA max-pool kernels (torch-free, so the glue and the .cu share it).
// Each returns the launch status (cudaGetLastError()) for the glue to check.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype.h"
#include "common/pool2d.h"

namespace fastconv::cuda {

cudaError_t max_pool2d_forward(DType dtype, const void* input, void* output, int64_t* indices, int64_t batch,
                               int64_t channels, const Pool2dGeometry& g, bool channels_last, cudaStream_t stream);

// grad_input is written in full (no need to zero it first).
cudaError_t max_pool2d_backward(DType dtype, const void* grad_output, const int64_t* indices, void* grad_input,
                                int64_t batch, int64_t channels, const Pool2dGeometry& g, bool channels_last,
                                cudaStream_t stream);

}  // namespace fastconv::cuda
