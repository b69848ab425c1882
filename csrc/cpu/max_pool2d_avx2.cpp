// AVX2 variant of the float32 max-pool kernels: 8 lanes, the same loop nests as the AVX-512 one
// (max_pool2d_simd.inc). Compiled for AVX2 with a target pragma, called only on CPUs with AVX2.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/pool2d.h"
#include "cpu/max_pool2d_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace fastconv::cpu {
namespace {

struct Avx2 {
  static constexpr int L = 8;
  static constexpr int kMaxUnroll = 4;   // 16 ymm registers
  using F = __m256;
  using I = __m256i;
  using M = __m256;   // AVX2 has no mask registers: a compare yields all-ones lanes

  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static F load_stride2(const float* p) {
    const __m256 lo = _mm256_loadu_ps(p);
    const __m256 hi = _mm256_loadu_ps(p + 8);
    return evens(lo, hi);
  }
  // lo0 lo2 lo4 lo6 hi0 hi2 hi4 hi6: the shuffle gives lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6 and the
  // 64-bit permute puts the pairs in order.
  static F evens(F lo, F hi) {
    const __m256 s = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), _MM_SHUFFLE(3, 1, 2, 0)));
  }
  static F load_first(const float* p, int n) {
    return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), ramp(1)));
  }
  static F gather(const float* p, I offsets) { return _mm256_i32gather_ps(p, offsets, 4); }
  static M takes(F v, F best) {
    return _mm256_or_ps(_mm256_cmp_ps(v, best, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  static F select(M m, F a, F b) { return _mm256_blendv_ps(a, b, m); }
  static I select_i(M m, I a, I b) {
    return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), m));
  }
  static F splat_f(float x) { return _mm256_set1_ps(x); }
  static I splat_i(int32_t x) { return _mm256_set1_epi32(x); }
  static I add_i(I a, I b) { return _mm256_add_epi32(a, b); }
  static I ramp(int32_t s) {
    return _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(s));
  }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static I load_i32(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static void store_i32(int32_t* p, I i) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), i); }
  static void stream(float* p, F v) { _mm256_stream_ps(p, v); }
  static void stream_indices(int64_t* p, I i) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), _mm256_cvtepi32_epi64(_mm256_castsi256_si128(i)));
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p + 4), _mm256_cvtepi32_epi64(_mm256_extracti128_si256(i, 1)));
  }
  static void fence() { _mm_sfence(); }
  static void store_indices(int64_t* p, I i) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm256_cvtepi32_epi64(_mm256_castsi256_si128(i)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + 4), _mm256_cvtepi32_epi64(_mm256_extracti128_si256(i, 1)));
  }
};

#include "cpu/max_pool2d_simd.inc"

}  // namespace

void max_pool2d_nchw_f32_avx2(const MaxPool2dProblem& p, int64_t begin, int64_t end) {
  nchw_rows<Avx2>(p, begin, end);
}
void max_pool2d_nhwc_f32_avx2(const MaxPool2dProblem& p, int64_t begin, int64_t end) {
  nhwc_rows<Avx2>(p, begin, end);
}

}  // namespace fastconv::cpu

#pragma GCC pop_options
