// CUDA batch-norm kernels on raw pointers (see batch_norm.h and common/batch_norm.h for the math).
//
// Reductions run in two stages so that a channel's N*S values are spread over many blocks however
// large H*W is: blocks write per-(channel, block) partial sums to a workspace, and a per-channel
// kernel combines them in double. Planar data uses a (C, blocks) grid with threads along the
// contiguous spatial run; interleaved data a (C/32, blocks) grid of 32x8 threads, the 32 lanes of a
// warp on 32 consecutive channels (coalesced). Elementwise passes are grid-stride loops.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/batch_norm.h"
#include "common/convert.h"
#include "cuda/batch_norm.h"
#include "cuda/launch.h"

namespace fastconv::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 8;   // interleaved reductions: blockDim = (32, 8)

template <typename T> struct StatOf { using type = float; };
template <> struct StatOf<double> { using type = double; };

int grid_for(int64_t n) { return grid_stride_blocks(n, kThreads); }

template <typename P>
BnActParams<P> narrow_act(const BnActParams<double>& a) {
  return {a.kind, static_cast<P>(a.hi), static_cast<P>(a.grad_lo), static_cast<P>(a.grad_hi)};
}

template <typename T, typename P>
__device__ __forceinline__ P load(const T* p, int64_t i) { return ::fastconv::convert<P>(p[i]); }

// Per-element contributions to the two sums of a reduction.
template <typename T, typename P>
struct StatsTerm {            // d = x - K: (d, d^2), K the channel's first value
  const T* x;
  __device__ void operator()(int64_t i, int64_t c, P kc, P* a1, P* a2) const {
    const P d = load<T, P>(x, i) - kc;
    *a1 += d;
    *a2 += d * d;
  }
};

template <typename T, typename P>
struct GradTerm {             // g = masked dy: (g, g * (x - mean))
  const T* dy;
  const T* x;
  const P* mean;
  const P* scale;
  const P* shift;
  BnActParams<P> act;
  __device__ void operator()(int64_t i, int64_t c, P, P* a1, P* a2) const {
    const P xv = load<T, P>(x, i);
    const P g = bn_masked_grad<P>(load<T, P>(dy, i), xv, scale[c], shift[c], act);
    *a1 += g;
    *a2 += g * (xv - mean[c]);
  }
};

template <typename P>
__device__ void block_reduce2(P* a1, P* a2) {
  __shared__ P sh1[kThreads / kWarp], sh2[kThreads / kWarp];
  for (int off = kWarp / 2; off > 0; off /= 2) {
    *a1 += __shfl_down_sync(0xffffffffu, *a1, off);
    *a2 += __shfl_down_sync(0xffffffffu, *a2, off);
  }
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  if (lane == 0) {
    sh1[warp] = *a1;
    sh2[warp] = *a2;
  }
  __syncthreads();
  if (warp == 0) {
    *a1 = lane < blockDim.x / kWarp ? sh1[lane] : P(0);
    *a2 = lane < blockDim.x / kWarp ? sh2[lane] : P(0);
    for (int off = kWarp / 2; off > 0; off /= 2) {
      *a1 += __shfl_down_sync(0xffffffffu, *a1, off);
      *a2 += __shfl_down_sync(0xffffffffu, *a2, off);
    }
  }
}

// Planar: block (c, b) sums the values j in its chunk of the channel's M = N*S values. Channels run
// along grid.x, which has room for any channel count (grid.y and grid.z stop at 65535).
template <typename T, typename P, typename Term>
__global__ void reduce_planar(Term term, const T* x, BnCudaShape sh, int64_t chunk, double* partial) {
  const int64_t c = blockIdx.x, b = blockIdx.y, B = gridDim.y, M = sh.N * sh.S;
  const P kc = load<T, P>(x, c * sh.S);   // K = the channel's first value (used by StatsTerm)
  P a1 = 0, a2 = 0;
  const int64_t end = (b + 1) * chunk < M ? (b + 1) * chunk : M;
  for (int64_t j = b * chunk + threadIdx.x; j < end; j += blockDim.x) {
    const int64_t n = j / sh.S, s = j - n * sh.S;
    term((n * sh.C + c) * sh.S + s, c, kc, &a1, &a2);
  }
  block_reduce2(&a1, &a2);
  if (threadIdx.x == 0) {
    partial[2 * (c * B + b)] = a1;
    partial[2 * (c * B + b) + 1] = a2;
  }
}

