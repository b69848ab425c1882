// weight_digest.h's NH kernel for AVX-512 (16 words per vector).
#include <immintrin.h>

#include <cstdint>

#include "cpu/weight_digest.h"

#pragma GCC push_options
#pragma GCC target("avx512f")

namespace fastconv::cpu {
namespace {

#define DIGEST_WORDS 16
#define DIGEST_VEC __m512i
#define DIGEST_ZERO() _mm512_setzero_si512()
#define DIGEST_LOAD(p) _mm512_loadu_si512(static_cast<const void*>(p))
#define DIGEST_STORE(p, v) _mm512_storeu_si512(static_cast<void*>(p), (v))
#define DIGEST_ADD32(a, b) _mm512_add_epi32((a), (b))
#define DIGEST_ADD64(a, b) _mm512_add_epi64((a), (b))
// (the zero-masking forms: GCC 12 warns of the plain ones' undefined pass-through operand)
#define DIGEST_MULPAIRS(t) _mm512_maskz_mul_epu32(0xff, (t), _mm512_maskz_srli_epi64(0xff, (t), 32))
#include "cpu/weight_digest_simd.inc"

}  // namespace

const DigestFns digest_avx512{nh_chunks};

}  // namespace fastconv::cpu

#pragma GCC pop_options
