// Batch-normalisation math shared by the CPU and CUDA kernels (host-and-device, torch-free).
//
// Per channel c, over the M = N * (spatial size) values x of that channel:
//   training:  mean = E[x], var = E[(x - mean)^2] (biased), invstd = 1 / sqrt(var + eps)
//   inference: mean = running_mean, invstd = 1 / sqrt(running_var + eps)
//   y = (x - mean) * invstd * w + b  =  x * scale + shift,  scale = w * invstd,  shift = b - mean * scale
//   with relu: y = max(y, 0); with relu and relu_max: y = min(max(y, 0), hi) (torch's hardtanh(y, 0, hi),
//   ReLU6 at hi = 6; hi is relu_max in the output's dtype)
// The statistics are shifted sums: with K the channel's first value, S1 = sum(x - K) and
// S2 = sum((x - K)^2) give mean = K + S1/M and var = S2/M - (S1/M)^2 without the cancellation of
// E[x^2] - E[x]^2 when |mean| >> spread (K is a sample, so S1/M is of the order of the spread).
//
// Backward, with g = dy zeroed where the activation's gradient is 0 (bn_masked_grad), y recomputed from x
// exactly as the forward computed it (same scale, shift and expression, so the mask matches bit for bit):
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

// The activation fused after the normalisation.
enum class BnActKind : int { none, relu, relu_max };

// Its parameters in the accumulator type. hi: the clamp's bound (relu_max only). The gradient stops
// where torch's threshold_backward (ReLU: y <= 0) or hardtanh_backward (clamped: y <= 0 or y >= hi)
// stops it, judged on the output in its own dtype, so a NaN output lets it through. grad_lo and
// grad_hi restate those bounds for the unrounded y the kernels recompute: 0 and hi for float and
// double output; for float16/bfloat16 output the float values at which the rounded output reaches 0
// and hi (bn_act_params in common/batch_norm_args.h).
template <typename Acc>
struct BnActParams {
  BnActKind kind;
  Acc hi, grad_lo, grad_hi;
};

// The normalised, affine-transformed and activated value. Every kernel, forward and backward, CPU and
// CUDA, goes through this one expression. NaN stays NaN, as in torch.relu and torch.clamp.
template <typename Acc>
FC_HD Acc bn_apply(Acc x, Acc scale, Acc shift, const BnActParams<Acc>& act) {
  const Acc y = x * scale + shift;
  if (act.kind != BnActKind::none && y < Acc(0)) return Acc(0);
  if (act.kind == BnActKind::relu_max && y > act.hi) return act.hi;
  return y;
}

// The gradient that reaches the normalisation: dy, or 0 where the activation's gradient is 0 (see
// BnActParams).
template <typename Acc>
FC_HD Acc bn_masked_grad(Acc dy, Acc x, Acc scale, Acc shift, const BnActParams<Acc>& act) {
  if (act.kind == BnActKind::none) return dy;
  const Acc y = x * scale + shift;
  const bool stop = y <= act.grad_lo || (act.kind == BnActKind::relu_max && y >= act.grad_hi);
  return stop ? Acc(0) : dy;
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