// Interleaved: block (cb, b) sums rows [b*chunk, (b+1)*chunk) for channels cb*32 .. cb*32+31.
template <typename T, typename P, typename Term>
__global__ void reduce_interleaved(Term term, const T* x, BnCudaShape sh, int64_t chunk, double* partial) {
  __shared__ P sh1[kRowsPerBlock][kWarp], sh2[kRowsPerBlock][kWarp];
  const int64_t c = blockIdx.x * int64_t(kWarp) + threadIdx.x, b = blockIdx.y, B = gridDim.y, M = sh.N * sh.S;
  P a1 = 0, a2 = 0;
  if (c < sh.C) {
    const P kc = load<T, P>(x, c);
    const int64_t end = (b + 1) * chunk < M ? (b + 1) * chunk : M;
    for (int64_t m = b * chunk + threadIdx.y; m < end; m += kRowsPerBlock) term(m * sh.C + c, c, kc, &a1, &a2);
  }
  sh1[threadIdx.y][threadIdx.x] = a1;
  sh2[threadIdx.y][threadIdx.x] = a2;
  __syncthreads();
  if (threadIdx.y == 0 && c < sh.C) {
    for (int r = 1; r < kRowsPerBlock; ++r) {
      a1 += sh1[r][threadIdx.x];
      a2 += sh2[r][threadIdx.x];
    }
    partial[2 * (c * B + b)] = a1;
    partial[2 * (c * B + b) + 1] = a2;
  }
}

template <typename T, typename P, typename Term>
void launch_reduce(const Term& term, const T* x, const BnCudaShape& sh, int64_t blocks, double* partial,
                   cudaStream_t stream) {
  const int64_t M = sh.N * sh.S, chunk = (M + blocks - 1) / blocks;
  if (sh.interleaved) {
    const dim3 grid(static_cast<unsigned>((sh.C + kWarp - 1) / kWarp), static_cast<unsigned>(blocks));
    reduce_interleaved<T, P, Term><<<grid, dim3(kWarp, kRowsPerBlock), 0, stream>>>(term, x, sh, chunk, partial);
  } else {
    const dim3 grid(static_cast<unsigned>(sh.C), static_cast<unsigned>(blocks));
    reduce_planar<T, P, Term><<<grid, kThreads, 0, stream>>>(term, x, sh, chunk, partial);
  }
}

template <typename P>
__device__ P param_or(const P* p, int64_t c, P fallback) { return p != nullptr ? p[c] : fallback; }

template <typename T, typename P>
__global__ void finalize_stats(const T* x, BnCudaShape sh, int64_t B, const double* partial, double eps,
                               const P* w, const P* b, P* save_mean, P* save_invstd, P* batch_var, P* scale,
                               P* shift) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= sh.C) return;
  double s1 = 0, s2 = 0;
  for (int64_t i = 0; i < B; ++i) {
    s1 += partial[2 * (c * B + i)];
    s2 += partial[2 * (c * B + i) + 1];
  }
  const double k = static_cast<double>(load<T, P>(x, sh.interleaved ? c : c * sh.S));
  double mean, var;
  bn_moments(k, s1, s2, static_cast<double>(sh.N * sh.S), &mean, &var);
  // Round the statistics first and derive scale/shift from the rounded values, as backward does.
  save_mean[c] = static_cast<P>(mean);
  save_invstd[c] = static_cast<P>(bn_invstd(var, eps));
  batch_var[c] = static_cast<P>(var);
  bn_scale_shift<P>(save_mean[c], save_invstd[c], param_or<P>(w, c, P(1)), param_or<P>(b, c, P(0)), &scale[c], &shift[c]);
}

template <typename P>
__global__ void prepare_kernel(int64_t C, const P* mean, const P* running_var, double eps, const P* w, const P* b,
                               P* save_mean, P* save_invstd, P* scale, P* shift) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  if (save_mean != nullptr) save_mean[c] = mean[c];
  if (running_var != nullptr) save_invstd[c] = static_cast<P>(bn_invstd(running_var[c], eps));
  bn_scale_shift<P>(mean[c], save_invstd[c], param_or<P>(w, c, P(1)), param_or<P>(b, c, P(0)), &scale[c], &shift[c]);
}

__device__ __forceinline__ int64_t channel_of(int64_t e, const BnCudaShape& sh) {
  return sh.interleaved ? e % sh.C : (e / sh.S) % sh.C;
}

