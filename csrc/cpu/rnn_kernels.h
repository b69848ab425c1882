// Entry points of the CPU LSTM and GRU step kernels (torch-free): the fused pointwise part of one time
// step over a range of batch rows [r0, r1), after the step's recurrent GEMM has added h W_hh^T to the
// gate pre-activations. Rows are the first rows of the step (a packed sequence's step t has
// batch_sizes[t] of them); every matrix is row-major with the leading dimension given, and `*_state`
// buffers (the running h, c or their gradients, one row per sequence) have row stride H.
//
// The math is common/rnn.h's; rnn_kernels.inc writes it once with GCC vector extensions for float
// (exp by range reduction and a degree-7 polynomial; sigmoid and tanh from it) and scalar for double,
// compiled for AVX-512, AVX2 and the baseline ISA (rnn_avx512.cpp, rnn_avx2.cpp, rnn.cpp).
#pragma once

#include <cstdint>

namespace fastconv::cpu {

template <typename T>
struct LstmForwardStep {
  int64_t H;
  T* gates;           // in: pre-activations a (i, f, g, o blocks of H); out: the activated gates
  int64_t ld_gates;
  T* c_save;          // out: c' (the workspace's cell column)
  int64_t ld_c;
  T* c_state;         // in: c_prev; out: c'
  T* h_out;           // out: r = o tanh(c') (the layer's output row, or the projection's input)
  int64_t ld_h;
  T* h_state;         // out: r again (the next step's recurrent input), or nullptr (projection)
};

template <typename T>
struct LstmBackwardStep {
  int64_t H;
  const T* gates;     // activated gates and c' as the forward saved them
  int64_t ld_gates;
  const T* c;
  int64_t ld_c;
  const T* c_prev;    // c of the step before (or c0), gathered per row
  int64_t ld_c_prev;
  const T* dr;        // dL/dr: the gradient reaching h' (plus dr_add when set)
  int64_t ld_dr;
  const T* dr_add;    // nullptr, or a second term of dL/dr (the layer's grad_output rows)
  int64_t ld_dr_add;
  T* dc_state;        // in: dL/dc' from the step after; out: dL/dc_prev
  T* dgates;          // out: dL/da for the four gates
  int64_t ld_dgates;
};

template <typename T>
struct GruForwardStep {
  int64_t H;
  const T* ax;        // x W_ih^T + b_ih (r, z, n blocks)
  int64_t ld_ax;
  const T* ah;        // h W_hh^T + b_hh, row stride 3H
  T* h_state;         // in: h_prev; out: h'
  T* save;            // out: r, z, n, ah_n (the workspace, 4H per row)
  int64_t ld_save;
  T* h_out;           // out: h' (the layer's output row)
  int64_t ld_h;
};

template <typename T>
struct GruBackwardStep {
  int64_t H;
  const T* save;      // r, z, n, ah_n as the forward saved them
  int64_t ld_save;
  const T* h_prev;    // h of the step before (or h0), gathered per row
  int64_t ld_h_prev;
  T* dh_state;        // in: dL/dh' from the step after (without this step's grad_output); out: dh z,
                      // the direct part of dL/dh_prev (the recurrent GEMM adds dah W_hh)
  const T* grad_out;  // this step's grad_output rows
  int64_t ld_grad_out;
  T* dax;             // out: dL/dax (r, z, n)
  int64_t ld_dax;
  T* dah;             // out: dL/dah (r, z, n), row stride 3H
};

template <typename T>
struct RnnKernels {
  void (*lstm_forward)(const LstmForwardStep<T>& s, int64_t r0, int64_t r1);
  void (*lstm_backward)(const LstmBackwardStep<T>& s, int64_t r0, int64_t r1);
  void (*gru_forward)(const GruForwardStep<T>& s, int64_t r0, int64_t r1);
  void (*gru_backward)(const GruBackwardStep<T>& s, int64_t r0, int64_t r1);
};

extern const RnnKernels<float> rnn_kernels_f32_avx512, rnn_kernels_f32_avx2;
extern const RnnKernels<double> rnn_kernels_f64_avx512, rnn_kernels_f64_avx2;

}  // namespace fastconv::cpu
