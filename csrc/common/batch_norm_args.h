// Argument checks, layout and per-channel parameter reading for batch_norm, shared by the CPU and CUDA
// glue (torch side). Messages name the op, what it expected and what it got.
#pragma once

#include <ATen/ATen.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>

#include "common/batch_norm.h"
#include "common/checks.h"

namespace fastconv {

struct BatchNormShape {
  int64_t N, C, S;            // batch, channels, product of the spatial sizes
  bool interleaved;           // channels innermost (channels-last 4-D/5-D, or 2-D input)
  at::MemoryFormat format;    // of the output and grad_input (torch's choice for this input)
  at::ScalarType stat_type;   // of save_mean / save_invstd / batch_var: float, or double for double input
  int64_t count() const { return N * S; }
};

// A per-channel tensor argument (weight, bias, running stats, saved stats): 1-D with C elements, on
// the input's device, of the input's dtype or float32 for float16/bfloat16 input.
inline void check_channel_param(const std::optional<at::Tensor>& t, const at::Tensor& input, int64_t C,
                                const char* op, const char* name) {
  if (!t.has_value() || !t->defined()) return;
  FC_CHECK(t->dim() == 1 && t->numel() == C, op, "expected ", name, " to be 1-D with ", C,
           " elements (one per channel of the input), but got shape ", t->sizes());
  FC_CHECK(t->device() == input.device(), op, "expected ", name, " on ", input.device(), ", but got ", t->device());
  const bool half_input = input.scalar_type() == at::kHalf || input.scalar_type() == at::kBFloat16;
  FC_CHECK(t->scalar_type() == input.scalar_type() || (half_input && t->scalar_type() == at::kFloat), op,
           "expected ", name, " of dtype ", input.scalar_type(), half_input ? " or float32" : "", ", but got ",
           t->scalar_type());
}

inline BatchNormShape batch_norm_shape(const at::Tensor& input, const char* op) {
  check_floating(input, op, "input");
  FC_CHECK(input.dim() >= 2, op, "expected input of shape (N, C, ...) with at least 2 dimensions, but got a ",
           input.dim(), "-D tensor of shape ", input.sizes());
  BatchNormShape s;
  s.N = input.size(0);
  s.C = input.size(1);
  FC_CHECK(s.C > 0, op, "expected at least one channel, but got input of shape ", input.sizes());
  s.S = 1;
  for (int64_t d = 2; d < input.dim(); ++d) s.S *= input.size(d);
  s.format = at::MemoryFormat::Contiguous;
  if (input.dim() == 4 || input.dim() == 5) s.format = input.suggest_memory_format();
  s.interleaved = input.dim() == 2 || s.format != at::MemoryFormat::Contiguous;
  s.stat_type = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return s;
}

// The fused activation's kind from the ops' relu and relu_max arguments, checked: relu_max clamps the
// ReLU, and is at least its lower bound (torch's hardtanh(y, 0, relu_max) needs max_val >= min_val).
inline BnActKind batch_norm_act_kind(bool relu, const std::optional<double>& relu_max, const char* op) {
  if (!relu_max.has_value()) return relu ? BnActKind::relu : BnActKind::none;
  FC_CHECK(relu, op, "relu_max clamps the fused ReLU, so it needs relu=True, but got relu=False with relu_max=",
           *relu_max);
  FC_CHECK(*relu_max >= 0, op, "expected relu_max >= 0 (the ReLU's lower bound), but got ", *relu_max);
  return BnActKind::relu_max;
}

namespace detail {

inline float float_of_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

// The least float f >= 0 whose rounding to T is at least v (v >= 0, a value of T), by bisection over
// the bit patterns of the non-negative floats, which order as their values (rounding is monotone).
template <typename T>
float least_rounding_to_at_least(float v) {
  uint32_t lo = 0, hi = 0x7f800000u;   // 0 and +inf; +inf rounds to +inf >= v
  if (static_cast<float>(T(0.0f)) >= v) return 0.0f;
  while (hi - lo > 1) {   // rounding(lo) < v <= rounding(hi)
    const uint32_t mid = lo + (hi - lo) / 2;
    (static_cast<float>(T(float_of_bits(mid))) >= v ? hi : lo) = mid;
  }
  return float_of_bits(hi);
}

template <typename T>
void half_act_bounds(BnActParams<float>& act, double relu_max) {
  act.hi = static_cast<float>(T(static_cast<float>(relu_max)));   // torch's max_val in the tensor's dtype
  // rounded output <= 0 exactly where y <= the float below the least one rounding to T's least positive value
  const float least_positive = static_cast<float>(std::numeric_limits<T>::denorm_min());
  uint32_t b;
  const float up = least_rounding_to_at_least<T>(least_positive);
  std::memcpy(&b, &up, sizeof b);
  act.grad_lo = float_of_bits(b - 1);
  act.grad_hi = least_rounding_to_at_least<T>(act.hi);
}

}  // namespace detail

// The activation's parameters for an output of dtype `out` in the kernels' accumulator type (see
// BnActParams in common/batch_norm.h).
template <typename Acc>
BnActParams<Acc> bn_act_params(BnActKind kind, const std::optional<double>& relu_max, at::ScalarType out) {
  BnActParams<Acc> act{kind, Acc(0), Acc(0), Acc(0)};
  if (kind == BnActKind::none) return act;   // no mask, no bounds to find
  const double hi = relu_max.value_or(0.0);
  if constexpr (std::is_same_v<Acc, float>) {
    if (out == at::kHalf) {
      detail::half_act_bounds<c10::Half>(act, hi);
      return act;
    }
    if (out == at::kBFloat16) {
      detail::half_act_bounds<c10::BFloat16>(act, hi);
      return act;
    }
  }
  act.hi = act.grad_hi = static_cast<Acc>(hi);
  return act;
}

// All checks of fastconv::batch_norm's arguments (the empty-input and one-value cases are the glue's).
inline BatchNormShape check_batch_norm_forward(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                                               const std::optional<at::Tensor>& bias,
                                               const std::optional<at::Tensor>& running_mean,
                                               const std::optional<at::Tensor>& running_var, bool training, double eps,
                                               const char* op) {
  const BatchNormShape s = batch_norm_shape(input, op);
  check_channel_param(weight, input, s.C, op, "weight");
  check_channel_param(bias, input, s.C, op, "bias");
  check_channel_param(running_mean, input, s.C, op, "running_mean");
  check_channel_param(running_var, input, s.C, op, "running_var");
  FC_CHECK(eps > 0, op, "expected eps > 0, but got ", eps);
  if (!training) {
    FC_CHECK(running_mean.has_value() && running_mean->defined() && running_var.has_value() &&
                 running_var->defined(),
             op, "running_mean and running_var must be given in inference (training=False)");
  }
  return s;
}

// Training needs two values per channel for a variance, as torch says.
inline void check_batch_norm_count(const at::Tensor& input, const BatchNormShape& s, bool training, const char* op) {
  FC_CHECK(!training || s.count() > 1, op, "Expected more than 1 value per channel when training, got input size ",
           input.sizes());
}

inline BatchNormShape check_batch_norm_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                                const std::optional<at::Tensor>& weight,
                                                const std::optional<at::Tensor>& bias, const at::Tensor& save_mean,
                                                const at::Tensor& save_invstd, const char* op) {
  const BatchNormShape s = batch_norm_shape(input, op);
  FC_CHECK(grad_output.sizes() == input.sizes(), op, "expected grad_output of shape ", input.sizes(), ", but got ",
           grad_output.sizes());
  FC_CHECK(grad_output.scalar_type() == input.scalar_type(), op, "expected grad_output of dtype ",
           input.scalar_type(), ", but got ", grad_output.scalar_type());
  check_channel_param(weight, input, s.C, op, "weight");
  check_channel_param(bias, input, s.C, op, "bias");
  check_channel_param(save_mean, input, s.C, op, "save_mean");
  check_channel_param(save_invstd, input, s.C, op, "save_invstd");
  return s;
}

// dtype of grad_weight / grad_bias: the weight's, else the statistics dtype.
inline at::ScalarType batch_norm_affine_type(const std::optional<at::Tensor>& weight, const BatchNormShape& s) {
  return weight.has_value() && weight->defined() ? weight->scalar_type() : s.stat_type;
}

}  // namespace fastconv
