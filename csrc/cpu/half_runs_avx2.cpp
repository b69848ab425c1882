// half_runs.h's conversions for AVX2 + F16C (8 floats per vector).
#include <immintrin.h>

#include <cstdint>

#include "cpu/half_runs.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

namespace fastconv::cpu {
namespace {

#define HALF_RUNS_WIDTH 8
#define HALF_RUNS_VEC __m256
#define HALF_RUNS_WIDEN(p) _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))
#define HALF_RUNS_NARROW(p, v) \
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph((v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))
#include "cpu/half_runs_simd.inc"

}  // namespace

const HalfRunFns half_runs_f16_avx2{widen_f16, narrow_f16};
const HalfRunFns half_runs_bf16_avx2{widen_bf16, narrow_bf16};

}  // namespace fastconv::cpu

#pragma GCC pop_options
