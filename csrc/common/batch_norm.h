// Batch-normalisation math shared by the CPU and CUDA kernels (host-and-device, torch-free).
//
// Per channel c, over the M = N * (spatial size) values x of that channel:
//   training:  mean = E[x], var = E[(x - mean)^2] (biased), invstd = 1 / sqrt(var + eps)
//   inference: mean = running_mean, invstd = 1 / sqrt(running_var + eps)
//   y = (x - mean) * invstd * w + b  =  x * scale + shift,  scale = w * invstd,  shift = b - mean * scale
//   with relu: y = max(y, 0)
// The statistics are shifted sums: with K the channel's first value, S1 = sum(x - K) and
// S2 = sum((x - K)^2) give mean = K + S1/M and var = S2/M - (S1/M)^2 without the cancellation of
// E[x^2] - E[x]^2 when |mean| >> spread (K is a sample, so S1/M is of the order of the spread).
//
// Backward, with g = dy, zeroed where y <= 0 under relu (NaN passes, as in torch), where y is recomputed
// from x exactly as the forward computed it (same scale, shift and expression, so the mask matches bit
// for bit):
//   grad_bias   = sum(g)                    grad_weight = invstd * sum(g * (x - mean))
//   training:   dx = scale * (g - sum(g)/M - (x - mean) * invstd^2 * sum(g * (x - mean))/M)
//   inference:  dx = scale * g
// written as dx = a * g + k * (x - mean) + b0 with per-channel coefficients (bn_backward_coeffs) in
// training, and as dx = a * g in inference, where x does not enter (k = 0 would still turn an infinite
// or NaN x into a NaN gradient, which torch's inference backward does not give).
#pragma once

#include <cmath>

#include "common/macros.h"

namespace fastconv {

// The normalised, affine-transformed (and optionally rectified) value. Every kernel, forward and
// backward, CPU and CUDA, goes through this one expression. ReLU keeps NaN, as torch.relu does.
template <typename Acc>
FC_HD Acc bn_apply(Acc x, Acc scale, Acc shift, bool relu) {
  const Acc y = x * scale + shift;
  return (relu && y < Acc(0)) ? Acc(0) : y;
}

// The gradient that reaches the normalisation: dy, or 0 where the fused ReLU's output is not positive.
// torch's threshold_backward rule on the ReLU's result (y <= 0 ? 0 : grad), so a NaN output passes it.
template <typename Acc>
FC_HD Acc bn_masked_grad(Acc dy, Acc x, Acc scale, Acc shift, bool relu) {
  return (relu && x * scale + shift <= Acc(0)) ? Acc(0) : dy;
}

// grad_input from the masked gradient g: with the batch statistics' terms in training, dy's alone in
// inference (see the header comment).
template <typename Acc>
FC_HD Acc bn_grad_input(bool training, Acc g, Acc x, Acc mean, Acc a, Acc k, Acc b0) {
  return training ? a * g + k * (x - mean) + b0 : a * g;
}

// Per-channel scale and shift from the statistics and the optional affine parameters.
template <typename Acc>
FC_HD void bn_scale_shift(double mean, double invstd, double w, double b, Acc* scale, Acc* shift) {
  const double s = w * invstd;
  *scale = static_cast<Acc>(s);
  *shift = static_cast<Acc>(b - mean * s);
}

// Mean and biased variance from shifted sums over `count` values.
FC_HD void bn_moments(double shift_k, double s1, double s2, double count, double* mean, double* var) {
  const double m1 = s1 / count;
  const double v = s2 / count - m1 * m1;
  *mean = shift_k + m1;
  *var = v < 0 ? 0 : v;   // rounding's negatives to 0; a NaN (from an infinite x) kept, as torch's
}

FC_HD double bn_invstd(double var, double eps) { return 1.0 / sqrt(var + eps); }

// dx = a * g + k * (x - mean) + b0 (see the header comment). sum_g = sum(g), sum_gx = sum(g*(x-mean)).
FC_HD void bn_backward_coeffs(bool training, double w, double invstd, double sum_g, double sum_gx, double count,
                              double* a, double* k, double* b0) {
  *a = w * invstd;
  if (training) {
    *k = -(*a) * invstd * invstd * sum_gx / count;
    *b0 = -(*a) * sum_g / count;
  } else {
    *k = 0;
    *b0 = 0;
  }
}

}  // namespace fastconv
