// The Winograd transforms on CUDA: one thread per (filter), (channel, tile) or (output channel,
// tile), each running common/winograd.h's straight-line transforms in registers (fp32 for float
// tensors). Consecutive threads take consecutive tiles, so V and M are written and read coalesced.
#include "cuda/conv2d_winograd.h"

#include "common/winograd.h"
#include "cuda/launch.h"

namespace fastconv::cuda {
namespace {

constexpr int kThreads = 256;

int grid_for(int64_t n) { return grid_stride_blocks(n, kThreads); }

template <typename T, int M>
__global__ void filter_kernel(const T* __restrict__ w, int64_t s_out, int64_t s_in, int64_t s_i, int64_t s_j,
                              int64_t kout, int64_t cin, T* __restrict__ u) {
  constexpr int A = M + 2;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < kout * cin; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = e / cin, c = e % cin;
    T g[9], out[A * A];
    for (int i = 0; i < 3; ++i) {
      for (int j = 0; j < 3; ++j) g[i * 3 + j] = w[k * s_out + c * s_in + i * s_i + j * s_j];
    }
    winograd_filter_2d<M, T>(g, out);
    for (int q = 0; q < A * A; ++q) u[(q * kout + k) * cin + c] = out[q];
  }
}

template <typename T, int M>
__global__ void input_kernel(const T* __restrict__ x, WinogradDims d, int64_t r0, int64_t nrows, T* __restrict__ v) {
  constexpr int A = M + 2;
  const int64_t tiles_h = (d.out_h + M - 1) / M, tiles_w = (d.out_w + M - 1) / M, tc = nrows * tiles_w;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < d.in_ch * tc; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = e / tc, t = e % tc, row = r0 + t / tiles_w, tw = t % tiles_w;
    const int64_t n = row / tiles_h, th = row % tiles_h;
    const int64_t ih0 = th * M - d.ph, iw0 = tw * M - d.pw;
    const T* plane = x + (n * d.in_ch + c) * d.in_h * d.in_w;
    T tile[A * A], out[A * A];
    for (int i = 0; i < A; ++i) {
      const int64_t ih = ih0 + i;
      for (int j = 0; j < A; ++j) {
        const int64_t iw = iw0 + j;
        tile[i * A + j] = ih >= 0 && ih < d.in_h && iw >= 0 && iw < d.in_w ? plane[ih * d.in_w + iw] : T(0);
      }
    }
    winograd_input_2d<M, T>(tile, out);
    for (int q = 0; q < A * A; ++q) v[(q * d.in_ch + c) * tc + t] = out[q];
  }
}

template <typename T, int M>
__global__ void output_kernel(const T* __restrict__ mt, const T* __restrict__ bias, WinogradDims d, int64_t r0,
                              int64_t nrows, T* __restrict__ out) {
  constexpr int A = M + 2;
  const int64_t tiles_h = (d.out_h + M - 1) / M, tiles_w = (d.out_w + M - 1) / M, tc = nrows * tiles_w;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < d.out_ch * tc; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = e / tc, t = e % tc, row = r0 + t / tiles_w, tw = t % tiles_w;
    const int64_t n = row / tiles_h, th = row % tiles_h;
    T mv[A * A], y[M * M];
    for (int q = 0; q < A * A; ++q) mv[q] = mt[(q * d.out_ch + k) * tc + t];
    winograd_output_2d<M, T>(mv, y);
    const T add = bias != nullptr ? bias[k] : T(0);
    T* plane = out + (n * d.out_ch + k) * d.out_h * d.out_w;
    for (int i = 0; i < M && th * M + i < d.out_h; ++i) {
      for (int j = 0; j < M && tw * M + j < d.out_w; ++j) plane[(th * M + i) * d.out_w + tw * M + j] = y[i * M + j] + add;
    }
  }
}

template <typename T>
cudaError_t filter_typed(int m, const void* w, int64_t s_out, int64_t s_in, int64_t s_i, int64_t s_j, int64_t kout,
                         int64_t cin, void* u, cudaStream_t stream) {
  const int blocks = grid_for(kout * cin);
  const T* wp = static_cast<const T*>(w);
  T* up = static_cast<T*>(u);
  if (m == 4) {
    filter_kernel<T, 4><<<blocks, kThreads, 0, stream>>>(wp, s_out, s_in, s_i, s_j, kout, cin, up);
  } else {
    filter_kernel<T, 2><<<blocks, kThreads, 0, stream>>>(wp, s_out, s_in, s_i, s_j, kout, cin, up);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t input_typed(int m, const void* x, const WinogradDims& d, int64_t r0, int64_t nrows, void* v,
                        cudaStream_t stream) {
  const int64_t tiles_w = (d.out_w + m - 1) / m;
  const int blocks = grid_for(d.in_ch * nrows * tiles_w);
  if (m == 4) {
    input_kernel<T, 4><<<blocks, kThreads, 0, stream>>>(static_cast<const T*>(x), d, r0, nrows, static_cast<T*>(v));
  } else {
    input_kernel<T, 2><<<blocks, kThreads, 0, stream>>>(static_cast<const T*>(x), d, r0, nrows, static_cast<T*>(v));
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t output_typed(int m, const void* mt, const void* bias, const WinogradDims& d, int64_t r0, int64_t nrows,
                         void* out, cudaStream_t stream) {
  const int64_t tiles_w = (d.out_w + m - 1) / m;
  const int blocks = grid_for(d.out_ch * nrows * tiles_w);
  const T* mp = static_cast<const T*>(mt);
  const T* bp = static_cast<const T*>(bias);
  if (m == 4) {
    output_kernel<T, 4><<<blocks, kThreads, 0, stream>>>(mp, bp, d, r0, nrows, static_cast<T*>(out));
  } else {
    output_kernel<T, 2><<<blocks, kThreads, 0, stream>>>(mp, bp, d, r0, nrows, static_cast<T*>(out));
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t winograd_filter_transform(DType dtype, int m, const void* w, int64_t s_out, int64_t s_in, int64_t s_i,
                                      int64_t s_j, int64_t kout, int64_t cin, void* u, cudaStream_t stream) {
  if (kout * cin == 0) return cudaSuccess;
  return dtype == DType::f64 ? filter_typed<double>(m, w, s_out, s_in, s_i, s_j, kout, cin, u, stream)
                             : filter_typed<float>(m, w, s_out, s_in, s_i, s_j, kout, cin, u, stream);
}

cudaError_t winograd_input_transform(DType dtype, int m, const void* x, const WinogradDims& d, int64_t r0,
                                     int64_t nrows, void* v, cudaStream_t stream) {
  if (d.in_ch * nrows == 0) return cudaSuccess;
  return dtype == DType::f64 ? input_typed<double>(m, x, d, r0, nrows, v, stream)
                             : input_typed<float>(m, x, d, r0, nrows, v, stream);
}

cudaError_t winograd_output_transform(DType dtype, int m, const void* mt, const void* bias, const WinogradDims& d,
                                      int64_t r0, int64_t nrows, void* out, cudaStream_t stream) {
  if (d.out_ch * nrows == 0) return cudaSuccess;
  return dtype == DType::f64 ? output_typed<double>(m, mt, bias, d, r0, nrows, out, stream)
                             : output_typed<float>(m, mt, bias, d, r0, nrows, out, stream);
}

}  // namespace fastconv::cuda
