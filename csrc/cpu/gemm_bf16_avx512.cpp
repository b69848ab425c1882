// The bfloat16 GEMM micro-kernel (gemm_bf16_kernels.inc) on the real AVX512-BF16 dot product,
// vdpbf16ps: 16 float32 lanes, each += a.bf16[2j+1] * b.bf16[2j+1] + a.bf16[2j] * b.bf16[2j]. Chosen
// at run time where the CPU has it (Isa::avx512_bf16).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "cpu/gemm_bf16.h"

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

}  // namespace

const GemmBf16Kernels gemm_bf16_kernels_avx512bf16{kBf16MR, kBf16NR, 2, Bf16Layout::pairs,
                                                     bf16_macro_kernel<DotAvx512Bf16>, bf16_pack_b_offsets<kBf16NR, 2>};

}  // namespace fastconv::cpu

#pragma GCC pop_options
