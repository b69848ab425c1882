// The direct convolution on CUDA (algorithm="direct"), on raw pointers: see cuda/conv2d.h.
//
// Forward: block = kTH x kTW output pixels (one per thread) x kKB output channels (per thread, in
// registers). Per chunk of input channels the block stages the input patch its pixels read,
// ((kTH-1)*sh + (kh-1)*dh + 1) x ((kTW-1)*sw + (kw-1)*dw + 1) per channel with the padding as zeros,
// and the chunk's weights for its kKB channels; every thread then reads its taps from shared
// memory (neighbouring threads, neighbouring addresses) and the weights as broadcasts.
#include <cuda_runtime.h>

#include "cuda/conv2d.h"
#include "cuda/launch.h"

namespace fastconv::cuda {
namespace {

constexpr int kTH = 8, kTW = 16, kKB = 8;
constexpr int kThreads = kTH * kTW;
constexpr size_t kSharedBytes = 48 * 1024;   // the default dynamic shared-memory limit
constexpr int kMaxGridZ = 65535;

struct DirectLaunch {
  Conv2dDims d;
  Conv2dGeometry g;
  int64_t cg, kg, cb, patch_h, patch_w, tiles_w;
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
    direct_forward_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                          T* __restrict__ out, DirectLaunch a) {
  extern __shared__ __align__(16) unsigned char smem[];
  T* patch = reinterpret_cast<T*>(smem);
  T* wsh = patch + a.cb * a.patch_h * a.patch_w;
  const Conv2dGeometry& g = a.g;
  const int64_t taps = g.kh * g.kw, patch_elems = a.patch_h * a.patch_w;
  const int64_t oh0 = blockIdx.x / a.tiles_w * kTH, ow0 = blockIdx.x % a.tiles_w * kTW;
  const int ty = threadIdx.x / kTW, tx = threadIdx.x % kTW;
  const int64_t oh = oh0 + ty, ow = ow0 + tx;
  const bool live = oh < g.out_h && ow < g.out_w;
  const int64_t k0 = int64_t(blockIdx.y) * kKB;
  const int64_t ih0 = oh0 * g.sh - g.ph, iw0 = ow0 * g.sw - g.pw;
  for (int64_t z = blockIdx.z; z < a.d.batch * a.d.groups; z += gridDim.z) {
    const int64_t n = z / a.d.groups, grp = z % a.d.groups;
    const T* xg = x + (n * a.d.in_channels + grp * a.cg) * g.in_h * g.in_w;
    T acc[kKB];
    for (int kk = 0; kk < kKB; ++kk) acc[kk] = T(0);
    for (int64_t c0 = 0; c0 < a.cg; c0 += a.cb) {
      const int64_t nc = a.cg - c0 < a.cb ? a.cg - c0 : a.cb;
      for (int64_t e = threadIdx.x; e < nc * patch_elems; e += blockDim.x) {
        const int64_t c = e / patch_elems, r = e % patch_elems;
        const int64_t ih = ih0 + r / a.patch_w, iw = iw0 + r % a.patch_w;
        const bool in = ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w;
        patch[e] = in ? xg[((c0 + c) * g.in_h + ih) * g.in_w + iw] : T(0);
      }
      for (int64_t e = threadIdx.x; e < nc * taps * kKB; e += blockDim.x) {   // wsh[(c * taps + t) * kKB + kk]
        const int64_t kk = e % kKB, ct = e / kKB, c = ct / taps, t = ct % taps, k = k0 + kk;
        wsh[e] = k < a.kg ? w[((grp * a.kg + k) * a.cg + c0 + c) * taps + t] : T(0);
      }
      __syncthreads();
      if (live) {
        for (int64_t c = 0; c < nc; ++c) {
          for (int64_t i = 0; i < g.kh; ++i) {
            const T* prow = patch + (c * a.patch_h + ty * g.sh + i * g.dh) * a.patch_w + tx * g.sw;
            const T* wrow = wsh + (c * taps + i * g.kw) * kKB;
            for (int64_t j = 0; j < g.kw; ++j) {
              const T v = prow[j * g.dw];
#pragma unroll
              for (int kk = 0; kk < kKB; ++kk) acc[kk] += v * wrow[j * kKB + kk];
            }
          }
        }
      }
      __syncthreads();
    }
    if (live) {
      for (int kk = 0; kk < kKB && k0 + kk < a.kg; ++kk) {
        const int64_t k = grp * a.kg + k0 + kk;
        out[((n * a.d.out_channels + k) * g.out_h + oh) * g.out_w + ow] = acc[kk] + (bias != nullptr ? bias[k] : T(0));
      }
    }
  }
}

// The fallback when one channel's patch does not fit in shared memory: one thread per output element.
template <typename T>
__global__ void direct_forward_global_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                             const T* __restrict__ bias, T* __restrict__ out, DirectLaunch a) {
  const Conv2dGeometry& g = a.g;
  const int64_t total = a.d.batch * a.d.out_channels * g.out_h * g.out_w;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t ow = e % g.out_w, oh = e / g.out_w % g.out_h, k = e / (g.out_w * g.out_h) % a.d.out_channels;
    const int64_t n = e / (g.out_w * g.out_h * a.d.out_channels), grp = k / a.kg;
    T sum = bias != nullptr ? bias[k] : T(0);
    for (int64_t c = 0; c < a.cg; ++c) {
      const T* plane = x + (n * a.d.in_channels + grp * a.cg + c) * g.in_h * g.in_w;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t ih = conv_tap(oh, i, g.sh, g.ph, g.dh);
        if (ih < 0 || ih >= g.in_h) continue;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t iw = conv_tap(ow, j, g.sw, g.pw, g.dw);
          if (iw >= 0 && iw < g.in_w) sum += plane[ih * g.in_w + iw] * w[((k * a.cg + c) * g.kh + i) * g.kw + j];
        }
      }
    }
    out[e] = sum;
  }
}

