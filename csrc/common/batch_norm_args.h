// Argument checks, layout and per-channel parameter reading for batch_norm, shared by the CPU and CUDA
// glue (torch side). Messages name the op, what it expected and what it got.
#pragma once

#include <ATen/ATen.h>

#include <optional>

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
