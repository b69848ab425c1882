// half_runs.h: the portable conversions (c10's scalar ones) and the choice by the active ISA.
#include "cpu/half_runs.h"

#include <c10/util/Half.h>

#include "cpu/isa.h"

namespace fastconv::cpu {
namespace {

void widen_f16(const void* src, float* dst, int64_t n) {
  const auto* s = static_cast<const c10::Half*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]);
}

void narrow_f16(const float* src, void* dst, int64_t n) {
  auto* d = static_cast<c10::Half*>(dst);
  for (int64_t i = 0; i < n; ++i) d[i] = static_cast<c10::Half>(src[i]);
}

void widen_bf16(const void* src, float* dst, int64_t n) {
  const auto* s = static_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_bits_to_float(s[i]);
}

void narrow_bf16(const float* src, void* dst, int64_t n) {
  auto* d = static_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) d[i] = float_to_bf16_bits(src[i]);
}

const HalfRunFns f16_baseline{widen_f16, narrow_f16};
const HalfRunFns bf16_baseline{widen_bf16, narrow_bf16};

}  // namespace

const HalfRunFns& half_runs(DType dtype) {
  return dtype == DType::f16 ? for_active_isa(half_runs_f16_avx512, half_runs_f16_avx2, f16_baseline)
                             : for_active_isa(half_runs_bf16_avx512, half_runs_bf16_avx2, bf16_baseline);
}

}  // namespace fastconv::cpu
