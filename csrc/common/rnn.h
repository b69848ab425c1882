// The gate equations of torch's LSTM and GRU, one hidden unit at a time, forward and backward:
// host-and-device math shared by the CPU kernels (cpu/rnn.cpp, the scalar and float64 paths; the
// vector float paths of cpu/rnn_kernels.inc follow the same formulas) and the CUDA kernels
// (cuda/rnn.cu). Torch-free. S is the type the state and gate math run in (float for float and, later,
// the half types; double for double).
//
// LSTM, gate order i, f, g, o as torch's weight_ih (4H x I) stacks them:
//   i = sigmoid(a_i), f = sigmoid(a_f), g = tanh(a_g), o = sigmoid(a_o)   a = x W_ih^T + b_ih + h W_hh^T + b_hh
//   c' = f c + i g,   r = o tanh(c'),   h' = r (or W_hr r with a projection, proj_size > 0)
// GRU, gate order r, z, n:
//   r = sigmoid(ax_r + ah_r), z = sigmoid(ax_z + ah_z)   ax = x W_ih^T + b_ih, ah = h W_hh^T + b_hh
//   n = tanh(ax_n + r ah_n),  h' = (1 - z) n + z h
#pragma once

#include <math.h>

#include <stdint.h>

#include "common/macros.h"

namespace fastconv {

FC_HD float rnn_exp(float x) { return expf(x); }
FC_HD double rnn_exp(double x) { return exp(x); }
FC_HD float rnn_tanh(float x) { return tanhf(x); }
FC_HD double rnn_tanh(double x) { return tanh(x); }

template <typename S>
FC_HD S rnn_sigmoid(S x) {
  return S(1) / (S(1) + rnn_exp(-x));
}

// What the backward needs of one LSTM unit is its activated gates and the new cell value: the forward
// keeps exactly those (the layer's workspace), and the backward recomputes tanh(c').
template <typename S>
struct LstmUnit {
  S i, f, g, o, c, r;   // activated gates, c', r = o tanh(c')
};

template <typename S>
FC_HD LstmUnit<S> lstm_unit_forward(S a_i, S a_f, S a_g, S a_o, S c_prev) {
  LstmUnit<S> u;
  u.i = rnn_sigmoid(a_i);
  u.f = rnn_sigmoid(a_f);
  u.g = rnn_tanh(a_g);
  u.o = rnn_sigmoid(a_o);
  u.c = u.f * c_prev + u.i * u.g;
  u.r = u.o * rnn_tanh(u.c);
  return u;
}

// Gradients of the gate pre-activations (da_i, da_f, da_g, da_o) and of c_prev, given dr = dL/dr (the
// gradient reaching h', or through W_hr with a projection) and dc = dL/dc' from the next step:
//   dc' += dr o (1 - tanh^2 c'),  do = dr tanh c',  di = dc' g,  dg = dc' i,  df = dc' c_prev,
//   dc_prev = dc' f, and each through its nonlinearity: sigmoid' = s (1 - s), tanh' = 1 - t^2.
template <typename S>
struct LstmUnitGrad {
  S a_i, a_f, a_g, a_o, c_prev;
};

template <typename S>
FC_HD LstmUnitGrad<S> lstm_unit_backward(S i, S f, S g, S o, S c, S c_prev, S dr, S dc) {
  const S tc = rnn_tanh(c);
  const S dct = dc + dr * o * (S(1) - tc * tc);
  LstmUnitGrad<S> d;
  d.a_i = dct * g * i * (S(1) - i);
  d.a_f = dct * c_prev * f * (S(1) - f);
  d.a_g = dct * i * (S(1) - g * g);
  d.a_o = dr * tc * o * (S(1) - o);
  d.c_prev = dct * f;
  return d;
}

// GRU: the backward needs r, z, n and ah_n (the recurrent part of n's pre-activation, which r scales);
// the forward keeps those four per unit.
template <typename S>
struct GruUnit {
  S r, z, n, ah_n, h;
};

template <typename S>
FC_HD GruUnit<S> gru_unit_forward(S ax_r, S ax_z, S ax_n, S ah_r, S ah_z, S ah_n, S h_prev) {
  GruUnit<S> u;
  u.r = rnn_sigmoid(ax_r + ah_r);
  u.z = rnn_sigmoid(ax_z + ah_z);
  u.n = rnn_tanh(ax_n + u.r * ah_n);
  u.ah_n = ah_n;
  u.h = (S(1) - u.z) * u.n + u.z * h_prev;
  return u;
}

// Given dh = dL/dh': gradients of the input-side pre-activations (ax_r, ax_z, ax_n), of the recurrent
// ones (ah_r = ax_r's, ah_z = ax_z's, ah_n = dax_n r) and the direct part of dL/dh_prev (dh z; the rest
// comes through W_hh):
//   dn = dh (1 - z) (1 - n^2),  dz = dh (h_prev - n) z (1 - z),  dr = dn ah_n r (1 - r).
template <typename S>
struct GruUnitGrad {
  S ax_r, ax_z, ax_n, ah_n, h_prev;
};

template <typename S>
FC_HD GruUnitGrad<S> gru_unit_backward(S r, S z, S n, S ah_n, S h_prev, S dh) {
  GruUnitGrad<S> d;
  d.ax_n = dh * (S(1) - z) * (S(1) - n * n);
  d.ax_z = dh * (h_prev - n) * z * (S(1) - z);
  d.ax_r = d.ax_n * ah_n * r * (S(1) - r);
  d.ah_n = d.ax_n * r;
  d.h_prev = dh * z;
  return d;
}

// The pointwise part of one time step, as the CPU and CUDA kernels take it: rows are the first rows of
// the step (a packed sequence's step t has batch_sizes[t] of them); every matrix is row-major with the
// leading dimension given, and `*_state` buffers (the running h, c or their gradients, one row per
// sequence) have row stride H (the GRU's ah / dah 3H).
// T is the type of the gates and h; S that of the cell state, which mixed precision keeps in float when
// T is a half type (as torch does). The CPU and CUDA kernels instantiate S = T for float and double.
template <typename T, typename S = T>
struct LstmForwardStep {
  int64_t H;
  T* gates;           // in: pre-activations a (i, f, g, o blocks of H); out: the activated gates
  int64_t ld_gates;
  S* c_save;          // out: c' (the workspace's cell column)
  int64_t ld_c;
  S* c_state;         // in: c_prev; out: c'
  T* h_out;           // out: r = o tanh(c') (the layer's output row, or the projection's input)
  int64_t ld_h;
  T* h_state;         // out: r again (the next step's recurrent input), or nullptr (projection)
};

template <typename T, typename S = T>
struct LstmBackwardStep {
  int64_t H;
  const T* gates;     // activated gates and c' as the forward saved them
  int64_t ld_gates;
  const S* c;
  int64_t ld_c;
  const S* c_prev;    // c of the step before (or c0), gathered per row
  int64_t ld_c_prev;
  const T* dr;        // dL/dr: the gradient reaching h' (plus dr_add when set)
  int64_t ld_dr;
  const T* dr_add;    // nullptr, or a second term of dL/dr (the layer's grad_output rows)
  int64_t ld_dr_add;
  S* dc_state;        // in: dL/dc' from the step after; out: dL/dc_prev
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

}  // namespace fastconv
