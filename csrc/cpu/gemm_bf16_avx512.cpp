// The bfloat16 GEMM micro-kernel (gemm_bf16_kernels.inc) on the real AVX512-BF16 dot product,
// vdpbf16ps: 16 float32 lanes, each += a.bf16[2j+1] * b.bf16[2j+1] + a.bf16[2j] * b.bf16[2j]. Chosen
// at run time where the CPU has it (Isa::avx512_bf16).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "cpu/gemm_bf16.h"
#include "cpu/half_runs.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")

namespace fastconv::cpu {
namespace {

struct DotAvx512Bf16 {
  using Acc = __m512;
  using B = __m512bh;
  static Acc zero() { return _mm512_setzero_ps(); }
  static B load_b(const uint16_t* p) { return reinterpret_cast<B>(_mm512_load_si512(p)); }
  static Acc dot(Acc acc, uint32_t a_pair, B b) {
    return _mm512_dpbf16_ps(acc, reinterpret_cast<B>(_mm512_set1_epi32(static_cast<int>(a_pair))), b);
  }
  static void store(float* p, Acc v) { _mm512_store_ps(p, v); }
  static void update(float* c, Acc acc, float alpha, float beta, bool first) {
    const __m512 r = _mm512_mul_ps(acc, _mm512_set1_ps(alpha));
    if (!first) {
      _mm512_storeu_ps(c, _mm512_add_ps(_mm512_loadu_ps(c), r));
    } else if (beta == 0.0f) {
      _mm512_storeu_ps(c, r);
    } else {
      _mm512_storeu_ps(c, _mm512_fmadd_ps(_mm512_loadu_ps(c), _mm512_set1_ps(beta), r));
    }
  }
};

#include "cpu/gemm_bf16_kernels.inc"
#include "cpu/conv2d_bf16_direct.inc"

// GCC 12's AVX-512 headers build some intrinsics on a self-initialised "undefined" vector, which
// -Wmaybe-uninitialized reports once they are inlined here; the values are all defined.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// Pair words of 16 positions from channel rows r0 and r1 (r1 null: the second half zero), the first
// n of them read.
__m512i pair_words16(const uint16_t* r0, const uint16_t* r1, int n) {
  const __mmask16 m = static_cast<__mmask16>(n >= 16 ? 0xFFFF : (1u << n) - 1);
  const __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, r0));
  if (r1 == nullptr) return lo;
  return _mm512_or_si512(lo, _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, r1)), 16));
}

// r[p] holds 16 positions of channel pair p; afterwards r[w] holds 16 channel pairs of position w (a
// 16 x 16 transpose of 32-bit words: 32-, 64-bit unpacks, then two rounds of 128-bit lane shuffles).
void transpose16x16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 16; i += 8) {
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0x88);
      t[i + j + 4] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0xDD);
    }
  }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0xDD);
  }
}

// Bf16DirectKernels::pair_rows in blocks of 16 positions x 16 channel pairs.
void pair_rows_avx512(const uint16_t* src, int64_t cs, int64_t channels, int64_t width, uint32_t* d32, int64_t ld) {
  const int64_t words = (channels + 1) / 2;
  for (int64_t w0 = 0; w0 < width; w0 += 16) {
    const int n = static_cast<int>(std::min<int64_t>(16, width - w0));
    for (int64_t q0 = 0; q0 < words; q0 += 16) {
      __m512i r[16];
      for (int p = 0; p < 16; ++p) {
        const int64_t c = 2 * (q0 + p);
        r[p] = c < channels ? pair_words16(src + c * cs + w0, c + 1 < channels ? src + (c + 1) * cs + w0 : nullptr, n)
                            : _mm512_setzero_si512();
      }
      transpose16x16(r);
      const __mmask16 keep = static_cast<__mmask16>(words - q0 >= 16 ? 0xFFFF : (1u << (words - q0)) - 1);
      for (int w = 0; w < n; ++w) _mm512_mask_storeu_epi32(d32 + (w0 + w) * ld + q0, keep, r[w]);
    }
  }
}

#pragma GCC diagnostic pop

}  // namespace

const GemmBf16Kernels gemm_bf16_kernels_avx512bf16{kBf16MR, kBf16NR, 2, Bf16Layout::pairs,
                                                     bf16_macro_kernel<DotAvx512Bf16>, bf16_pack_b_offsets<kBf16NR, 2>};
const Bf16DirectKernels bf16_direct_avx512bf16{bf16_direct_tile<DotAvx512Bf16>, pair_rows_avx512};

}  // namespace fastconv::cpu

#pragma GCC pop_options
