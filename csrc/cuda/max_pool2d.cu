// CUDA max-pool kernels on raw pointers. One thread per output element (forward) or per input
// element (backward), grid-stride loops with 64-bit indices. Consecutive threads take consecutive
// elements of the innermost dimension of the layout (width for NCHW, channels for channels-last), so
// stores are coalesced, and for channels-last the loads too.
//
// Backward never uses atomics:
//   * disjoint windows (stride >= dilated kernel extent): every input element lies in at most one
//     window, so a thread per input element finds that window and copies its gradient if the saved
//     index points here;
//   * overlapping windows: the same thread sums the gradients of all windows covering its element
//     whose saved index points here (a gather, deterministic, the order torch's CUDA kernel uses).
// Both are the same loop: for disjoint windows the covering range just has at most one entry.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/pool2d.h"
#include "cuda/max_pool2d.h"
#include "cuda/launch.h"

namespace fastconv::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

inline int blocks_for(int64_t n) { return grid_stride_blocks(n, kThreads); }

template <typename T>
__global__ void forward_kernel(const T* __restrict__ in, T* __restrict__ out, int64_t* __restrict__ idx,
                               int64_t total, int64_t C, Pool2dGeometry g, bool channels_last) {
  using acc_t = typename Acc<T>::type;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    int64_t ow, oh, c, n;
    if (channels_last) {           // e = ((n * OH + oh) * OW + ow) * C + c
      c = e % C;
      int64_t t = e / C;
      ow = t % g.out_w; t /= g.out_w;
      oh = t % g.out_h; n = t / g.out_h;
    } else {                       // e = ((n * C + c) * OH + oh) * OW + ow
      ow = e % g.out_w;
      int64_t t = e / g.out_w;
      oh = t % g.out_h; t /= g.out_h;
      c = t % C; n = t / C;
    }
    const int64_t plane = g.in_h * g.in_w;
    const T* base = channels_last ? in + n * plane * C + c : in + (n * C + c) * plane;
    acc_t v;
    int64_t i;
    max_pool_window<T, acc_t>(base, channels_last ? C : 1, g, oh, ow, &v, &i);
    out[e] = ::fastconv::convert<T>(v);
    idx[e] = i;
  }
}

template <typename T>
__global__ void backward_kernel(const T* __restrict__ go, const int64_t* __restrict__ idx, T* __restrict__ gi,
                                int64_t total, int64_t C, Pool2dGeometry g, bool channels_last) {
  using acc_t = typename Acc<T>::type;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    int64_t iw, ih, c, n;
    if (channels_last) {
      c = e % C;
      int64_t t = e / C;
      iw = t % g.in_w; t /= g.in_w;
      ih = t % g.in_h; n = t / g.in_h;
    } else {
      iw = e % g.in_w;
      int64_t t = e / g.in_w;
      ih = t % g.in_h; t /= g.in_h;
      c = t % C; n = t / C;
    }
    const int64_t here = ih * g.in_w + iw;
    const int64_t oh0 = covering_first(ih, g.kh, g.ph, g.sh, g.dh), oh1 = covering_last(ih, g.ph, g.sh, g.out_h);
    const int64_t ow0 = covering_first(iw, g.kw, g.pw, g.sw, g.dw), ow1 = covering_last(iw, g.pw, g.sw, g.out_w);
    const int64_t out_plane = g.out_h * g.out_w;
    acc_t sum = 0;
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      for (int64_t ow = ow0; ow < ow1; ++ow) {
        const int64_t o = channels_last ? ((n * out_plane) + oh * g.out_w + ow) * C + c
                                        : (n * C + c) * out_plane + oh * g.out_w + ow;
        if (idx[o] == here) sum += ::fastconv::convert<acc_t>(go[o]);
      }
    }
    gi[e] = ::fastconv::convert<T>(sum);
  }
}

template <typename T>
cudaError_t launch_forward(const void* in, void* out, int64_t* idx, int64_t batch, int64_t C,
                           const Pool2dGeometry& g, bool cl, cudaStream_t stream) {
  const int64_t total = batch * C * g.out_h * g.out_w;
  if (total == 0) return cudaSuccess;
  forward_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(static_cast<const T*>(in), static_cast<T*>(out),
                                                                 idx, total, C, g, cl);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_backward(const void* go, const int64_t* idx, void* gi, int64_t batch, int64_t C,
                            const Pool2dGeometry& g, bool cl, cudaStream_t stream) {
  const int64_t total = batch * C * g.in_h * g.in_w;
  if (total == 0) return cudaSuccess;
  backward_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(static_cast<const T*>(go), idx,
                                                                  static_cast<T*>(gi), total, C, g, cl);
  return cudaGetLastError();
}

}  // namespace

cudaError_t max_pool2d_forward(DType dtype, const void* input, void* output, int64_t* indices, int64_t batch,
                               int64_t channels, const Pool2dGeometry& g, bool channels_last, cudaStream_t stream) {
  switch (dtype) {
    case DType::f32: return launch_forward<float>(input, output, indices, batch, channels, g, channels_last, stream);
    case DType::f64: return launch_forward<double>(input, output, indices, batch, channels, g, channels_last, stream);
    case DType::f16: return launch_forward<__half>(input, output, indices, batch, channels, g, channels_last, stream);
    case DType::bf16:
      return launch_forward<__nv_bfloat16>(input, output, indices, batch, channels, g, channels_last, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t max_pool2d_backward(DType dtype, const void* grad_output, const int64_t* indices, void* grad_input,
                                int64_t batch, int64_t channels, const Pool2dGeometry& g, bool channels_last,
                                cudaStream_t stream) {
  switch (dtype) {
    case DType::f32:
      return launch_backward<float>(grad_output, indices, grad_input, batch, channels, g, channels_last, stream);
    case DType::f64:
      return launch_backward<double>(grad_output, indices, grad_input, batch, channels, g, channels_last, stream);
    case DType::f16:
      return launch_backward<__half>(grad_output, indices, grad_input, batch, channels, g, channels_last, stream);
    case DType::bf16:
      return launch_backward<__nv_bfloat16>(grad_output, indices, grad_input, batch, channels, g, channels_last,
                                            stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastconv::cuda
