// The bfloat16 path of the GEMM engine (torch-free): operands packed in K pairs, products summed in
// float32 by a dot-product micro-kernel (gemm_bf16_kernels.inc says the layout). Two builds of the
// micro-kernel: the real vdpbf16ps instruction (gemm_bf16_avx512.cpp, Isa::avx512_bf16) and a portable
// emulation of exactly its semantics (gemm.cpp), which the tests run on every machine.
#pragma once

#include <cstdint>

#include "cpu/gemm_kernels.h"

namespace fastconv::cpu {

// How a kernel's A panels are laid out (its B panels are always pair-packed, NR words per K pair):
// pairs: MR words per K pair (gemm_bf16_kernels.inc); amx_tiles: rows of 16 words per 32 K steps
// (gemm_amx_kernels.inc).
enum class Bf16Layout { pairs, amx_tiles };

struct GemmBf16Kernels {
  int mr, nr;    // the micro-tile
  int k_align;   // panels are a multiple of this many K steps deep, zero-padded (2, or 32 for AMX)
  Bf16Layout layout;
  // C[i0:i0+mc, j0:j0+nc] (+)= alpha * A B over one K block of kc steps from pair-packed panels (A
  // panels MR tall and B panels NR wide, 2 * ceil(kc / 2) steps deep); first applies beta.
  void (*macro)(const GemmArgs<float>& g, const uint16_t* ap, const uint16_t* bp, int64_t i0, int64_t mc, int64_t j0,
                int64_t nc, int64_t kc, bool first);
  // pack a K block of a B given by offset tables (see gemm_bf16_pack_b_offsets)
  void (*pack_b_offsets)(const uint16_t* base, const int64_t* row_off, int64_t rows, const int64_t* col_off,
                         int64_t cols, uint16_t* dst);
};

extern const GemmBf16Kernels gemm_bf16_kernels_avx512bf16, gemm_bf16_kernels_amx;

// The micro-kernel a bfloat16 GEMM runs on. auto_ is fastconv::gemm's choice: AMX where the active
// ISA is amx, the real vdpbf16ps where it is avx512_bf16, else float32 (the operands widened in
// packing for the float32 kernels). emulated: the pair-packed path on gemm.cpp's portable vdpbf16ps
// (float32 FMAs, the odd element of a pair first, denormal inputs read as zero, denormal results
// flushed to zero); amx_emulated: the AMX kernel on gemm.cpp's portable tiles (tdpbf16ps as the Intel
// SDM defines it).
enum class Bf16Path { auto_, float32, emulated, avx512_bf16, amx_emulated, amx };

// A bfloat16 GEMM through a chosen path (the tests compare them); a, b point at c10::BFloat16 bits.
// Returns false when the path cannot run on this CPU.
bool gemm_bf16(const MixedGemmArgs& g, Bf16Path path);

// The pair-packed path with operands its caller packs, for conv2d's forward pass: the filters packed
// once (gemm_bf16_pack_a), the columns lowered straight into panels (gemm_bf16_pack_b_offsets). These
// run the active ISA's pair kernel and exist only where it does: gemm_bf16_native().
bool gemm_bf16_native();
// The native kernel's micro-tile (k_align: its panels' depth multiple), and the K block for a product
// that ends in a half-precision result.
GemmTile gemm_bf16_tile();
// Elements of the packed form of an m x k op(A) in K blocks of k_block (a multiple of k_align): block k0
// holds the panels of all rows, m_pad x kcp at k0 * m_pad (kcp: the block's depth rounded up to
// k_align), row i0's panel at i0 * kcp within it. The packing reads a[i * rs_a + k * cs_a] (bfloat16
// bits).
int64_t gemm_bf16_packed_a_elems(int64_t m, int64_t k, int64_t k_block);
void gemm_bf16_pack_a(const uint16_t* a, int64_t rs_a, int64_t cs_a, int64_t m, int64_t k, int64_t k_block,
                      uint16_t* dst);
// One K block (`rows` deep) of a `cols`-column B, element (k, j) = base[row_off[k] + col_off[j]], into
// the pair-packed panels the prepacked GEMM reads: panel q at q * nr * kcp. `dst` 64-byte aligned.
void gemm_bf16_pack_b_offsets(const uint16_t* base, const int64_t* row_off, int64_t rows, const int64_t* col_off,
                              int64_t cols, uint16_t* dst);
// C (float32, g.c) = g.alpha * A B + g.beta * C from prepacked operands (g.a and g.b are not read),
// both packed with K block g.k_block; C as in GemmArgs.
void gemm_bf16_prepacked(const GemmArgs<float>& g, const uint16_t* a_packed, const uint16_t* b_packed);


// The bfloat16 direct convolution's kernels (conv2d_bf16_direct.h). One tap of a tile: its A words at
// rows[r] + a, its B panel at b (both in uint16_t elements).
struct Bf16Tap {
  int64_t a, b;
};

struct Bf16DirectKernels {
  // The tile of MR positions x NR channels over `ntaps` taps plus NR biases, in bfloat16 bits
  // (conv2d_bf16_direct.inc); MR and NR are the pair-packed GEMM kernel's.
  void (*tile)(const uint16_t* const* rows, const Bf16Tap* taps, int ntaps, int64_t pairs, const uint16_t* b,
               const float* bias, uint16_t* out);
  // One image row into pair words: d32[w * ld + c / 2] = (src[c * cs + w], src[(c + 1) * cs + w]) for
  // w < width and even c < channels (the second half zero past an odd count).
  void (*pair_rows)(const uint16_t* src, int64_t cs, int64_t channels, int64_t width, uint32_t* d32, int64_t ld);
};

// The real vdpbf16ps build (AVX-512 pair_rows) and the portable emulation (scalar pair_rows).
extern const Bf16DirectKernels bf16_direct_avx512bf16, bf16_direct_emulated;

}  // namespace fastconv::cpu
