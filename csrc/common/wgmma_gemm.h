// The Hopper tensor-core GEMM's block algorithm (issue 14, sm_90a), written once against an execution
// interface X so that the CUDA kernel (cuda/gemm_wgmma.cu, X = the real TMA / mbarrier / wgmma
// instructions) and a CPU emulation (cpu/cuda_wgmma_emulation.cpp, X = the PTX ISA's semantics of
// those instructions) run the very same stage ring, barrier phases, shared-memory layout, matrix
// descriptors and epilogue. Torch-free: nvcc includes it.
//
// C = alpha * op(A) * op(B) + beta * C as in mma_gemm.h (same parameters, same epilogue), but:
//   - operands are always K-contiguous (the glue copies the others), so both are read by the tensor
//     memory accelerator (TMA) as 2-D boxes of kBK = 64 K elements (128 bytes, the 128-byte swizzle's
//     span) by 128 rows, landing 128-byte swizzled: the 16-byte chunk c of box row r is stored at
//     chunk c ^ (r % 8) of the row, rows 128 bytes apart; elements past the matrix edges are zeros;
//   - one thread (the leader) arms stage s's mbarrier with the stage's byte count and issues its two
//     box copies; every thread waits on the barrier's phase parity before reading the stage;
//   - two warpgroups (4 warps each) per 128 x 128 block tile, each owning 64 rows: per K step of 64
//     four wgmma.mma_async m64n128k16, A and B read straight from shared memory through matrix
//     descriptors (K-major, 128-byte swizzle, 8-row groups 1024 bytes apart), the 64 float32
//     accumulators of each thread in registers;
//   - a stage is refilled only after both warpgroups have waited for their wgmmas on it: after issuing
//     step kt, each waits for step kt - 1's group (wait_group 1), a barrier, then the leader refills
//     step kt - 1's stage while step kt's wgmmas run; kStages - 2 to kStages - 1 stages of copies stay
//     in flight.
// Requirements (the glue ensures them): operand bases 16-byte aligned, ld a multiple of 8 elements
// (TMA's global strides are multiples of 16 bytes), k >= 1 (the first wgmma defines the accumulators).
#pragma once

#include <cstdint>

#include "common/macros.h"
#include "common/mma_gemm.h"

