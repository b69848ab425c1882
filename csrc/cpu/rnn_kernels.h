// Entry points of the CPU LSTM and GRU step kernels (torch-free): the fused pointwise part of one time
// step (the step structs of common/rnn.h) over a range of batch rows [r0, r1), after the step's
// recurrent GEMM has added h W_hh^T to the gate pre-activations.
//
// The math is common/rnn.h's; rnn_kernels.inc writes it once with GCC vector extensions for float
// (exp by range reduction and a degree-7 polynomial; sigmoid and tanh from it) and scalar for double,
// compiled for AVX-512, AVX2 and the baseline ISA (rnn_avx512.cpp, rnn_avx2.cpp, rnn.cpp).
#pragma once

#include <cstdint>

#include "common/rnn.h"

namespace fastconv::cpu {

template <typename T>
struct RnnKernels {
  void (*lstm_forward)(const LstmForwardStep<T>& s, int64_t r0, int64_t r1);
  void (*lstm_backward)(const LstmBackwardStep<T>& s, int64_t r0, int64_t r1);
  void (*gru_forward)(const GruForwardStep<T>& s, int64_t r0, int64_t r1);
  void (*gru_backward)(const GruBackwardStep<T>& s, int64_t r0, int64_t r1);
};

extern const RnnKernels<float> rnn_kernels_f32_avx512, rnn_kernels_f32_avx2;
extern const RnnKernels<float> rnn_kernels_f32_avx512_emulated;   // isa.h: avx512_emulated
extern const RnnKernels<double> rnn_kernels_f64_avx512, rnn_kernels_f64_avx2;
extern const RnnKernels<double> rnn_kernels_f64_avx512_emulated;   // isa.h: avx512_emulated

}  // namespace fastconv::cpu
