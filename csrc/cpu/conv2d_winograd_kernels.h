// The Winograd convolution's transforms on the CPU (torch-free), compiled per ISA from
// conv2d_winograd.inc: each works on a list of tiles, one tile per SIMD lane (tiles from any row or
// image, so small images fill the lanes too), with the straight-line transforms of
// common/winograd.h. Index [0] is F(2x2, 3x3), [1] is F(4x4, 3x3).
//
// Layouts (alpha = m + 2, E = alpha^2 transform positions e):
//   V[e][c][t]   transformed input tiles: e_stride apart per e, tiles t contiguous
//   M[e][k][t]   the GEMMs' products, likewise
//   U[e]         transformed filters (k x c), each in the GEMM engine's packed-A form
//   dM[e][k][t]  the weight gradient's transformed grad_output tiles; dU[e][k][c] their products with V
// Channels-last passes hold a tile's channels contiguously instead: V[e][t][c], M[e][t][k], dM[e][t][k],
// and their transformed filters are U[e]^T (c x k) in the GEMM engine's packed-B form.
#pragma once

#include <cstdint>

namespace fastconv::cpu {

// Where the tiles of a chunk sit: tile t's top-left input pixel (ih0, iw0) in image `image` (an
// offset in elements from image 0's plane of the same channel). Output tiles start at (ih0 + ph,
// iw0 + pw), i.e. at (th * m, tw * m).
struct WinogradTile {
  int64_t image;
  int64_t ih0, iw0;
};

// A tile of a channels-last pass: image n, top-left input pixel (ih0, iw0); its output tile starts at
// (ih0 + ph, iw0 + pw).
struct WinogradTileNhwc {
  int64_t n;
  int64_t ih0, iw0;
};

template <typename T>
struct WinogradKernels {
  // V[e][t] = B^T d B for `rows` rows of `tiles` tiles of one input channel: x_c is that channel's
  // H x W plane in image 0, row r lies in image row_image[r] (planes image_stride apart) with its
  // tiles' top-left pixels at (row_ih0[r], iw0 + t * m), and its tiles go to v + r * tiles. Pixels
  // outside the plane read zero.
  void (*input[2])(const T* x_c, int64_t image_stride, int64_t H, int64_t W, const int64_t* row_image,
                   const int64_t* row_ih0, int64_t rows, int64_t iw0, int64_t tiles, T* v, int64_t e_stride);
  // out[oh][ow] = (A^T M A)[i][j] + bias for tiles t < count of one output channel (plane: that
  // channel of image 0, OH x OW), each tile's m x m block clipped to the plane.
  void (*output[2])(const T* mt, int64_t e_stride, const WinogradTile* tiles, int64_t count, int64_t ph, int64_t pw,
                    T* plane, int64_t OH, int64_t OW, T bias);
  // One micro-panel of U[e] in the GEMM engine's packed-A form (gemm_pack_a): u[e * e_stride + c * mr + r]
  // = (G g G^T)[e] for the filter of panel row r < mr and column c < kc, where g[i][j] = w[r * s_out +
  // c * s_in + i * s_i + j * s_j] for r < rows, zero for the padding rows r >= rows (strides let the
  // backward pass read the flipped, transposed filters in place; mr <= 16). Lanes run along the
  // packed order, so every store is a whole vector, and each lane's 9 values are gathered (the
  // ISA's gather instructions). Returns false if a filter value read is a NaN or an infinity.
  bool (*filter[2])(const T* w, int64_t s_out, int64_t s_in, int64_t s_i, int64_t s_j, int64_t rows, int64_t mr,
                    int64_t kc, T* u, int64_t e_stride);
  // The weight gradient's transforms. dm[e * e_stride + t] = (A dY A^T)[e] for tiles t < count of one
  // output channel's grad_output (plane and tiles as for output; values outside the plane read zero).
  void (*output_adjoint[2])(const T* plane, int64_t OH, int64_t OW, const WinogradTile* tiles, int64_t count,
                            int64_t ph, int64_t pw, T* dm, int64_t e_stride);
  // dw[c * s_c + i * s_i + j * s_j] = (G^T dU G)[i][j] for c < cin of one output channel (strides: the
  // gradient written in the weight's layout), dU[e] of channel c at du[e * e_stride + c].
  void (*filter_adjoint[2])(const T* du, int64_t e_stride, int64_t cin, T* dw, int64_t s_c, int64_t s_i,
                            int64_t s_j);
  // Channels-last (NHWC) tensors, lanes along the channels (conv2d_winograd.inc):
  // V[e][t][c] (v[e * e_stride + t * C + c]) for tiles t in [t0, t1) of the H x W x C input x;
  void (*input_nhwc[2])(const T* x, int64_t H, int64_t W, int64_t C, const WinogradTileNhwc* tiles, int64_t t0,
                        int64_t t1, T* v, int64_t e_stride);
  // y = A^T M A + bias from M[e][t][k] (mt[e * e_stride + t * t_stride + k]) for a block of kn output
  // channels into the OH x OW x K output (y, bias: the block's first channel), clipped (bias may be null);
  void (*output_nhwc[2])(const T* mt, int64_t e_stride, int64_t t_stride, const WinogradTileNhwc* tiles, int64_t t0,
                         int64_t t1, int64_t K, int64_t kn, int64_t ph, int64_t pw, T* y, int64_t OH, int64_t OW,
                         const T* bias);
  // dM[e][t][k] = A dY A^T of the OH x OW x K grad_output (zero outside it).
  void (*output_adjoint_nhwc[2])(const T* dy, int64_t OH, int64_t OW, int64_t K, const WinogradTileNhwc* tiles,
                                 int64_t t0, int64_t t1, int64_t ph, int64_t pw, T* dm, int64_t e_stride);
};

extern const WinogradKernels<float> winograd_kernels_f32_avx512, winograd_kernels_f32_avx2;
extern const WinogradKernels<float> winograd_kernels_f32_avx512_emulated;   // isa.h: avx512_emulated
extern const WinogradKernels<double> winograd_kernels_f64_avx512, winograd_kernels_f64_avx2;
extern const WinogradKernels<double> winograd_kernels_f64_avx512_emulated;   // isa.h: avx512_emulated

}  // namespace fastconv::cpu