template <typename T, typename P>
__global__ void normalize_kernel(const T* x, T* y, BnCudaShape sh, const P* scale, const P* shift,
                                 BnActParams<P> act) {
  const int64_t total = sh.N * sh.C * sh.S;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = channel_of(e, sh);
    y[e] = ::fastconv::convert<T>(bn_apply<P>(load<T, P>(x, e), scale[c], shift[c], act));
  }
}

template <typename P>
__global__ void finalize_grads(BnCudaShape sh, int64_t B, const double* partial, const P* save_invstd, const P* w,
                               bool training, bool have_sums, P* coeffs, P* grad_weight, P* grad_bias) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= sh.C) return;
  double sum_g = 0, sum_gx = 0;
  if (have_sums) {
    for (int64_t i = 0; i < B; ++i) {
      sum_g += partial[2 * (c * B + i)];
      sum_gx += partial[2 * (c * B + i) + 1];
    }
  }
  const double invstd = save_invstd[c];
  double a, k, b0;
  bn_backward_coeffs(training, param_or<P>(w, c, P(1)), invstd, sum_g, sum_gx, static_cast<double>(sh.N * sh.S), &a,
                     &k, &b0);
  coeffs[3 * c] = static_cast<P>(a);
  coeffs[3 * c + 1] = static_cast<P>(k);
  coeffs[3 * c + 2] = static_cast<P>(b0);
  if (grad_weight != nullptr) grad_weight[c] = static_cast<P>(sum_gx * invstd);
  if (grad_bias != nullptr) grad_bias[c] = static_cast<P>(sum_g);
}

template <typename T, typename P>
__global__ void grad_input_kernel(const T* dy, const T* x, T* dx, BnCudaShape sh, const P* mean, const P* scale,
                                  const P* shift, const P* coeffs, BnActParams<P> act, bool training) {
  const int64_t total = sh.N * sh.C * sh.S;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = channel_of(e, sh);
    const P xv = load<T, P>(x, e);
    const P g = bn_masked_grad<P>(load<T, P>(dy, e), xv, scale[c], shift[c], act);
    dx[e] = ::fastconv::convert<T>(
        bn_grad_input<P>(training, g, xv, mean[c], coeffs[3 * c], coeffs[3 * c + 1], coeffs[3 * c + 2]));
  }
}

template <typename T>
cudaError_t stats_t(const void* x, const BnCudaShape& sh, double eps, const void* w, const void* b, double* ws,
                    void* mean, void* invstd, void* var, void* scale, void* shift, cudaStream_t stream) {
  using P = typename StatOf<T>::type;
  if (sh.N * sh.C * sh.S == 0) return cudaSuccess;   // no zero-block launch (the glue handles empty inputs)
  const T* xp = static_cast<const T*>(x);
  const int64_t B = batch_norm_reduce_blocks(sh);
  launch_reduce<T, P>(StatsTerm<T, P>{xp}, xp, sh, B, ws, stream);
  finalize_stats<T, P><<<grid_for(sh.C), kThreads, 0, stream>>>(
      xp, sh, B, ws, eps, static_cast<const P*>(w), static_cast<const P*>(b), static_cast<P*>(mean),
      static_cast<P*>(invstd), static_cast<P*>(var), static_cast<P*>(scale), static_cast<P*>(shift));
  return cudaGetLastError();
}

