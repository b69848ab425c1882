// CUDA convolution helpers on raw pointers: im2col, col2im as a gather (each input element sums the
// column entries that read it: deterministic, no atomics) and the bias gradient (a block per channel).
#include "cuda/conv2d.h"
#include "cuda/launch.h"

namespace fastconv::cuda {
namespace {

constexpr int kThreads = 256;

int grid_for(int64_t n) { return grid_stride_blocks(n, kThreads); }

template <typename T>
__global__ void im2col_kernel(const T* __restrict__ x, int64_t cg, Conv2dGeometry g, int64_t p0, int64_t p1,
                              T* __restrict__ cols) {
  const int64_t pc = p1 - p0, total = cg * g.kh * g.kw * pc;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = p0 + e % pc, r = e / pc;   // consecutive threads: consecutive positions
    const int64_t j = r % g.kw, i = (r / g.kw) % g.kh, c = r / (g.kw * g.kh);
    const int64_t ih = conv_tap(p / g.out_w, i, g.sh, g.ph, g.dh);
    const int64_t iw = conv_tap(p % g.out_w, j, g.sw, g.pw, g.dw);
    cols[e] = (ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w) ? x[(c * g.in_h + ih) * g.in_w + iw] : T(0);
  }
}

template <typename T>
__global__ void col2im_kernel(const T* __restrict__ cols, int64_t cg, Conv2dGeometry g, int64_t p0, int64_t p1,
                              T* __restrict__ dx) {
  const int64_t pc = p1 - p0, total = cg * g.in_h * g.in_w;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t iw = e % g.in_w, ih = (e / g.in_w) % g.in_h, c = e / (g.in_w * g.in_h);
    T sum = 0;
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t oh = conv_reader(ih, i, g.sh, g.ph, g.dh, g.out_h);
      if (oh < 0) continue;
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t ow = conv_reader(iw, j, g.sw, g.pw, g.dw, g.out_w);
        if (ow < 0) continue;
        const int64_t p = oh * g.out_w + ow;
        if (p >= p0 && p < p1) sum += cols[((c * g.kh + i) * g.kw + j) * pc + (p - p0)];
      }
    }
    dx[e] += sum;
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

}  // namespace

cudaError_t conv2d_im2col(DType dtype, const void* x, int64_t cg, const Conv2dGeometry& g, int64_t p0, int64_t p1,
                          void* cols, cudaStream_t stream) {
  const int blocks = grid_for(cg * g.kh * g.kw * (p1 - p0));
  if (dtype == DType::f64) {
    im2col_kernel<double><<<blocks, kThreads, 0, stream>>>(static_cast<const double*>(x), cg, g, p0, p1,
                                                            static_cast<double*>(cols));
  } else {
    im2col_kernel<float><<<blocks, kThreads, 0, stream>>>(static_cast<const float*>(x), cg, g, p0, p1,
                                                           static_cast<float*>(cols));
  }
  return cudaGetLastError();
}

cudaError_t conv2d_col2im_add(DType dtype, const void* cols, int64_t cg, const Conv2dGeometry& g, int64_t p0,
                              int64_t p1, void* dx, cudaStream_t stream) {
  const int blocks = grid_for(cg * g.in_h * g.in_w);
  if (dtype == DType::f64) {
    col2im_kernel<double><<<blocks, kThreads, 0, stream>>>(static_cast<const double*>(cols), cg, g, p0, p1,
                                                            static_cast<double*>(dx));
  } else {
    col2im_kernel<float><<<blocks, kThreads, 0, stream>>>(static_cast<const float*>(cols), cg, g, p0, p1,
                                                           static_cast<float*>(dx));
  }
  return cudaGetLastError();
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
