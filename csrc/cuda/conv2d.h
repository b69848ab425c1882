// Launchers of the CUDA convolution helpers (torch-free): im2col, col2im (as a gather, no atomics)
// and the per-channel bias gradient. The GEMMs between them are cuda/gemm.h's.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/conv2d.h"
#include "common/dtype.h"

namespace fastconv::cuda {

// cols[(c*kh + i)*kw + j][p - p0] for c < cg, p in [p0, p1); x points at the group's first plane.
cudaError_t conv2d_im2col(DType dtype, const void* x, int64_t cg, const Conv2dGeometry& g, int64_t p0, int64_t p1,
                          void* cols, cudaStream_t stream);

// dx[c][ih][iw] += sum of the column entries of positions in [p0, p1) that read it (one thread per
// input element, so no two threads write one element).
cudaError_t conv2d_col2im_add(DType dtype, const void* cols, int64_t cg, const Conv2dGeometry& g, int64_t p0,
                              int64_t p1, void* dx, cudaStream_t stream);

// db[k] = sum over n, p of dy[n][k][p].
cudaError_t conv2d_grad_bias(DType dtype, const void* dy, int64_t batch, int64_t channels, int64_t positions,
                             void* db, cudaStream_t stream);

}  // namespace fastconv::cuda