template <typename T>
cudaError_t normalize_t(const void* x, void* y, const BnCudaShape& sh, const void* scale, const void* shift,
                        const BnActParams<double>& act, cudaStream_t stream) {
  using P = typename StatOf<T>::type;
  if (sh.N * sh.C * sh.S == 0) return cudaSuccess;
  normalize_kernel<T, P><<<grid_for(sh.N * sh.C * sh.S), kThreads, 0, stream>>>(
      static_cast<const T*>(x), static_cast<T*>(y), sh, static_cast<const P*>(scale), static_cast<const P*>(shift),
      narrow_act<P>(act));
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward_t(const void* dy, const void* x, void* dx, const BnCudaShape& sh, const void* mean,
                       const void* invstd, const void* w, const void* scale, const void* shift, bool training,
                       const BnActParams<double>& act_d, bool need_sums, double* ws, void* coeffs, void* gw, void* gb,
                       cudaStream_t stream) {
  using P = typename StatOf<T>::type;
  if (sh.N * sh.C * sh.S == 0) return cudaSuccess;
  const T* xp = static_cast<const T*>(x);
  const T* gp = static_cast<const T*>(dy);
  const P *mp = static_cast<const P*>(mean), *sp = static_cast<const P*>(scale), *hp = static_cast<const P*>(shift);
  const int64_t B = batch_norm_reduce_blocks(sh);
  const bool sums = training || need_sums;
  const BnActParams<P> act = narrow_act<P>(act_d);
  if (sums) launch_reduce<T, P>(GradTerm<T, P>{gp, xp, mp, sp, hp, act}, xp, sh, B, ws, stream);
  finalize_grads<P><<<grid_for(sh.C), kThreads, 0, stream>>>(sh, B, ws, static_cast<const P*>(invstd),
                                                              static_cast<const P*>(w), training, sums,
                                                              static_cast<P*>(coeffs), static_cast<P*>(gw),
                                                              static_cast<P*>(gb));
  grad_input_kernel<T, P><<<grid_for(sh.N * sh.C * sh.S), kThreads, 0, stream>>>(
      gp, xp, static_cast<T*>(dx), sh, mp, sp, hp, static_cast<const P*>(coeffs), act, training);
  return cudaGetLastError();
}

#define FC_BN_DISPATCH(dtype, fn, ...)                                         \
  switch (dtype) {                                                             \
    case DType::f32: return fn<float>(__VA_ARGS__);                            \
    case DType::f64: return fn<double>(__VA_ARGS__);                           \
    case DType::f16: return fn<__half>(__VA_ARGS__);                           \
    case DType::bf16: return fn<__nv_bfloat16>(__VA_ARGS__);                   \
  }                                                                            \
  return cudaErrorInvalidValue

}  // namespace

int64_t batch_norm_reduce_blocks(const BnCudaShape& sh) {
  // About 4K values per block, at most 1024 blocks per channel (fewer when channels are many).
  const int64_t M = sh.N * sh.S;
  int64_t b = (M + 4095) / 4096;
  const int64_t cap = sh.C >= 256 ? 64 : 1024;
  if (b > cap) b = cap;
  return b < 1 ? 1 : b;
}

cudaError_t batch_norm_stats(DType dtype, const void* x, const BnCudaShape& sh, double eps, const void* weight,
                             const void* bias, double* workspace, void* save_mean, void* save_invstd, void* batch_var,
                             void* scale, void* shift, cudaStream_t stream) {
  FC_BN_DISPATCH(dtype, stats_t, x, sh, eps, weight, bias, workspace, save_mean, save_invstd, batch_var, scale, shift,
                 stream);
}

cudaError_t batch_norm_prepare(DType dtype, int64_t C, const void* mean, const void* running_var, double eps,
                               const void* weight, const void* bias, void* save_mean, void* save_invstd, void* scale,
                               void* shift, cudaStream_t stream) {
  if (C == 0) return cudaSuccess;
  if (dtype == DType::f64) {
    prepare_kernel<double><<<grid_for(C), kThreads, 0, stream>>>(
        C, static_cast<const double*>(mean), static_cast<const double*>(running_var), eps,
        static_cast<const double*>(weight), static_cast<const double*>(bias), static_cast<double*>(save_mean),
        static_cast<double*>(save_invstd), static_cast<double*>(scale), static_cast<double*>(shift));
  } else {
    prepare_kernel<float><<<grid_for(C), kThreads, 0, stream>>>(
        C, static_cast<const float*>(mean), static_cast<const float*>(running_var), eps,
        static_cast<const float*>(weight), static_cast<const float*>(bias), static_cast<float*>(save_mean),
        static_cast<float*>(save_invstd), static_cast<float*>(scale), static_cast<float*>(shift));
  }
  return cudaGetLastError();
}

cudaError_t batch_norm_normalize(DType dtype, const void* x, void* y, const BnCudaShape& sh, const void* scale,
                                 const void* shift, const BnActParams<double>& act, cudaStream_t stream) {
  FC_BN_DISPATCH(dtype, normalize_t, x, y, sh, scale, shift, act, stream);
}

cudaError_t batch_norm_backward(DType dtype, const void* dy, const void* x, void* dx, const BnCudaShape& sh,
                                const void* save_mean, const void* save_invstd, const void* weight,
                                const void* scale, const void* shift, bool training, const BnActParams<double>& act,
                                bool need_sums,
                                double* workspace, void* coeffs, void* grad_weight, void* grad_bias,
                                cudaStream_t stream) {
  FC_BN_DISPATCH(dtype, backward_t, dy, x, dx, sh, save_mean, save_invstd, weight, scale, shift, training, act,
                 need_sums, workspace, coeffs, grad_weight, grad_bias, stream);
}

}  // namespace fastconv::cuda
