// AVX-512 variant of the float32 max-pool kernels: 16 lanes. Compiled for AVX-512 with a target
// pragma (never -march), and only called when the CPU reports AVX-512 F/BW/VL/DQ (see isa.h).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/pool2d.h"
#include "cpu/max_pool2d_kernels.h"

// Everything included above keeps the default target; only the code below uses AVX-512.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")
// GCC 12's own cast intrinsics (_mm512_castsi512_si256 and friends) trip -Wuninitialized.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace fastconv::cpu {
namespace {

struct Avx512 {
  static constexpr int L = 16;
  static constexpr int kMaxUnroll = 8;   // 32 zmm registers
  using F = __m512;
  using I = __m512i;
  using M = __mmask16;

  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static F load_stride2(const float* p) {
    // Two loads cover p[0..31], then keep the even elements of the 32.
    const __m512 lo = _mm512_loadu_ps(p);
    const __m512 hi = _mm512_loadu_ps(p + 16);
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_permutex2var_ps(lo, even, hi);
  }
  static F load_first(const float* p, int n) { return _mm512_maskz_loadu_ps(static_cast<M>((1u << n) - 1), p); }
  static F gather(const float* p, I offsets) { return _mm512_i32gather_ps(offsets, p, 4); }
  static M takes(F v, F best) {
    return _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  }
  static F select(M m, F a, F b) { return _mm512_mask_blend_ps(m, a, b); }
  static I select_i(M m, I a, I b) { return _mm512_mask_blend_epi32(m, a, b); }
  static F splat_f(float x) { return _mm512_set1_ps(x); }
  static I splat_i(int32_t x) { return _mm512_set1_epi32(x); }
  static I add_i(I a, I b) { return _mm512_add_epi32(a, b); }
  static I ramp(int32_t s) {
    return _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                              _mm512_set1_epi32(s));
  }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static I load_i32(const int32_t* p) { return _mm512_loadu_si512(p); }
  static void store_i32(int32_t* p, I i) { _mm512_storeu_si512(p, i); }
  static void stream(float* p, F v) { _mm512_stream_ps(p, v); }
  static void stream_indices(int64_t* p, I i) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(p), _mm512_cvtepi32_epi64(_mm512_castsi512_si256(i)));
    _mm512_stream_si512(reinterpret_cast<__m512i*>(p + 8), _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(i, 1)));
  }
  static void fence() { _mm_sfence(); }
  static void store_indices(int64_t* p, I i) {
    _mm512_storeu_si512(p, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(i)));
    _mm512_storeu_si512(p + 8, _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(i, 1)));
  }
};

#include "cpu/max_pool2d_simd.inc"

}  // namespace

void max_pool2d_nchw_f32_avx512(const MaxPool2dProblem& p, int64_t begin, int64_t end) {
  nchw_rows<Avx512>(p, begin, end);
}
void max_pool2d_nhwc_f32_avx512(const MaxPool2dProblem& p, int64_t begin, int64_t end) {
  nhwc_rows<Avx512>(p, begin, end);
}

}  // namespace fastconv::cpu

#pragma GCC pop_options
