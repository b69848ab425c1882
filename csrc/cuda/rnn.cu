// CUDA LSTM and GRU step kernels: one thread per (row, hidden unit) of a time step, grid-stride, on the
// shared gate math of common/rnn.h. The GEMMs around them (input projection, recurrent product, weight
// gradients) are gemm.cu's; the per-step driver is rnn_glue.cpp.
#include "cuda/rnn.h"

#include "cuda/launch.h"

namespace fastconv::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void lstm_forward_kernel(LstmForwardStep<T> s, int64_t rows) {
  const int64_t H = s.H;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < rows * H; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = e / H, j = e % H;
    T* a = s.gates + b * s.ld_gates;
    const LstmUnit<T> u = lstm_unit_forward<T>(a[j], a[H + j], a[2 * H + j], a[3 * H + j], s.c_state[b * H + j]);
    a[j] = u.i;
    a[H + j] = u.f;
    a[2 * H + j] = u.g;
    a[3 * H + j] = u.o;
    s.c_state[b * H + j] = u.c;
    s.c_save[b * s.ld_c + j] = u.c;
    s.h_out[b * s.ld_h + j] = u.r;
    if (s.h_state != nullptr) s.h_state[b * H + j] = u.r;
  }
}

template <typename T>
__global__ void lstm_backward_kernel(LstmBackwardStep<T> s, int64_t rows) {
  const int64_t H = s.H;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < rows * H; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = e / H, j = e % H;
    const T* a = s.gates + b * s.ld_gates;
    T dr = s.dr[b * s.ld_dr + j];
    if (s.dr_add != nullptr) dr += s.dr_add[b * s.ld_dr_add + j];
    const LstmUnitGrad<T> d = lstm_unit_backward<T>(a[j], a[H + j], a[2 * H + j], a[3 * H + j], s.c[b * s.ld_c + j],
                                                    s.c_prev[b * s.ld_c_prev + j], dr, s.dc_state[b * H + j]);
    T* dg = s.dgates + b * s.ld_dgates;
    dg[j] = d.a_i;
    dg[H + j] = d.a_f;
    dg[2 * H + j] = d.a_g;
    dg[3 * H + j] = d.a_o;
    s.dc_state[b * H + j] = d.c_prev;
  }
}

template <typename T>
__global__ void gru_forward_kernel(GruForwardStep<T> s, int64_t rows) {
  const int64_t H = s.H;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < rows * H; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = e / H, j = e % H;
    const T* ax = s.ax + b * s.ld_ax;
    const T* ah = s.ah + b * 3 * H;
    const GruUnit<T> u = gru_unit_forward<T>(ax[j], ax[H + j], ax[2 * H + j], ah[j], ah[H + j], ah[2 * H + j],
                                             s.h_state[b * H + j]);
    T* sv = s.save + b * s.ld_save;
    sv[j] = u.r;
    sv[H + j] = u.z;
    sv[2 * H + j] = u.n;
    sv[3 * H + j] = u.ah_n;
    s.h_state[b * H + j] = u.h;
    s.h_out[b * s.ld_h + j] = u.h;
  }
}

template <typename T>
__global__ void gru_backward_kernel(GruBackwardStep<T> s, int64_t rows) {
  const int64_t H = s.H;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < rows * H; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = e / H, j = e % H;
    const T* sv = s.save + b * s.ld_save;
    const GruUnitGrad<T> d = gru_unit_backward<T>(sv[j], sv[H + j], sv[2 * H + j], sv[3 * H + j],
                                                  s.h_prev[b * s.ld_h_prev + j],
                                                  s.dh_state[b * H + j] + s.grad_out[b * s.ld_grad_out + j]);
    T* dax = s.dax + b * s.ld_dax;
    T* dah = s.dah + b * 3 * H;
    dax[j] = dah[j] = d.ax_r;
    dax[H + j] = dah[H + j] = d.ax_z;
    dax[2 * H + j] = d.ax_n;
    dah[2 * H + j] = d.ah_n;
    s.dh_state[b * H + j] = d.h_prev;
  }
}

template <typename T>
__global__ void fill_rows_kernel(T* c, int64_t ld, const T* v, int64_t rows, int64_t n) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < rows * n; e += int64_t(gridDim.x) * blockDim.x) {
    c[e / n * ld + e % n] = v[e % n];
  }
}

// One thread per (row, unit) of the step's first `rows` rows.
template <typename Step>
cudaError_t launch_step(void (*kernel)(Step, int64_t), const Step& s, int64_t rows, cudaStream_t stream) {
  if (rows * s.H == 0) return cudaSuccess;
  kernel<<<grid_stride_blocks(rows * s.H, kThreads), kThreads, 0, stream>>>(s, rows);
  return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t lstm_forward_step(const LstmForwardStep<T>& s, int64_t rows, cudaStream_t stream) {
  return launch_step(lstm_forward_kernel<T>, s, rows, stream);
}

template <typename T>
cudaError_t lstm_backward_step(const LstmBackwardStep<T>& s, int64_t rows, cudaStream_t stream) {
  return launch_step(lstm_backward_kernel<T>, s, rows, stream);
}

template <typename T>
cudaError_t gru_forward_step(const GruForwardStep<T>& s, int64_t rows, cudaStream_t stream) {
  return launch_step(gru_forward_kernel<T>, s, rows, stream);
}

template <typename T>
cudaError_t gru_backward_step(const GruBackwardStep<T>& s, int64_t rows, cudaStream_t stream) {
  return launch_step(gru_backward_kernel<T>, s, rows, stream);
}

template <typename T>
cudaError_t fill_rows(T* c, int64_t ld, const T* v, int64_t rows, int64_t n, cudaStream_t stream) {
  if (rows * n == 0) return cudaSuccess;
  fill_rows_kernel<T><<<grid_stride_blocks(rows * n, kThreads), kThreads, 0, stream>>>(c, ld, v, rows, n);
  return cudaGetLastError();
}

#define FC_INSTANTIATE(T)                                                                          \
  template cudaError_t lstm_forward_step<T>(const LstmForwardStep<T>&, int64_t, cudaStream_t);    \
  template cudaError_t lstm_backward_step<T>(const LstmBackwardStep<T>&, int64_t, cudaStream_t);  \
  template cudaError_t gru_forward_step<T>(const GruForwardStep<T>&, int64_t, cudaStream_t);      \
  template cudaError_t gru_backward_step<T>(const GruBackwardStep<T>&, int64_t, cudaStream_t);    \
  template cudaError_t fill_rows<T>(T*, int64_t, const T*, int64_t, int64_t, cudaStream_t);
FC_INSTANTIATE(float)
FC_INSTANTIATE(double)
#undef FC_INSTANTIATE

}  // namespace fastconv::cuda
