// The bfloat16 GEMM macro-kernel (gemm_amx_kernels.inc) on Intel AMX: tdpbf16ps on 16 x 32 bfloat16
// tiles. Chosen at run time where the CPU has AMX-TILE and AMX-BF16 and Linux has granted the tile
// state (Isa::amx, isa.cpp). GCC's tile intrinsics name the tile register in the instruction's text,
// so each takes a literal tile number: the interface's template arguments are mapped onto them here.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "cpu/gemm_bf16.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,amx-tile,amx-bf16")

namespace fastconv::cpu {
namespace {

// The 64-byte tile configuration that ldtilecfg reads (palette 1).
struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Tile t's instruction, with t a literal (0-7).
#define FASTCONV_TILE_SWITCH(t, INSN)   \
  if constexpr ((t) == 0) { INSN(0); }  \
  else if constexpr ((t) == 1) { INSN(1); } \
  else if constexpr ((t) == 2) { INSN(2); } \
  else if constexpr ((t) == 3) { INSN(3); } \
  else if constexpr ((t) == 4) { INSN(4); } \
  else if constexpr ((t) == 5) { INSN(5); } \
  else if constexpr ((t) == 6) { INSN(6); } \
  else { static_assert((t) == 7); INSN(7); }

struct TilesAmx {
  static void config() {
    TileConfig cfg{};
    cfg.palette_id = 1;
    for (int t = 0; t < 8; ++t) {   // every tile 16 rows x 64 bytes (see gemm_amx_kernels.inc)
      cfg.colsb[t] = 64;
      cfg.rows[t] = 16;
    }
    _tile_loadconfig(&cfg);
  }
  static void release() { _tile_release(); }
  template <int t>
  static void zero() {
#define FASTCONV_ZERO(n) _tile_zero(n)
    FASTCONV_TILE_SWITCH(t, FASTCONV_ZERO)
#undef FASTCONV_ZERO
  }
  template <int t>
  static void load(const void* p, int64_t stride) {
#define FASTCONV_LOAD(n) _tile_loadd(n, p, stride)
    FASTCONV_TILE_SWITCH(t, FASTCONV_LOAD)
#undef FASTCONV_LOAD
  }
  template <int t>
  static void store(void* p, int64_t stride) {
#define FASTCONV_STORE(n) _tile_stored(n, p, stride)
    FASTCONV_TILE_SWITCH(t, FASTCONV_STORE)
#undef FASTCONV_STORE
  }
  // The four products the kernel issues: C tiles 0-3 from A tiles 4-5 and B tiles 6-7.
  template <int c, int a, int b>
  static void dot() {
    if constexpr (c == 0 && a == 4 && b == 6) {
      _tile_dpbf16ps(0, 4, 6);
    } else if constexpr (c == 1 && a == 4 && b == 7) {
      _tile_dpbf16ps(1, 4, 7);
    } else if constexpr (c == 2 && a == 5 && b == 6) {
      _tile_dpbf16ps(2, 5, 6);
    } else {
      static_assert(c == 3 && a == 5 && b == 7);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
};

#undef FASTCONV_TILE_SWITCH

#include "cpu/gemm_bf16_kernels.inc"
#include "cpu/gemm_amx_kernels.inc"

}  // namespace

const GemmBf16Kernels gemm_bf16_kernels_amx{kAmxMR, kAmxNR, kAmxKAlign, Bf16Layout::amx_tiles,
                                            amx_macro_kernel<TilesAmx>, bf16_pack_b_offsets<kAmxNR, kAmxKAlign>};

}  // namespace fastconv::cpu

#pragma GCC pop_options
