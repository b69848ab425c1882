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

}  // namespace fastconv
