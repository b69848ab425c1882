// Launchers of the CUDA convolution kernels (torch-free): im2col, col2im (as a gather, no atomics),
// the per-channel bias gradient, and the direct algorithm (conv2d_direct.cu). The GEMMs between
// them are cuda/gemm.h's.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/conv2d.h"
#include "common/dtype.h"

namespace fastconv::cuda {

// cols[n][(c*kh + i)*kw + j][p - p0] for n < images, c < channels (all of the image's), p in
// [p0, p0 + pc); x points at the first image (common/conv2d.h's im2col_source).
cudaError_t conv2d_im2col(DType dtype, const void* x, int64_t images, int64_t channels, const Conv2dGeometry& g,
                          int64_t p0, int64_t pc, void* cols, cudaStream_t stream);

// The same for float16/bfloat16 images, each column row `pitch` >= pc elements long
// (common/conv2d_tensor_cores.h).
cudaError_t conv2d_im2col_half(const void* x, int64_t images, int64_t channels, const Conv2dGeometry& g, int64_t p0,
                               int64_t pc, int64_t pitch, void* cols, cudaStream_t stream);

// dx[n][c][ih][iw] += the sum of the column entries that read it (one thread per input element, so no
// two threads write one element).
cudaError_t conv2d_col2im_add(DType dtype, const void* cols, int64_t images, int64_t channels,
                              const Conv2dGeometry& g, int64_t p0, int64_t pc, void* dx, cudaStream_t stream);

// db[k] = sum over n, p of dy[n][k][p].
cudaError_t conv2d_grad_bias(DType dtype, const void* dy, int64_t batch, int64_t channels, int64_t positions,
                             void* db, cudaStream_t stream);

}  // namespace fastconv::cuda

namespace fastconv::cuda {

// The whole convolution's sizes, for the direct kernels (contiguous NCHW operands).
struct Conv2dDims {
  int64_t batch, in_channels, out_channels, groups;
};

// algorithm="direct": out = conv(x, w) + bias (bias may be null). Each thread block computes an
// 8x16 tile of output pixels for 8 output channels, with the input patch under the tile and the
// weights staged in shared memory a chunk of input channels at a time; geometries whose patch does
// not fit (huge dilation) read global memory directly.
cudaError_t conv2d_direct_forward(DType dtype, const void* x, const void* w, const void* bias, void* out,
                                  const Conv2dDims& dims, const Conv2dGeometry& g, cudaStream_t stream);

// algorithm="direct", grad_input as the transposed convolution in gather form: one thread per input
// element sums w * dy over the output pixels that read it (no atomics, no buffers).
cudaError_t conv2d_direct_grad_input(DType dtype, const void* dy, const void* w, void* dx, const Conv2dDims& dims,
                                     const Conv2dGeometry& g, cudaStream_t stream);

}  // namespace fastconv::cuda
