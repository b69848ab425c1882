// The tensor-core GEMM's block algorithm (issue 14), written once against an execution interface X so
// that the CUDA kernel (cuda/gemm_mma.cu, X = the real cp.async / ldmatrix / mma.sync instructions)
// and a CPU emulation (cpu/cuda_mma_emulation.cpp, X = the PTX ISA's semantics of those instructions,
// run for every warp and lane of a block) execute the very same tile loops, stage rotation, shared-
// memory swizzle, fragment addressing and epilogue. Torch-free: nvcc includes it.
//
// C = alpha * op(A) * op(B) + beta * C, A and B float16 or bfloat16, accumulated in float32 by
// mma.sync.m16n8k16, C float32, float16 or bfloat16 (rounded to nearest even once, in the epilogue).
//
// Block tile BM x BN = 128 x 128, K steps of BK = 32 staged through shared memory in a ring of
// kStages buffers filled by cp.async (16-byte chunks, zero-filled past the matrix edges) while the
// tensor cores work on an earlier stage. 8 warps as 2 (M) x 4 (N), each owning a 64 x 32 warp tile:
// per 16-deep K step 4 ldmatrix.x4 of A fragments, 2 of B fragments (two n8 tiles each) and 16 mma.
//
// Operands stay in their global layout: each is "K-contiguous" (element (x, k) at x * ld + k, x along
// M for A and N for B) or "X-contiguous" (at k * ld + x). Its shared tile keeps that layout: rows of
// the contiguous dimension in 16-byte chunks, chunk index XOR-swizzled with the row so that the 8 rows
// one ldmatrix phase reads fall in 8 different 16-byte bank groups; ldmatrix transposes (.trans) the
// X-contiguous tiles into the fragments mma.sync wants.
//
// Requirements (the glue ensures them, copying an operand into a padded buffer where they fail): ld a
// multiple of 8 elements and the base 16-byte aligned, so that every chunk start is 16-byte aligned.
#pragma once

#include <cstdint>

#include "common/convert.h"
#include "common/gemm_batch.h"
#include "common/macros.h"

