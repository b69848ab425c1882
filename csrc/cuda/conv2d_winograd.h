// Launchers of the CUDA Winograd transforms (torch-free); the alpha^2 GEMMs between them are
// cuda/gemm.h's. Same layouts as the CPU (cpu/conv2d_winograd_kernels.h): U[e][k][c], V[e][c][t],
// M[e][k][t], tiles t numbered row-major over (image, tile row, tile column) from tile row r0.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype.h"

namespace fastconv::cuda {

// out[n][k][oh][ow] = sum over c, i, j < 3 of in[n][c][oh + i - ph][ow + j - pw] * g[k][c][i][j].
struct WinogradDims {
  int64_t batch, in_ch, out_ch, in_h, in_w, out_h, out_w, ph, pw;
};

// U[e][k][c] = G g G^T, g[i][j] = w[k * s_out + c * s_in + i * s_i + j * s_j], k < kout, c < cin.
cudaError_t winograd_filter_transform(DType dtype, int m, const void* w, int64_t s_out, int64_t s_in, int64_t s_i,
                                      int64_t s_j, int64_t kout, int64_t cin, void* u, cudaStream_t stream);

// V[e][c][t] = B^T d B for the tiles of tile rows [r0, r0 + nrows).
cudaError_t winograd_input_transform(DType dtype, int m, const void* x, const WinogradDims& d, int64_t r0,
                                     int64_t nrows, void* v, cudaStream_t stream);

// out = A^T M A + bias (bias may be null) for the tiles of tile rows [r0, r0 + nrows), clipped.
cudaError_t winograd_output_transform(DType dtype, int m, const void* mt, const void* bias, const WinogradDims& d,
                                      int64_t r0, int64_t nrows, void* out, cudaStream_t stream);

}  // namespace fastconv::cuda
