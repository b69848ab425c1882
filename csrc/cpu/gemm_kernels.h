// The CPU GEMM engine's entry points (torch-free): C = alpha * op(A) * op(B) + beta * C on strided
// operands. Transposes are strides: element (i, k) of op(A) is a[i * rs_a + k * cs_a], and likewise
// for op(B) and C, so callers express op() by swapping strides.
//
// Structure, in CUTLASS's vocabulary (and BLIS's loop order):
//   block tile    NC columns of B and KC of K are packed into NR-wide panels (L3/L2 resident), then
//                 MC rows of A into MR-tall panels (L2 resident), per thread;
//   main loop     the micro-kernel runs over KC: per step one NR-wide row of the B panel and MR
//                 broadcasts of A feed MR x NR accumulators held in registers (the warp/register tile);
//   epilogue      C = alpha * acc + beta * C, where later fused ops (bias, activation) will go.
// One templated source (gemm_kernels.inc) compiled for AVX-512, AVX2 and the baseline ISA.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "cpu/isa.h"

namespace fastconv::cpu {

template <typename T>
struct GemmArgs {
  int64_t m, n, k;
  T alpha, beta;
  const T* a;
  int64_t rs_a, cs_a;
  const T* b;
  int64_t rs_b, cs_b;
  T* c;                     // beta == 0: C is not read (it may hold garbage or NaN); alpha == 0 or
                            // k == 0: A and B are not read
  int64_t rs_c, cs_c;
  // When set, op(A) already packed by gemm_pack_a (a, rs_a and cs_a are then not read): a constant
  // operand used many times, such as Winograd's transformed filters, is packed once.
  const T* a_packed = nullptr;
  // When set, op(B) already in the engine's panel layout (b, rs_b and cs_b are then not read): K blocks
  // of k_block rows one after another, the block at row k0 (kc rows deep) holding all ceil(n / nr)
  // panels, panel q at q * nr * kc and its row r at r * nr, so element (k, j) sits at
  //   k0 * n_pad + (j / nr) * nr * kc + (k - k0) * nr + j % nr,   n_pad = ceil(n / nr) * nr
  // (lanes past n only feed discarded results). A producer that writes B anyway, such as im2col
  // (gemm_pack_b_offsets), writes it packed and saves a pass. 64-byte aligned.
  const T* b_packed = nullptr;
  // K block of the loop nest (0: the engine's, gemm_blocking_rule's KC). Each block's products are summed in
  // registers and then added to C, so a smaller block also shortens the chains of float additions:
  // Winograd's GEMMs use 64, as their rounding errors are amplified by the output transform.
  int64_t k_block = 0;
};

// C = op(A) op(B) (+ C when beta is 1): the arguments of a plain GEMM with unit column stride in C.
template <typename T>
GemmArgs<T> gemm_args(int64_t m, int64_t n, int64_t k, const T* a, int64_t rs_a, int64_t cs_a, const T* b,
                      int64_t rs_b, int64_t cs_b, T* c, int64_t rs_c, T beta) {
  GemmArgs<T> g;
  g.m = m; g.n = n; g.k = k;
  g.alpha = T(1); g.beta = beta;
  g.a = a; g.rs_a = rs_a; g.cs_a = cs_a;
  g.b = b; g.rs_b = rs_b; g.cs_b = cs_b;
  g.c = c; g.rs_c = rs_c; g.cs_c = 1;
  return g;
}

// An A that is never stored (an implicit im2col): row i is `segs` runs of `len` values, run s starting at
// rows[i] + s * stride, or at rows[i] + seg_off[s] where seg_off is given. A convolution's kernel rows in
// a zero-padded channels-last input are such runs (segs = kh, len = kw * C, stride = dh * the padded
// row's values), its output positions the rows; in planes split by stride phase, a tap's values at a
// block of output rows are (conv2d_phases.cpp: grad_weight by phases), the taps the rows.
template <typename T>
struct GatheredRows {
  const T* const* rows;
  int64_t m, segs, len, stride;
  const int64_t* seg_off = nullptr;
};

// The blocked loop nest above runs in gemm.cpp, parallel over MC blocks of rows with at::parallel_for.
template <typename T>
struct GemmKernels {
  int mr, nr;               // the micro-tile
  // pack a KC x NC block of op(B) (rows k0.., cols j0..) into NR-wide panels, zero-padded; a row-major B
  // row by row across the panels (the reads along its rows: SGEMM 1024^3 on Zen 3, packing B 4.8% of
  // the time -> 2.1%, panel by panel having read 256 rows 4 KiB apart for each)
  void (*pack_b)(const GemmArgs<T>& g, int64_t k0, int64_t kc, int64_t j0, int64_t nc, T* dst);
  // pack an MC x KC block of op(A) into MR-tall panels, zero-padded
  void (*pack_a)(const GemmArgs<T>& g, int64_t i0, int64_t mc, int64_t k0, int64_t kc, T* dst);
  // C[i0:i0+mc, j0:j0+nc] (+)= alpha * Apacked * Bpacked; first = true applies beta, else accumulates
  void (*macro)(const GemmArgs<T>& g, const T* ap, const T* bp, int64_t i0, int64_t mc, int64_t j0, int64_t nc,
                int64_t kc, bool first);
  // runs `iters` steps of independent vector FMAs and returns the flops done (the roofline probe)
  double (*fma_peak)(int64_t iters);
  // pack a K block of an op(B) given by offset tables (see gemm_pack_b_offsets)
  void (*pack_b_offsets)(const T* base, const int64_t* row_off, int64_t rows, const int64_t* col_off, int64_t cols,
                         T* dst);
  // C[i0:i0+mc, :] (+)= alpha * A[i0:i0+mc, k0:k0+kc] * Bpacked, A read in place (cs_a == 1), Bpacked one
  // K block of all of B's panels: the loop nest without packing A, for GEMMs of few columns
  void (*macro_rows)(const GemmArgs<T>& g, const T* bp, int64_t i0, int64_t mc, int64_t k0, int64_t kc, bool first);
  // the most columns for which macro_rows beats packing A (see gemm.cpp: reads_a_in_place)
  int64_t in_place_columns;
  // C (a.m x n, rows rs_c apart, unit column stride) = A . Bp (+ beta * C), A gathered (see gemm_gathered)
  void (*macro_gathered)(const GatheredRows<T>& a, const T* bp, int64_t n, T* c, int64_t rs_c, T beta);
  // dst[j * ld_dst + i] = src[i * ld_src + j] for i < rows, j < cols (see gemm_transpose)
  void (*transpose)(const T* src, int64_t rows, int64_t cols, int64_t ld_src, T* dst, int64_t ld_dst);
};

// The engine: C = alpha * op(A) * op(B) + beta * C for the strided operands in `g`, with the active
// ISA's kernels, parallel over blocks of rows (at::parallel_for). Instantiated for float and double.
// Other CPU ops (convolution, linear) call it directly.
template <typename T>
void gemm(const GemmArgs<T>& g);

// Mixed precision: A and B in float16 or bfloat16 (`in`, both alike), the products accumulated in
// float32, C in float32, float16 or bfloat16 (`out`). Packing converts A and B into the float32
// micro-kernel's panels (a half value is exact in float32, so every product is exact and only the
// sums round, in float32); the loop nest is gemm's own. A half-precision C is accumulated in a float32
// copy and written back once at the end, rounded to nearest even. alpha and beta as in GemmArgs
// (beta == 0: C is not read).
struct MixedGemmArgs {
  int64_t m, n, k;
  float alpha, beta;
  DType in;
  const void* a;
  int64_t rs_a, cs_a;
  const void* b;
  int64_t rs_b, cs_b;
  DType out;
  void* c;
  int64_t rs_c, cs_c;
};
void gemm_mixed(const MixedGemmArgs& g);

// Elements of the packed form of an m x k op(A), and the packing itself (reads g.m, g.k, g.a, g.rs_a,
// g.cs_a, g.k_block): the layout the engine's row and K blocks index into, zero-padded to whole
// micro-panels; the GEMMs that read it must use the same k_block.
// The layout depends on the active ISA (its micro-tile height MR: 8 for AVX-512, 6 otherwise): a packed
// form kept across calls must be rebuilt when the ISA changes (the weight cache keys on it).
int64_t gemm_packed_a_elems(int64_t m, int64_t k);
template <typename T>
void gemm_pack_a(const GemmArgs<T>& g, T* dst);

// Elements of the packed form of a k x n op(B), and the packing itself (reads g.n, g.k, g.b, g.rs_b,
// g.cs_b, g.k_block) into the b_packed layout above: a constant operand used by many GEMMs of the
// same k_block, such as an RNN layer's W_hh^T across its time steps, is packed once. Like packed A, the
// layout depends on the active ISA (its NR). `dst` must be 64-byte aligned.
template <typename T>
int64_t gemm_packed_b_elems(int64_t k, int64_t n);
template <typename T>
void gemm_pack_b(const GemmArgs<T>& g, T* dst);

// Packs one K block (rows <= the GEMM's k_block) of an op(B) that is given by offset tables, element
// (k, j) = base[row_off[k] + col_off[j]], into the b_packed layout of a `cols`-column, `rows`-deep B, with the active ISA's kernel: im2col's column matrix read straight from a (padded) image. Runs
// of column offsets one or two apart are copied a vector at a time, by unaligned loads that may reach
// up to kGemmOffsetsSlackBytes before the smallest and after the largest offset used: that memory
// must be readable. `dst` must be 64-byte aligned.
constexpr int64_t kGemmOffsetsSlackBytes = 128;

// dst[j * ld_dst + i] = src[i * ld_src + j] for i < rows, j < cols, with the active ISA's 8 x L block
// transposes (the packing's permutes): NCHW planes to channels-last and back. One thread.
template <typename T>
void gemm_transpose(const T* src, int64_t rows, int64_t cols, int64_t ld_src, T* dst, int64_t ld_dst);
template <typename T>
void gemm_pack_b_offsets(const T* base, const int64_t* row_off, int64_t rows, const int64_t* col_off, int64_t cols,
                         T* dst);

// The cache blocking of the loop nest (the three levels of Goto and van de Geijn's GEMM), derived from
// the CPU's caches (cpu/isa.h: cache_sizes) for a micro-tile of mr x nr elements of `elem` bytes:
//   KC  one KC x NR micro-panel of B, reused by every micro-tile of an MC block while A's micro-panels
//       stream past it, stays in the L1d: KC = L1d / (NR elem), a multiple of 16 within
//       [64, kGemmMaxKBlock]. The cap is accuracy's, not speed's: KC is the length of the float32
//       summation chain each micro-tile keeps in registers before adding it to C, and at 512 the
//       error of a K = 511 product measured 4x torch's float32 matmul (3x is what the tests allow;
//       at 256 it is within 2x) -- though 512 ran 3-8% faster on AMD Zen 4;
//   MC  an MC x KC block of A takes a quarter of the L2 (the rest holds B's micro-panels, C's rows
//       and the next block's packing): MC = L2 / 4 / (KC elem), a multiple of mr;
//   NC  a KC x NC block of B takes a tenth of the L3 (shared with other cores and C): a multiple of
//       NR within [NR, 8192].
// AMD Zen 4 (32 KiB L1d, 1 MiB L2, 32 MiB L3), AVX-512 float32 (8 x 32): 256, 256, 3264 (the engine's
// hand-tuned constants had been 256, 240, 3072); Intel Sapphire Rapids (48 KiB, 2 MiB, 105 MiB): 256,
// 512, 8192 -- an A block of 512 KiB in its 2 MiB L2 where the constants kept 240 KiB.
constexpr int64_t kGemmMaxKBlock = 256;
struct GemmBlocking {
  int64_t kc, mc, nc;
};
GemmBlocking gemm_blocking_rule(const CacheSizes& caches, int64_t mr, int64_t nr, int64_t elem);
// The rule for this CPU's caches and the active ISA's micro-tile of T (float, double).
template <typename T>
GemmBlocking gemm_blocking();

// The active ISA's micro-tile (mr x nr) and the engine's default K block, for callers that lay out
// packed operands themselves.
struct GemmTile {
  int64_t mr, nr, k_block;
  int64_t k_align = 1;   // packed panels' depth: a multiple of this (bfloat16 kernels: 2 or 32)
};
template <typename T>
GemmTile gemm_tile();

// One K block on the calling thread: C (m x n, rows rs_c apart, unit column stride) = Ap . Bp, or += with
// `accumulate`, where Ap holds the m rows' micro-panels (mr tall, kc deep, one after another) and Bp
// the n columns' (nr wide, kc deep), as a K block of a_packed and b_packed lays them out. No
// blocking, packing or threads: for a caller that runs many small products in its own parallel
// region from panels it wrote itself (Winograd's fused pass). Summed as the engine sums a K block.
template <typename T>
void gemm_block(const T* ap, const T* bp, int64_t m, int64_t n, int64_t kc, T* c, int64_t rs_c, bool accumulate);

// On the calling thread: C (a.m x n, rows rs_c apart, unit column stride) = A . Bp (+ beta * C), A the
// gathered rows, a.segs * a.len <= gemm_tile<T>().k_block, and Bp that one K block of b_packed's
// panels. A is read where it lies, never copied; the FMAs and their order are those of the same A
// stored and multiplied by gemm, so the results are bit for bit the lowered product's.
template <typename T>
void gemm_gathered(const GatheredRows<T>& a, const T* bp, int64_t n, T* c, int64_t rs_c, T beta);

// GFLOP/s of the active ISA's FMA loop on every thread of at::parallel_for, for about `seconds`
// (float32 when single, else float64): the measured peak that GEMM throughput is set against.
double measured_fma_peak_gflops(bool single, double seconds);

extern const GemmKernels<float> gemm_kernels_f32_avx512, gemm_kernels_f32_avx2;
extern const GemmKernels<float> gemm_kernels_f32_avx512_emulated;   // isa.h: avx512_emulated
extern const GemmKernels<double> gemm_kernels_f64_avx512, gemm_kernels_f64_avx2;
extern const GemmKernels<double> gemm_kernels_f64_avx512_emulated;   // isa.h: avx512_emulated

}  // namespace fastconv::cpu
