// CUDA convolution helpers on raw pointers: im2col of a batch of images, col2im as a gather (each
// input element sums the column entries that read it: deterministic, no atomics) and the bias
// gradient (a block per channel). The thread bodies are common/conv2d.h's im2col_source and
// col2im_gather, which the CPU emulation of the launch plan runs too; their index arithmetic is
// 32-bit when the launch's sizes allow.
#include "cuda/conv2d.h"

#include <algorithm>
#include <cstdint>

#include "cuda/launch.h"

namespace fastconv::cuda {
namespace {

constexpr int kThreads = 256;

int grid_for(int64_t n) { return grid_stride_blocks(n, kThreads); }

template <typename T, typename I>
__global__ void im2col_kernel(const T* __restrict__ x, I total, Conv2dGeometry g, I p0, I pc, T* __restrict__ cols) {
  for (I e = blockIdx.x * I(blockDim.x) + threadIdx.x; e < total; e += I(gridDim.x) * I(blockDim.x)) {
    const I src = im2col_source<I>(e, g, p0, pc);
    cols[e] = src >= 0 ? x[src] : T(0);
  }
}

// 16-bit elements (float16, bfloat16: the copy needs no arithmetic, and zero bits are +0 in both),
// each column row `pitch` long (common/conv2d_tensor_cores.h).
template <typename I>
__global__ void im2col_pitched_kernel(const uint16_t* __restrict__ x, I total, Conv2dGeometry g, I p0, I pc, I pitch,
                                      uint16_t* __restrict__ cols) {
  for (I e = blockIdx.x * I(blockDim.x) + threadIdx.x; e < total; e += I(gridDim.x) * I(blockDim.x)) {
    const I src = im2col_source<I>(e, g, p0, pc);
    cols[im2col_pitched<I>(e, pc, pitch)] = src >= 0 ? x[src] : uint16_t(0);
  }
}

template <typename T, typename I>
__global__ void col2im_kernel(const T* __restrict__ cols, I total, Conv2dGeometry g, I p0, I pc, T* __restrict__ dx) {
  for (I e = blockIdx.x * I(blockDim.x) + threadIdx.x; e < total; e += I(gridDim.x) * I(blockDim.x)) {
    dx[e] += col2im_gather<T, I>(cols, e, g, p0, pc);
  }
}

template <typename T>
__global__ void grad_bias_kernel(const T* __restrict__ dy, int64_t batch, int64_t channels, int64_t positions,
                                 T* __restrict__ db) {
  __shared__ T partial[kThreads];
  const int64_t k = blockIdx.x;
  T sum = 0;
  for (int64_t n = 0; n < batch; ++n) {
    const T* row = dy + (n * channels + k) * positions;
    for (int64_t p = threadIdx.x; p < positions; p += blockDim.x) sum += row[p];
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) db[k] = partial[0];
}

template <typename T>
cudaError_t im2col_typed(const void* x, int64_t images, const Conv2dGeometry& g, int64_t channels, int64_t p0,
                         int64_t pc, void* cols, cudaStream_t stream) {
  const int64_t total = images * channels * g.kh * g.kw * pc, plane = images * channels * g.in_h * g.in_w;
  if (total == 0) return cudaSuccess;   // no zero-block launch
  const int blocks = grid_for(total);
  const T* xp = static_cast<const T*>(x);
  T* cp = static_cast<T*>(cols);
  if (std::max(plane, total + int64_t(blocks) * kThreads) < INT32_MAX) {
    im2col_kernel<T, int32_t><<<blocks, kThreads, 0, stream>>>(xp, int32_t(total), g, int32_t(p0), int32_t(pc), cp);
  } else {
    im2col_kernel<T, int64_t><<<blocks, kThreads, 0, stream>>>(xp, total, g, p0, pc, cp);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t col2im_typed(const void* cols, int64_t images, const Conv2dGeometry& g, int64_t channels, int64_t p0,
                         int64_t pc, void* dx, cudaStream_t stream) {
  const int64_t total = images * channels * g.in_h * g.in_w, col_elems = images * channels * g.kh * g.kw * pc;
  if (total == 0) return cudaSuccess;   // no zero-block launch
  const int blocks = grid_for(total);
  const T* cp = static_cast<const T*>(cols);
  T* dp = static_cast<T*>(dx);
  if (std::max(col_elems + g.out_h * g.out_w, total + int64_t(blocks) * kThreads) < INT32_MAX) {
    col2im_kernel<T, int32_t><<<blocks, kThreads, 0, stream>>>(cp, int32_t(total), g, int32_t(p0), int32_t(pc), dp);
  } else {
    col2im_kernel<T, int64_t><<<blocks, kThreads, 0, stream>>>(cp, total, g, p0, pc, dp);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t conv2d_im2col(DType dtype, const void* x, int64_t images, int64_t channels, const Conv2dGeometry& g,
                          int64_t p0, int64_t pc, void* cols, cudaStream_t stream) {
  return dtype == DType::f64 ? im2col_typed<double>(x, images, g, channels, p0, pc, cols, stream)
                             : im2col_typed<float>(x, images, g, channels, p0, pc, cols, stream);
}

cudaError_t conv2d_im2col_half(const void* x, int64_t images, int64_t channels, const Conv2dGeometry& g, int64_t p0,
                               int64_t pc, int64_t pitch, void* cols, cudaStream_t stream) {
  const int64_t total = images * channels * g.kh * g.kw * pc, plane = images * channels * g.in_h * g.in_w;
  if (total == 0) return cudaSuccess;   // no zero-block launch
  const int blocks = grid_for(total);
  const auto* xp = static_cast<const uint16_t*>(x);
  auto* cp = static_cast<uint16_t*>(cols);
  const int64_t written = total / pc * pitch;
  if (std::max({plane, written, total + int64_t(blocks) * kThreads}) < INT32_MAX) {
    im2col_pitched_kernel<int32_t><<<blocks, kThreads, 0, stream>>>(xp, int32_t(total), g, int32_t(p0), int32_t(pc),
                                                                    int32_t(pitch), cp);
  } else {
    im2col_pitched_kernel<int64_t><<<blocks, kThreads, 0, stream>>>(xp, total, g, p0, pc, pitch, cp);
  }
  return cudaGetLastError();
}

cudaError_t conv2d_col2im_add(DType dtype, const void* cols, int64_t images, int64_t channels,
                              const Conv2dGeometry& g, int64_t p0, int64_t pc, void* dx, cudaStream_t stream) {
  return dtype == DType::f64 ? col2im_typed<double>(cols, images, g, channels, p0, pc, dx, stream)
                             : col2im_typed<float>(cols, images, g, channels, p0, pc, dx, stream);
}

cudaError_t conv2d_grad_bias(DType dtype, const void* dy, int64_t batch, int64_t channels, int64_t positions,
                             void* db, cudaStream_t stream) {
  if (channels == 0) return cudaSuccess;
  if (dtype == DType::f64) {
    grad_bias_kernel<double><<<static_cast<unsigned>(channels), kThreads, 0, stream>>>(
        static_cast<const double*>(dy), batch, channels, positions, static_cast<double*>(db));
  } else {
    grad_bias_kernel<float><<<static_cast<unsigned>(channels), kThreads, 0, stream>>>(
        static_cast<const float*>(dy), batch, channels, positions, static_cast<float*>(db));
  }
  return cudaGetLastError();
}

}  // namespace fastconv::cuda
