// Input checks shared by the CPU and CUDA glue (torch side; never included by .cu files).
// Every message names the op, what it expected and what it got.
#pragma once

#include <ATen/ATen.h>

#include "common/dtype.h"

namespace fastconv {

#define FC_CHECK(cond, op, ...) TORCH_CHECK((cond), "fastconv::", op, ": ", __VA_ARGS__)

inline void check_floating(const at::Tensor& t, const char* op, const char* what) {
  const auto st = t.scalar_type();
  FC_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, op,
           "expected ", what, " to be float32, float64, float16 or bfloat16, but got ", st);
}

inline bool is_half(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

// A float16/bfloat16 tensor widened to float32 (exact); other (and undefined) tensors as they are.
// The ops that compute half precision in float32 inside run their float32 kernels on these.
inline at::Tensor half_as_float(const at::Tensor& t) {
  return t.defined() && is_half(t.scalar_type()) ? t.to(at::kFloat) : t;
}

inline DType to_dtype(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return DType::f32;
    case at::kDouble: return DType::f64;
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default: TORCH_CHECK(false, "fastconv: unsupported dtype ", st);
  }
}

// A list argument given as int[2] in the schema must have exactly two entries.
inline void check_pair(at::IntArrayRef v, const char* op, const char* name) {
  FC_CHECK(v.size() == 2, op, "expected ", name, " to have 2 elements, but got ", v.size(), " (", v, ")");
}

}  // namespace fastconv
