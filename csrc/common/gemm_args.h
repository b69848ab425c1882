// Argument checks and output shape for fastconv::gemm, shared by the CPU and CUDA glue (torch side).
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "common/checks.h"

namespace fastconv {

struct GemmShape {
  int64_t m, n, k;
  at::ScalarType out_dtype;
};

// out = alpha * op(a) * op(b) + beta * c, op(x) = trans ? x^T : x; c broadcastable to (m, n).
// dtypes: a and b alike, float32, float64, float16 or bfloat16; the output (and c) in out_dtype,
// a's dtype by default; half-precision inputs (accumulated in float32) may give a float32, float16 or
// bfloat16 output, float32 and float64 inputs only their own.
inline GemmShape check_gemm(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& c,
                            bool trans_a, bool trans_b, std::optional<at::ScalarType> out_dtype, const char* op) {
  FC_CHECK(a.dim() == 2 && b.dim() == 2, op, "expected 2-D a and b, but got shapes ", a.sizes(), " and ", b.sizes());
  check_floating(a, op, "a");
  FC_CHECK(b.scalar_type() == a.scalar_type(), op, "expected b of dtype ", a.scalar_type(), ", but got ",
           b.scalar_type());
  const at::ScalarType out = out_dtype.value_or(a.scalar_type());
  FC_CHECK(out == a.scalar_type() || (is_half(a.scalar_type()) && (out == at::kFloat || is_half(out))), op,
           "expected out_dtype ", a.scalar_type(),
           is_half(a.scalar_type()) ? ", float32, float16 or bfloat16" : " (only float16 and bfloat16 inputs take another)",
           " for ", a.scalar_type(), " inputs, but got ", out);
  FC_CHECK(b.device() == a.device(), op, "expected a and b on one device, but got ", a.device(), " and ", b.device());
  GemmShape s;
  s.m = trans_a ? a.size(1) : a.size(0);
  s.k = trans_a ? a.size(0) : a.size(1);
  const int64_t kb = trans_b ? b.size(1) : b.size(0);
  s.n = trans_b ? b.size(0) : b.size(1);
  s.out_dtype = out;
  FC_CHECK(s.k == kb, op, "inner dimensions differ: op(a) is ", s.m, "x", s.k, " and op(b) is ", kb, "x", s.n,
           " (a ", a.sizes(), trans_a ? " transposed" : "", ", b ", b.sizes(), trans_b ? " transposed" : "", ")");
  if (c.has_value() && c->defined()) {
    FC_CHECK(c->scalar_type() == out, op, "expected c of the output's dtype ", out, ", but got ", c->scalar_type());
    FC_CHECK(c->device() == a.device(), op, "expected c on ", a.device(), ", but got ", c->device());
    const bool ok = c->dim() <= 2 && (c->dim() < 1 || c->size(-1) == s.n || c->size(-1) == 1) &&
                    (c->dim() < 2 || c->size(0) == s.m || c->size(0) == 1);
    FC_CHECK(ok, op, "expected c broadcastable to the output shape [", s.m, ", ", s.n, "], but got ", c->sizes());
  }
  return s;
}

// The output before the product is added: beta * c broadcast to (m, n), or (beta == 0 / no c) left
// for the kernel to overwrite without reading.
inline bool gemm_reads_c(const std::optional<at::Tensor>& c, double beta) {
  return c.has_value() && c->defined() && beta != 0.0;
}

// The m x n output (row-major, in the output dtype, on a's device), holding c broadcast where
// gemm_reads_c, else left for the kernel to overwrite.
inline at::Tensor gemm_output(const at::Tensor& a, const std::optional<at::Tensor>& c, double beta, const GemmShape& s) {
  at::Tensor out = at::empty({s.m, s.n}, a.options().dtype(s.out_dtype));
  if (gemm_reads_c(c, beta)) out.copy_(c->expand({s.m, s.n}));
  return out;
}

}  // namespace fastconv