template <typename T>
__global__ void direct_grad_input_kernel(const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx,
                                         DirectLaunch a) {
  const Conv2dGeometry& g = a.g;
  const int64_t total = a.d.batch * a.d.in_channels * g.in_h * g.in_w;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t iw = e % g.in_w, ih = e / g.in_w % g.in_h, ch = e / (g.in_w * g.in_h) % a.d.in_channels;
    const int64_t n = e / (g.in_w * g.in_h * a.d.in_channels), grp = ch / a.cg, c = ch % a.cg;
    T sum = 0;
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t oh = conv_reader(ih, i, g.sh, g.ph, g.dh, g.out_h);
      if (oh < 0) continue;
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t ow = conv_reader(iw, j, g.sw, g.pw, g.dw, g.out_w);
        if (ow < 0) continue;
        for (int64_t k = 0; k < a.kg; ++k) {
          const int64_t kabs = grp * a.kg + k;
          sum += w[((kabs * a.cg + c) * g.kh + i) * g.kw + j] *
                 dy[((n * a.d.out_channels + kabs) * g.out_h + oh) * g.out_w + ow];
        }
      }
    }
    dx[e] = sum;
  }
}

int flat_grid(int64_t n) { return grid_stride_blocks(n, kThreads); }

DirectLaunch make_launch(const Conv2dDims& dims, const Conv2dGeometry& g, size_t elem) {
  DirectLaunch a;
  a.d = dims;
  a.g = g;
  a.cg = dims.in_channels / dims.groups;
  a.kg = dims.out_channels / dims.groups;
  a.patch_h = (kTH - 1) * g.sh + (g.kh - 1) * g.dh + 1;
  a.patch_w = (kTW - 1) * g.sw + (g.kw - 1) * g.dw + 1;
  a.tiles_w = (g.out_w + kTW - 1) / kTW;
  const int64_t per_channel = a.patch_h * a.patch_w + g.kh * g.kw * kKB;
  const int64_t fit = static_cast<int64_t>(kSharedBytes / elem) / per_channel;
  a.cb = fit < a.cg ? fit : a.cg;   // 0: the patch of one channel does not fit
  return a;
}

template <typename T>
cudaError_t launch_forward(const T* x, const T* w, const T* bias, T* out, const DirectLaunch& a, cudaStream_t stream) {
  if (a.cb == 0) {
    direct_forward_global_kernel<T><<<flat_grid(a.d.batch * a.d.out_channels * a.g.out_h * a.g.out_w), kThreads, 0,
                                      stream>>>(x, w, bias, out, a);
    return cudaGetLastError();
  }
  const int64_t tiles = (a.g.out_h + kTH - 1) / kTH * a.tiles_w, z = a.d.batch * a.d.groups;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>((a.kg + kKB - 1) / kKB),
                  static_cast<unsigned>(z < kMaxGridZ ? z : kMaxGridZ));
  const size_t smem = static_cast<size_t>(a.cb * (a.patch_h * a.patch_w + a.g.kh * a.g.kw * kKB)) * sizeof(T);
  direct_forward_kernel<T><<<grid, kThreads, smem, stream>>>(x, w, bias, out, a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t conv2d_direct_forward(DType dtype, const void* x, const void* w, const void* bias, void* out,
                                  const Conv2dDims& dims, const Conv2dGeometry& g, cudaStream_t stream) {
  if (dims.batch == 0) return cudaSuccess;
  if (dtype == DType::f64) {
    return launch_forward(static_cast<const double*>(x), static_cast<const double*>(w),
                          static_cast<const double*>(bias), static_cast<double*>(out), make_launch(dims, g, 8), stream);
  }
  return launch_forward(static_cast<const float*>(x), static_cast<const float*>(w), static_cast<const float*>(bias),
                        static_cast<float*>(out), make_launch(dims, g, 4), stream);
}

cudaError_t conv2d_direct_grad_input(DType dtype, const void* dy, const void* w, void* dx, const Conv2dDims& dims,
                                     const Conv2dGeometry& g, cudaStream_t stream) {
  const int64_t total = dims.batch * dims.in_channels * g.in_h * g.in_w;
  if (total == 0) return cudaSuccess;
  const DirectLaunch a = make_launch(dims, g, dtype == DType::f64 ? 8 : 4);
  if (dtype == DType::f64) {
    direct_grad_input_kernel<double><<<flat_grid(total), kThreads, 0, stream>>>(
        static_cast<const double*>(dy), static_cast<const double*>(w), static_cast<double*>(dx), a);
  } else {
    direct_grad_input_kernel<float><<<flat_grid(total), kThreads, 0, stream>>>(
        static_cast<const float*>(dy), static_cast<const float*>(w), static_cast<float*>(dx), a);
  }
  return cudaGetLastError();
}

}  // namespace fastconv::cuda