namespace fastconv {

struct WgmmaTiles {
  static constexpr int kBM = 128, kBN = 128, kBK = 64, kStages = 4;
  static constexpr int kWarpgroups = kBM / 64, kThreads = 128 * kWarpgroups;
  static constexpr int kRowBytes = kBK * 2;                          // 128: a stage row, the swizzle span
  static constexpr int kAtomBytes = 8 * kRowBytes;                   // 1024: the swizzle pattern repeats
  static constexpr int kTileBytesA = kBM * kRowBytes, kTileBytesB = kBN * kRowBytes;
  static constexpr int kStageBytes = kTileBytesA + kTileBytesB;      // also the bytes a stage's copies bring
  static constexpr int kBarrierOffset = kStages * kStageBytes;       // kStages 8-byte mbarriers follow
  static constexpr int kSmemBytes = kBarrierOffset + 8 * kStages;    // from a 1024-byte aligned base
  static constexpr int kNI = kBN / 8;                                // n8 groups of the accumulator
  static constexpr int kAccs = 4 * kNI;                              // float32 accumulators per thread
  static_assert(kRowBytes == 128, "the 128-byte swizzle spans exactly one stage row");
  static_assert(kTileBytesA % kAtomBytes == 0 && 64 * kRowBytes % kAtomBytes == 0,
                "every tile and every warpgroup's 64 rows start on a swizzle atom");
};

// The 128-byte swizzle of TMA's CU_TENSOR_MAP_SWIZZLE_128B and of wgmma's swizzle mode 1, on a shared
// memory byte address (the pattern is anchored at 1024-byte boundaries): the 16-byte chunk index
// (bits 4-6) XOR the 128-byte row index within the atom (bits 7-9).
FC_HD uint32_t wgmma_swizzle128(uint32_t addr) { return addr ^ (((addr >> 7) & 7u) << 4); }

// A wgmma shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format") for a K-major operand
// with the 128-byte swizzle: start address >> 4 in bits 0-13, leading-dimension byte offset >> 4 in
// bits 16-29 (unused by swizzled K-major layouts; 16 bytes here), stride-dimension byte offset >> 4
// in bits 32-45 (1024: the next group of 8 rows), base offset 0 in bits 49-51 (every atom is 1024-byte
// aligned), swizzle mode in bits 62-63 (1: 128 bytes). The K steps of 16 inside a 64-wide stage row
// advance the start address by 32 bytes; the swizzle, applied to whole addresses, follows.
struct WgmmaDesc {
  static constexpr uint32_t kLeadingBytes = 16, kStrideBytes = WgmmaTiles::kAtomBytes, kSwizzle128 = 1;
};
FC_HD uint64_t wgmma_desc(uint32_t smem_addr) {
  return static_cast<uint64_t>((smem_addr & 0x3FFFFu) >> 4) |
         static_cast<uint64_t>(WgmmaDesc::kLeadingBytes >> 4) << 16 |
         static_cast<uint64_t>(WgmmaDesc::kStrideBytes >> 4) << 32 |
         static_cast<uint64_t>(WgmmaDesc::kSwizzle128) << 62;
}

// The element of the 64 x BN accumulator tile that thread t (0..127) of a warpgroup holds in its
// register i (0 .. kAccs - 1), by the PTX ISA's layout of wgmma's D for .m64nNk16: warp t / 32 owns
// rows 16 (t / 32) ..; per n8 group i / 4 the m16n8 fragment layout of mma.sync.
FC_HD void wgmma_c_element(int t, int i, int* row, int* col) {
  const int lane = t % 32;
  mma_c_element(lane, i % 4, row, col);
  *row += (t / 32) * 16;
  *col += (i / 4) * 8;
}

// The whole block tile at (row0, col0). X provides, for this block's threads (the CUDA kernel: this
// thread; the emulation: all of them):
//   Acc, unset(acc)                  a thread's kAccs float32 accumulators, not yet written
//   leader()                         true for the one thread that arms barriers and issues copies
//   smem_addr(byte)                  the shared-memory address of byte `byte` of the stages
//   init_barriers()                  every stage's mbarrier initialised for one arrival, then a barrier
//   expect_tx(stage, bytes)          the leader's arrival on the stage's mbarrier, expecting `bytes`
//   tma(operand, byte, k0, x0, stage)  the box at (k0, x0) of operand 0 (A) or 1 (B) to stage byte
//                                    `byte`, completing on the stage's mbarrier
//   wait(stage, parity)              until the stage's mbarrier completed its phase of that parity
//   fence(); wgmma(acc, desc_a(wg), desc_b, accumulate); commit(); wait_group<N>(); sync()
//                                    (accumulate false: D = A B, the old D not read)
//   threads(f)                       f(warpgroup, thread in warpgroup); acc_at(acc, wg, t, i)
#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename Out, typename X>
FC_HD void wgmma_gemm_block(X& x, const MmaGemmParams& p, int64_t row0, int64_t col0) {
  using T = WgmmaTiles;
  typename X::Acc acc;
  x.unset(acc);   // the first wgmma overwrites the accumulators (scale-d 0): no zeroing instructions,
                  // which would make ptxas serialise the wgmma pipeline
  x.init_barriers();
  const int64_t k_tiles = (p.k + T::kBK - 1) / T::kBK;
  const auto load = [&](int stage, int64_t kt) {
    const int base = stage * T::kStageBytes;
    x.expect_tx(stage, T::kStageBytes);
    x.tma(0, base, kt * T::kBK, row0, stage);
    x.tma(1, base + T::kTileBytesA, kt * T::kBK, col0, stage);
  };
  if (x.leader()) {
    for (int s = 0; s < T::kStages && s < k_tiles; ++s) load(s, s);
  }
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    const int stage = static_cast<int>(kt % T::kStages);
    // the stage's (kt / kStages)-th fill: its barrier completes phase kt / kStages
    x.wait(stage, static_cast<int>((kt / T::kStages) & 1));
    x.fence();
    const int a_base = stage * T::kStageBytes, b_base = a_base + T::kTileBytesA;
    FC_UNROLL
    for (int k16 = 0; k16 < T::kBK / 16; ++k16) {
      x.wgmma(acc, [&](int wg) { return wgmma_desc(x.smem_addr(a_base + wg * 64 * T::kRowBytes + k16 * 32)); },
              wgmma_desc(x.smem_addr(b_base + k16 * 32)), kt > 0 || k16 > 0);
    }
    x.commit();
    // Step kt's wgmmas stay in flight while step kt - 1's stage is released: once this warpgroup's
    // older group is done (wait_group 1) and the barrier says the other's is too, the leader refills
    // that stage. The tensor cores keep working on step kt meanwhile.
    x.template wait_group<1>();
    x.sync();
    const int64_t done = kt - 1;
    if (x.leader() && done >= 0 && done + T::kStages < k_tiles) {
      load(static_cast<int>(done % T::kStages), done + T::kStages);
    }
  }
  x.template wait_group<0>();   // the last step's wgmmas, before the epilogue reads the accumulators
  x.threads([&](int wg, int t) {
    FC_UNROLL
    for (int i = 0; i < T::kAccs; ++i) {
      int r, c;
      wgmma_c_element(t, i, &r, &c);
      const int64_t gr = row0 + wg * 64 + r, gc = col0 + c;
      if (gr < p.m && gc < p.n) mma_store<Out>(p, gr, gc, x.acc_at(acc, wg, t, i));
    }
  });
}

}  // namespace fastconv