namespace fastconv {

struct MmaTiles {
  static constexpr int kBM = 128, kBN = 128, kBK = 32, kStages = 3;
  static constexpr int kWarpsM = 2, kWarpsN = 4, kWarps = kWarpsM * kWarpsN, kThreads = 32 * kWarps;
  static constexpr int kWM = kBM / kWarpsM, kWN = kBN / kWarpsN;   // 64 x 32 warp tile
  static constexpr int kMI = kWM / 16, kNI = kWN / 8;               // m16 and n8 tiles per warp
  static constexpr int kTileBytes = kBM * kBK * 2;                   // one operand's stage (= kBN * kBK * 2)
  static constexpr int kStageBytes = 2 * kTileBytes;                 // A then B
  static constexpr int kSmemBytes = kStages * kStageBytes;
  static constexpr int kChunksPerThread = kTileBytes / 16 / kThreads;
  static_assert(kBM * kBK == kBN * kBK, "the A and B stage tiles are alike in size");
  static_assert(kTileBytes % (16 * kThreads) == 0, "every thread copies whole chunks");
};

// One operand in global memory; elements are 2 bytes.
struct MmaOperand {
  const void* p;
  int64_t ld;          // elements between consecutive rows of the contiguous dimension
  bool k_contiguous;   // element (x, k) at p[x * ld + k]; else at p[k * ld + x]
  int64_t extent;      // m for A, n for B
};

struct MmaGemmParams {
  int64_t m, n, k;
  MmaOperand a, b;
  float alpha, beta;   // beta == 0: C is not read
  void* c;             // row-major, ldc elements between rows
  int64_t ldc;
};

// A row of `elems` 2-byte elements rounded up to whole 16-byte chunks: the pitch that keeps every
// row's chunks aligned (and that a TMA descriptor accepts).
FC_HD int64_t mma_pitch(int64_t elems) { return (elems + 7) / 8 * 8; }

// GEMM z of a strided batch (common/gemm_batch.h; no reduction batch): the operands and C moved by
// their batch offsets. Out is C's element type.
template <typename Out>
FC_HD MmaGemmParams mma_batch_entry(MmaGemmParams p, const GemmBatch& batch, int64_t z) {
  p.a.p = static_cast<const uint16_t*>(p.a.p) + gemm_batch_offset(batch, batch.a, z, 0);
  p.b.p = static_cast<const uint16_t*>(p.b.p) + gemm_batch_offset(batch, batch.b, z, 0);
  p.c = static_cast<Out*>(p.c) + gemm_batch_offset(batch, batch.c, z, 0);
  return p;
}

// The stored shape of an operand's stage tile: rows x cols, cols along the contiguous dimension.
FC_HD int mma_tile_cols(bool k_contiguous, int extent_tile) { return k_contiguous ? MmaTiles::kBK : extent_tile; }

// The swizzled chunk: XOR the chunk index with row bits so that the rows r..r+7 read at one logical
// chunk occupy 8 distinct 16-byte bank groups of the 128-byte bank cycle. With chunks_per_row >= 8 a
// row covers the whole cycle and the row's low 3 bits do it; with 4 (64-byte rows) two rows share a
// cycle and the row pair's index does it.
FC_HD int mma_swizzle(int row, int chunk, int chunks_per_row) {
  if (chunks_per_row >= 8) return chunk ^ (row & 7);
  const int rows_per_cycle = 8 / chunks_per_row;
  return chunk ^ ((row / rows_per_cycle) & (chunks_per_row - 1));
}

// Byte offset inside a stage tile of stored element (row, col), col along the contiguous dimension.
FC_HD int mma_smem_offset(int row, int col, int cols) {
  const int cpr = cols / 8;
  return (row * cpr + mma_swizzle(row, col / 8, cpr)) * 16 + (col % 8) * 2;
}

// One cp.async of a stage fill: 16 bytes from global element offset `src` (valid when bytes > 0) to
// byte offset `dst` of the stage tile; bytes < 16 zero-fills the rest (the matrix edges).
struct MmaChunk {
  int dst;
  int64_t src;
  int bytes;
};

// Chunk q (0 <= q < tile bytes / 16) of the stage tile of an operand whose block tile starts at x0
// (row0 for A, col0 for B) and whose K step starts at k0.
FC_HD MmaChunk mma_chunk(const MmaOperand& op, int extent_tile, int64_t k, int64_t x0, int64_t k0, int q) {
  const int cols = mma_tile_cols(op.k_contiguous, extent_tile), cpr = cols / 8;
  const int row = q / cpr, chunk = q % cpr;
  // (x, kk): the chunk's first element; the contiguous dimension runs along the chunk
  const int64_t x = op.k_contiguous ? x0 + row : x0 + chunk * 8;
  const int64_t kk = op.k_contiguous ? k0 + chunk * 8 : k0 + row;
  const int64_t row_valid = op.k_contiguous ? x < op.extent : kk < k;
  const int64_t left = op.k_contiguous ? k - kk : op.extent - x;   // elements left along the chunk
  const int64_t n = row_valid ? (left < 0 ? 0 : left > 8 ? 8 : left) : 0;
  MmaChunk c;
  c.dst = (row * cpr + mma_swizzle(row, chunk, cpr)) * 16;
  c.src = n > 0 ? (op.k_contiguous ? x * op.ld + kk : kk * op.ld + x) : 0;
  c.bytes = static_cast<int>(n) * 2;
  return c;
}

// The shared-memory byte offset lane `lane` hands to ldmatrix.x4 for a fragment whose 16 x 16 (x, k)
// square starts at (x, kk) of the stage tile. The four 8 x 8 matrices are numbered as mma.sync takes
// its registers: for A (x = M) matrix j covers x + 8 (j & 1), k + 8 (j >> 1) -- a0..a3 of the PTX
// fragment; for B (x = N) x + 8 (j >> 1), k + 8 (j & 1) -- b0, b1 of the n8 tile at x, then of x + 8.
// Lanes 8j..8j+7 address the 8 stored rows of matrix j. K-contiguous tiles are read as stored (a
// stored row is one x), X-contiguous ones transposed by ldmatrix.trans (a stored row is one k).
FC_HD int mma_ldmatrix_offset(bool is_a, bool k_contiguous, int extent_tile, int x, int kk, int lane) {
  const int j = lane / 8, r = lane % 8;
  const int dx = is_a ? (j & 1) * 8 : (j >> 1) * 8;
  const int dk = is_a ? (j >> 1) * 8 : (j & 1) * 8;
  const int cols = mma_tile_cols(k_contiguous, extent_tile);
  return k_contiguous ? mma_smem_offset(x + dx + r, kk + dk, cols) : mma_smem_offset(kk + dk + r, x + dx, cols);
}

// The element of the warp's m16 x n8 accumulator tile that lane `lane` holds in its register i
// (0..3), by the PTX ISA's fragment layout of mma.m16n8k16's C/D.
FC_HD void mma_c_element(int lane, int i, int* row, int* col) {
  *row = lane / 4 + (i >> 1) * 8;
  *col = (lane % 4) * 2 + (i & 1);
}

// alpha * acc + beta * C into C (of type Out), rounded once.
template <typename Out>
FC_HD void mma_store(const MmaGemmParams& p, int64_t row, int64_t col, float acc) {
  Out* dst = static_cast<Out*>(p.c) + row * p.ldc + col;
  float v = p.alpha * acc;
  if (p.beta != 0.0f) v += p.beta * ::fastconv::convert<float>(*dst);
  *dst = ::fastconv::convert<Out>(v);
}

// The whole block tile at (row0, col0). X provides, for this block's threads (the CUDA kernel: this
// thread; the emulation: all of them):
//   Frag, Acc                      a lane's 4 x 32-bit fragment registers, 4 float accumulators
//   threads(f)                     f(tid) for the block's threads
//   cp_async(stage_byte, dst, src_ptr, bytes); commit(); wait_pending<N>(); sync()
//   ldmatrix_x4(frag, stage_byte, trans, f)   f(warp, lane) -> the lane's byte offset
//   mma(acc, a, b, b_half)         acc += A(a) * B(b registers 2 b_half, 2 b_half + 1)
//   lanes(f)                       f(warp, lane) for the block's lanes; acc_at(acc, warp, lane, i)
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename Out, typename X>
FC_HD void mma_gemm_block(X& x, const MmaGemmParams& p, int64_t row0, int64_t col0) {
  using T = MmaTiles;
  typename X::Acc acc[T::kMI][T::kNI];
  FC_UNROLL
  for (int mi = 0; mi < T::kMI; ++mi) {
    FC_UNROLL
    for (int ni = 0; ni < T::kNI; ++ni) x.zero(acc[mi][ni]);
  }
  const int64_t k_tiles = (p.k + T::kBK - 1) / T::kBK;
  const auto fill = [&](int stage, int64_t kt) {
    const int base = stage * T::kStageBytes;
    x.threads([&](int tid) {
      FC_UNROLL
      for (int i = 0; i < T::kChunksPerThread; ++i) {
        const int q = tid + i * T::kThreads;
        const MmaChunk ca = mma_chunk(p.a, T::kBM, p.k, row0, kt * T::kBK, q);
        x.cp_async(base + ca.dst, static_cast<const uint16_t*>(p.a.p) + ca.src, ca.bytes);
        const MmaChunk cb = mma_chunk(p.b, T::kBN, p.k, col0, kt * T::kBK, q);
        x.cp_async(base + T::kTileBytes + cb.dst, static_cast<const uint16_t*>(p.b.p) + cb.src, cb.bytes);
      }
    });
  };
  // Prologue: stages 0 .. kStages - 2 in flight, one commit group each (empty past the last K step,
  // so that the wait below always counts kStages - 1 groups).
  for (int s = 0; s < T::kStages - 1; ++s) {
    if (s < k_tiles) fill(s, s);
    x.commit();
  }
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    // K step kt's group has landed once at most kStages - 2 younger ones are pending; the barrier
    // makes it visible to every warp and tells that every warp is done with step kt - 1's stage,
    // which the fill below overwrites.
    x.template wait_pending<T::kStages - 2>();
    x.sync();
    const int64_t next = kt + T::kStages - 1;
    if (next < k_tiles) fill(static_cast<int>(next % T::kStages), next);
    x.commit();
    const int a_base = static_cast<int>(kt % T::kStages) * T::kStageBytes, b_base = a_base + T::kTileBytes;
    FC_UNROLL
    for (int k16 = 0; k16 < T::kBK; k16 += 16) {
      typename X::Frag fa[T::kMI], fb[T::kNI / 2];
      FC_UNROLL
      for (int mi = 0; mi < T::kMI; ++mi) {
        x.ldmatrix_x4(fa[mi], a_base, !p.a.k_contiguous, [&](int warp, int lane) {
          const int xm = (warp / T::kWarpsN) * T::kWM + mi * 16;
          return mma_ldmatrix_offset(true, p.a.k_contiguous, T::kBM, xm, k16, lane);
        });
      }
      FC_UNROLL
      for (int nj = 0; nj < T::kNI / 2; ++nj) {
        x.ldmatrix_x4(fb[nj], b_base, !p.b.k_contiguous, [&](int warp, int lane) {
          const int xn = (warp % T::kWarpsN) * T::kWN + nj * 16;
          return mma_ldmatrix_offset(false, p.b.k_contiguous, T::kBN, xn, k16, lane);
        });
      }
      FC_UNROLL
      for (int mi = 0; mi < T::kMI; ++mi) {
        FC_UNROLL
        for (int ni = 0; ni < T::kNI; ++ni) x.mma(acc[mi][ni], fa[mi], fb[ni / 2], ni % 2);
      }
    }
  }
  x.template wait_pending<0>();   // nothing left in flight when the block ends
  // Epilogue: each lane's accumulators at the PTX C fragment's positions, edges skipped.
  x.lanes([&](int warp, int lane) {
    const int64_t wr = row0 + (warp / T::kWarpsN) * T::kWM, wc = col0 + (warp % T::kWarpsN) * T::kWN;
    FC_UNROLL
    for (int mi = 0; mi < T::kMI; ++mi) {
      FC_UNROLL
      for (int ni = 0; ni < T::kNI; ++ni) {
        FC_UNROLL
        for (int i = 0; i < 4; ++i) {
          int r, c;
          mma_c_element(lane, i, &r, &c);
          const int64_t gr = wr + mi * 16 + r, gc = wc + ni * 8 + c;
          if (gr < p.m && gc < p.n) mma_store<Out>(p, gr, gc, x.acc_at(acc[mi][ni], warp, lane, i));
        }
      }
    }
  });
}

}  // namespace fastconv
