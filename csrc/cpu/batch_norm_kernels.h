// Entry points of the CPU batch-norm kernels (torch-free: raw pointers, shapes, per-channel arrays).
//
// Two layouts cover every input torch's batch_norm accepts:
//   planar       x[(n * C + c) * S + s]   N-C-spatial contiguous (NCHW, NCDHW, (N, C, L)); S >= 1
//   interleaved  x[m * C + c], m < N * S  channels-last 4-D/5-D input, and 2-D (N, C) input
// Kernels take a range of work units: planar reductions a range of channels, planar elementwise
// passes a range of rows r = n * C + c, interleaved passes a range of positions m (reductions then
// add into per-thread partial sums, which the caller combines).
//
// Each kernel exists for float and double, compiled three times from batch_norm_kernels.inc: for
// AVX-512, for AVX2 and for the baseline ISA (portable, also used for float16/bfloat16 in the glue).
#pragma once

#include <cstdint>

#include "common/batch_norm.h"

namespace fastconv::cpu {

// Accumulator type of the elementwise math: float for float and the half types, double for double.
template <typename T>
struct BnAcc {
  using type = float;
};
template <>
struct BnAcc<double> {
  using type = double;
};

struct BnShape {
  int64_t N, C, S;
  bool interleaved;
};

// Per-channel parameters of the elementwise passes (Acc = float for float/half data, double for double).
template <typename Acc>
struct BnChannelParams {
  const Acc* scale;       // y = x * scale + shift
  const Acc* shift;
  const Acc* mean;        // backward: x - mean
  const Acc* a;           // backward: dx = a * g + k * (x - mean) + b0 in training, a * g in inference
  const Acc* k;
  const Acc* b0;
  BnActParams<Acc> act;   // the fused activation (common/batch_norm.h)
  bool training;          // backward: which grad_input formula (common/batch_norm.h's bn_grad_input)
};

template <typename T>
struct BnKernels {
  // Shifted sums: k[c] = first value of channel c (caller passes it for interleaved), s1 += x - k,
  // s2 += (x - k)^2.
  void (*stats_planar)(const T* x, const BnShape& sh, int64_t c0, int64_t c1, double* k, double* s1, double* s2);
  void (*stats_interleaved)(const T* x, const BnShape& sh, int64_t m0, int64_t m1, const double* k, double* s1,
                            double* s2);
  // y = bn_apply(x)
  void (*normalize_planar)(const T* x, T* y, const BnShape& sh, int64_t r0, int64_t r1,
                           const BnChannelParams<typename BnAcc<T>::type>& p);
  void (*normalize_interleaved)(const T* x, T* y, const BnShape& sh, int64_t m0, int64_t m1,
                                const BnChannelParams<typename BnAcc<T>::type>& p);
  // sum_g += g, sum_gx += g * (x - mean), g the incoming gradient masked by the activation's
  void (*grad_sums_planar)(const T* dy, const T* x, const BnShape& sh, int64_t c0, int64_t c1,
                           const BnChannelParams<typename BnAcc<T>::type>& p, double* sum_g, double* sum_gx);
  void (*grad_sums_interleaved)(const T* dy, const T* x, const BnShape& sh, int64_t m0, int64_t m1,
                                const BnChannelParams<typename BnAcc<T>::type>& p, double* sum_g, double* sum_gx);
  // dx = bn_grad_input(...): a * g + k * (x - mean) + b0, or a * g in inference
  void (*grad_input_planar)(const T* dy, const T* x, T* dx, const BnShape& sh, int64_t r0, int64_t r1,
                            const BnChannelParams<typename BnAcc<T>::type>& p);
  void (*grad_input_interleaved)(const T* dy, const T* x, T* dx, const BnShape& sh, int64_t m0, int64_t m1,
                                 const BnChannelParams<typename BnAcc<T>::type>& p);
};

extern const BnKernels<float> bn_kernels_f32_avx512, bn_kernels_f32_avx2;
extern const BnKernels<double> bn_kernels_f64_avx512, bn_kernels_f64_avx2;

}  // namespace fastconv::cpu
