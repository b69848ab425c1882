// half_runs.h's conversions for AVX-512 (16 floats per vector; F16C's 512-bit forms).
#include <immintrin.h>

#include <cstdint>

#include "cpu/half_runs.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,f16c")
// GCC 12's _mm512_cvtph_ps starts from _mm512_undefined_ps(), which -Wmaybe-uninitialized reports
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace fastconv::cpu {
namespace {

#define HALF_RUNS_WIDTH 16
#define HALF_RUNS_VEC __m512
#define HALF_RUNS_WIDEN(p) _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))
#define HALF_RUNS_NARROW(p, v) \
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph((v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))
#include "cpu/half_runs_simd.inc"

}  // namespace

const HalfRunFns half_runs_f16_avx512{widen_f16, narrow_f16};
const HalfRunFns half_runs_bf16_avx512{widen_bf16, narrow_bf16};

}  // namespace fastconv::cpu

#pragma GCC pop_options
