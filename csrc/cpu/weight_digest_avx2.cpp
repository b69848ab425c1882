// weight_digest.h's NH kernel for AVX2 (8 words per vector).
#include <immintrin.h>

#include <cstdint>

#include "cpu/weight_digest.h"

#pragma GCC push_options
#pragma GCC target("avx2")

namespace fastconv::cpu {
namespace {

#define DIGEST_WORDS 8
#define DIGEST_VEC __m256i
#define DIGEST_ZERO() _mm256_setzero_si256()
#define DIGEST_LOAD(p) _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
#define DIGEST_STORE(p, v) _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (v))
#define DIGEST_ADD32(a, b) _mm256_add_epi32((a), (b))
#define DIGEST_ADD64(a, b) _mm256_add_epi64((a), (b))
#define DIGEST_MULPAIRS(t) _mm256_mul_epu32((t), _mm256_srli_epi64((t), 32))
#include "cpu/weight_digest_simd.inc"

}  // namespace

const DigestFns digest_avx2{nh_chunks};

}  // namespace fastconv::cpu

#pragma GCC pop_options
