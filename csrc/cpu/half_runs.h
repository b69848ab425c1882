// Runs of float16 / bfloat16 values widened to float32 and float32 narrowed back, vectorised per ISA:
// how the half-precision paths of element-wise kernels (batch-norm's normalise, max-pooling) reuse
// the float32 vector kernels. Widening is exact; narrowing rounds to nearest even as c10 does
// (bfloat16: a NaN becomes the quiet NaN 0x7FC0; float16: IEEE conversion, by F16C where the CPU has
// it -- the AVX2 level requires it).
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace fastconv::cpu {

struct HalfRunFns {
  void (*widen)(const void* src, float* dst, int64_t n);
  void (*narrow)(const float* src, void* dst, int64_t n);
};

// dtype: f16 or bf16; the variant for the active ISA.
const HalfRunFns& half_runs(DType dtype);

extern const HalfRunFns half_runs_f16_avx512, half_runs_bf16_avx512, half_runs_f16_avx2, half_runs_bf16_avx2;

// The bfloat16 conversions as bit operations the compiler vectorises (c10's rounding, exactly).
inline float bf16_bits_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

inline uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  const uint16_t rounded = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  return (u & 0x7FFFFFFFu) > 0x7F800000u ? uint16_t(0x7FC0) : rounded;
}

}  // namespace fastconv::cpu
