// CPU glue and driver of the GEMM engine (fastconv::gemm): the blocked loop nest over the packing
// routines and macro-kernel of gemm_kernels.inc, parallel with at::parallel_for over shares of C
// (loop_nest) or over blocks of rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <memory>

#include "common/gemm_args.h"
#include "cpu/gemm_bf16.h"
#include "cpu/gemm_kernels.h"
#include "cpu/half_runs.h"
#include "cpu/isa.h"
#include "cpu/memory.h"

namespace fastconv::cpu {
namespace {

// The baseline-ISA build (16-byte vectors): the portable fallback.
constexpr int kVecBytes = 16;
#include "cpu/gemm_kernels.inc"

constexpr const char* kOp = "gemm";

template <typename T>
const GemmKernels<T>& kernels_for() {
  static const GemmKernels<T> baseline = make_gemm_kernels<T>();
  if constexpr (std::is_same_v<T, float>) {
    return for_active_isa(gemm_kernels_f32_avx512, gemm_kernels_f32_avx512_emulated,
                          gemm_kernels_f32_avx2, baseline);
  } else {
    return for_active_isa(gemm_kernels_f64_avx512, gemm_kernels_f64_avx512_emulated,
                          gemm_kernels_f64_avx2, baseline);
  }
}

}  // namespace

GemmBlocking gemm_blocking_rule(const CacheSizes& caches, int64_t mr, int64_t nr, int64_t elem) {
  const auto round_down = [](int64_t v, int64_t step) { return std::max<int64_t>(step, v / step * step); };
  const int64_t kc = std::clamp<int64_t>(round_down(caches.l1d / (nr * elem), 16), 64, kGemmMaxKBlock);
  const int64_t mc = round_down(caches.l2 / 4 / (kc * elem), mr);
  const int64_t nc = std::clamp<int64_t>(round_down(caches.l3 / 10 / (kc * elem), nr), nr, 8192 / nr * nr);
  return GemmBlocking{kc, mc, nc};
}

template <typename T>
GemmBlocking gemm_blocking() {
  const auto& kern = kernels_for<T>();
  return gemm_blocking_rule(cache_sizes(), kern.mr, kern.nr, sizeof(T));
}

template GemmBlocking gemm_blocking<float>();
template GemmBlocking gemm_blocking<double>();

namespace {

template <typename T>
int64_t k_block_of(const GemmArgs<T>& g) {   // the K block: the caller's, or the cache-derived one
  return g.k_block > 0 ? g.k_block : gemm_blocking<T>().kc;
}

}  // namespace

namespace {

// C = beta * C for a GEMM with no product to add (k == 0 or alpha == 0: A and B are not read).
template <typename T>
void scale_c(const GemmArgs<T>& g) {
  for (int64_t i = 0; i < g.m; ++i) {
    for (int64_t j = 0; j < g.n; ++j) {
      T& c = g.c[i * g.rs_c + j * g.cs_c];
      c = g.beta == T(0) ? T(0) : g.beta * c;
    }
  }
}

// The blocked loop nest over rows [i_lo, i_hi) and columns [j_lo, j_hi) of C, its row blocks shared out
// to `threads` threads (1: the calling thread does all). TC is C's (and the scalars') type, TP the
// packed panels' (TC itself, or bfloat16 bits for the pair-packed path). pack_a(i0, mc, k0, kc, dst)
// and pack_b(k0, kc, j0, nc, dst) fill the micro-kernel's MR-tall and NR-wide panels from whatever the
// operands are stored as, each panel kcp = kc rounded up to k_align steps deep; macro(ap, bp, i0, mc,
// j0, nc, kc, first) multiplies them into g.c. Prepacked operands (a_packed, b_packed: null where
// packing is wanted) are in the panel layouts GemmArgs describes, each K block's panels kcp deep.
template <typename TC, typename TP, class Macro, class PackA, class PackB>
void nest_range(const GemmArgs<TC>& g, int64_t i_lo, int64_t i_hi, int64_t j_lo, int64_t j_hi, int64_t threads,
                int64_t mr, int64_t nr, int64_t k_align, const TP* a_packed, const TP* b_packed, const Macro& macro,
                const PackA& pack_a, const PackB& pack_b) {
  // MC and NC: the float32 (float64) rule's, also where the panels are bfloat16 pairs
  const GemmBlocking blk = gemm_blocking<TC>();
  const int64_t kMC = blk.mc, kNC = blk.nc;
  // Row blocks of at most kMC rows, each a multiple of the micro-tile height, at least two per thread
  // and as many on every thread (at::parallel_for hands each thread an equal run of blocks, so 9 blocks
  // on 2 threads would leave one idle a ninth of the time). On one thread, taller row blocks reuse each
  // packed B panel across more micro-tiles.
  // The blocks share out the micro-panels as evenly as whole panels allow (block b: panels
  // [b P / blocks, (b + 1) P / blocks)): rounding one block height up to whole panels left the last
  // block short and the threads unequal (SGEMM 1024^3 on 2 threads: 10 blocks of 108 rows but the last
  // of 52, 540 rows against 484, the second thread spinning ~9% of the time at each K block's end).
  const int64_t m = i_hi - i_lo, n = j_hi - j_lo;
  const int64_t per_thread = std::max<int64_t>(2, (m + threads * kMC - 1) / (threads * kMC));
  const int64_t m_panels = (m + mr - 1) / mr, blocks = std::max<int64_t>(1, std::min(threads * per_thread, m_panels));
  const auto block_row = [&](int64_t b) { return std::min(i_hi, i_lo + b * m_panels / blocks * mr); };
  const int64_t mc = (m_panels + blocks - 1) / blocks * mr;   // the tallest block
  const int64_t ncap = std::min<int64_t>(kNC, (n + nr - 1) / nr * nr);
  const int64_t m_pad = (g.m + mr - 1) / mr * mr;   // rows of a prepacked A
  const int64_t kKC = k_block_of(g);
  const int64_t n_pad = (g.n + nr - 1) / nr * nr;   // columns of a prepacked B
  const auto padded = [&](int64_t kc) { return (kc + k_align - 1) / k_align * k_align; };
  // 64-byte aligned, as the micro-kernel's aligned loads of the B panel need (so must b_packed be).
  TP* b_scratch = b_packed != nullptr ? nullptr : scratch<TP>(Scratch::gemm_b, padded(std::min<int64_t>(kKC, g.k)) * ncap);
  const TP* bp = b_scratch;
  for (int64_t j0 = j_lo; j0 < j_hi; j0 += kNC) {
    const int64_t nc = std::min(kNC, j_hi - j0);
    for (int64_t k0 = 0; k0 < g.k; k0 += kKC) {
      const int64_t kc = std::min(kKC, g.k - k0), kcp = padded(kc);
      const bool first = k0 == 0;   // the first K block applies beta; later ones accumulate
      const auto pack_panels = [&](int64_t p0, int64_t p1) {
        pack_b(k0, kc, j0 + p0 * nr, std::min(p1 * nr, nc) - p0 * nr, b_scratch + p0 * nr * kcp);
      };
      const auto run_blocks = [&](int64_t b0, int64_t b1) {
        TP* ap = a_packed != nullptr ? nullptr : scratch<TP>(Scratch::gemm_a, mc * kcp);
        for (int64_t blk = b0; blk < b1; ++blk) {
          const int64_t i0 = block_row(blk), m_here = block_row(blk + 1) - i0;
          if (a_packed != nullptr) {   // K block k0 of all rows, then row i0's panel within it
            macro(a_packed + k0 * m_pad + i0 * kcp, bp, i0, m_here, j0, nc, kc, first);
          } else {
            pack_a(i0, m_here, k0, kc, ap);
            macro(ap, bp, i0, m_here, j0, nc, kc, first);
          }
        }
      };
      if (b_packed != nullptr) {   // K block k0 of all panels, then column j0's panel within it
        bp = b_packed + k0 * n_pad + j0 * kcp;
      } else if (threads > 1) {
        at::parallel_for(0, (nc + nr - 1) / nr, 1, pack_panels);
      } else {
        pack_panels(0, (nc + nr - 1) / nr);
      }
      threads > 1 ? at::parallel_for(0, blocks, 1, run_blocks) : run_blocks(0, blocks);
    }
  }
}

// The whole product. Inside a parallel region (a caller already splits the work, as conv2d does over
// images) on the calling thread. Otherwise, where neither operand is prepacked, each thread runs the
// nest alone on its share of C: the columns where m <= n (every thread packs all of A, the smaller
// operand, and its own B panels), else the rows (all of B, its own A blocks), in whole micro-panels, at
// least four a thread. Sharing the row blocks instead, with B's K block packed by all threads in turn,
// costs two forks and joins per K block and sends each thread's packed B to the other's core. AMD Zen
// 3, 2 threads, each way against torch interleaved in one process (three runs): SGEMM 1024^3 0.95-0.98x
// -> 0.97-1.00x, 2048^3 0.94-1.01x -> 0.98-1.00x, linear 256 x 512 -> 1000 0.98-1.00x -> 1.02-1.16x,
// 1024 x 256 -> 4096 1.10-1.12x -> 1.11-1.17x; tall ones (4096 x 512 -> 256, 2048 x 1024 -> 384), split
// by rows, even (by columns they had lost up to 11%). Each C element's sum is the same in every case
// (the same K blocks in the same order), so the result does not depend on the split or the thread count.
template <typename TC, typename TP, class Macro, class PackA, class PackB>
void loop_nest(const GemmArgs<TC>& g, int64_t mr, int64_t nr, int64_t k_align, const TP* a_packed,
               const TP* b_packed, Macro macro, PackA pack_a, PackB pack_b) {
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const auto nest = [&](int64_t i_lo, int64_t i_hi, int64_t j_lo, int64_t j_hi, int64_t t) {
    nest_range<TC, TP>(g, i_lo, i_hi, j_lo, j_hi, t, mr, nr, k_align, a_packed, b_packed, macro, pack_a, pack_b);
  };
  const bool by_columns = g.m <= g.n;
  const int64_t width = by_columns ? nr : mr, extent = by_columns ? g.n : g.m;
  const int64_t panels = (extent + width - 1) / width;
  if (threads == 1 || a_packed != nullptr || b_packed != nullptr || panels < 4 * threads) {
    return nest(0, g.m, 0, g.n, threads);
  }
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t lo = std::min(extent, t * panels / threads * width);
      const int64_t hi = std::min(extent, (t + 1) * panels / threads * width);
      by_columns ? nest(0, g.m, lo, hi, 1) : nest(lo, hi, 0, g.n, 1);
    }
  });
}

}  // namespace

// GEMMs of few columns read a row-major A in place instead of packing it: packing copies all of A, and
// with n <= kern.in_place_columns (128; two panels for AVX-512 float32, gemm_kernels.inc) each element
// of A then feeds only n products, so the copy costs a good part of the arithmetic (the channels-last
// convolutions: M = the batch's pixels, N = the output channels, 16-128 in ResNet-18's first stages
// and MobileNet-v2). The row panel being multiplied stays in the L1 while B's K block (kc x n) streams
// from the L2. FMAs and their order are the packed path's (bit-identical). AMD Zen 3 (AVX2, 16-column
// panels), 2 threads, against torch.mm: two panels -> 128 columns took the stem's lowered GEMM
// 25088x64x147 0.94 -> 1.04x, 4096x64x1024 0.92 -> 1.15x, and in our own time 12544x128x64 -9%,
// 6272x96x288 -13%, 1568x128x576 -3%; at 256 columns 392x256x1152 ran 10-30% slower (with the runs
// below then uneven).
template <typename T>
bool reads_a_in_place(const GemmArgs<T>& g, const GemmKernels<T>& kern) {
  return g.a_packed == nullptr && g.cs_a == 1 && g.n <= kern.in_place_columns && g.m >= 4 * kern.mr;
}

template <typename T>
void gemm_a_in_place(const GemmArgs<T>& g, const GemmKernels<T>& kern) {
  const int64_t kKC = k_block_of(g), n_pad = (g.n + kern.nr - 1) / kern.nr * kern.nr;
  const T* bp = g.b_packed;
  if (bp == nullptr) {   // all of B (few columns), packed once
    T* dst = scratch<T>(Scratch::gemm_b, gemm_packed_b_elems<T>(g.k, g.n));
    gemm_pack_b(g, dst);
    bp = dst;
  }
  // Rows in runs of at most kRun micro-panels, each run through every K block while its C rows stay in
  // L1; the runs as many as make whole rounds for the threads (66 panels as 5 runs of 16 had left one
  // thread 3 runs to the other's 2), their panels shared out evenly.
  constexpr int64_t kRun = 16;
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const int64_t panels = (g.m + kern.mr - 1) / kern.mr;
  const int64_t runs = std::min(panels, ((panels + kRun - 1) / kRun + threads - 1) / threads * threads);
  const auto run_start = [&](int64_t r) { return std::min(g.m, r * panels / runs * kern.mr); };
  const auto run_rows = [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t i0 = run_start(r), mc = run_start(r + 1) - i0;
      for (int64_t k0 = 0; k0 < g.k; k0 += kKC) {
        kern.macro_rows(g, bp + k0 * n_pad, i0, mc, k0, std::min(kKC, g.k - k0), k0 == 0);
      }
    }
  };
  if (at::in_parallel_region()) {
    run_rows(0, runs);
  } else {
    at::parallel_for(0, runs, 1, run_rows);
  }
}

// Few rows against a B stored transposed (linear's weight, out x in, at a small batch): packing B would
// copy all of the weight for a few rows' use. Swapped, C^T = op(B)^T op(A)^T, the weight is an A read
// in place (gemm_a_in_place) and op(A)^T a B of few columns, packed once. The product goes to a
// scratch in that orientation, a chunk of C's columns at a time, and is added into C transposed:
// written through C's transposed strides, a tile's rows 16 KiB apart at n = 4096 all fell in one L1
// set (128 x 1024 -> 4096: 0.6x torch). AMD Zen 3, 2 threads, linear against torch's in two interleaved
// runs: 8 x 512 -> 1000 0.67-0.70x -> 1.32-1.47x, 32 rows 0.81-0.83x -> 1.21-1.25x, 64 rows 0.76-0.89x
// -> 1.02-1.13x, 128 rows 0.80-0.94x -> 0.93-1.00x, 16 x 4096 -> 4096 1.0-1.1x -> 3.0-3.5x. Sums:
// each K block's products summed in registers as in the unswapped nest, the blocks then added in the
// scratch before alpha and beta * C enter (the unswapped nest adds each block to beta * C in turn).
template <typename T>
bool gemm_swapped_in_place(const GemmArgs<T>& g, const GemmKernels<T>& kern) {
  if (g.a_packed != nullptr || g.b_packed != nullptr) return false;   // prepacked: the usual nest
  GemmArgs<T> t = g;   // C^T = op(B)^T op(A)^T, into the scratch
  t.m = g.n; t.n = g.m;
  t.a = g.b; t.rs_a = g.cs_b; t.cs_a = g.rs_b;
  t.b = g.a; t.rs_b = g.cs_a; t.cs_b = g.rs_a;
  t.alpha = T(1); t.beta = T(0);
  t.rs_c = g.m; t.cs_c = 1;
  if (!reads_a_in_place(t, kern)) return false;
  T* bp = scratch<T>(Scratch::gemm_b, gemm_packed_b_elems<T>(t.k, t.n));
  gemm_pack_b(t, bp);
  t.b_packed = bp;
  // Chunks of C's columns whose products take at most 256 KiB, at least 4 micro-panels each (as
  // reads_a_in_place asks), as even as whole panels allow.
  const int64_t max_cols = std::max<int64_t>(4 * kern.mr, (int64_t(256) << 10) / (g.m * int64_t(sizeof(T))));
  const int64_t chunks = (g.n + max_cols - 1) / max_cols, panels = (g.n + kern.mr - 1) / kern.mr;
  const auto chunk_col = [&](int64_t c) { return std::min(g.n, c * panels / chunks * kern.mr); };
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t j0 = chunk_col(c), nc = chunk_col(c + 1) - j0;
    T* prod = scratch<T>(Scratch::gemm_c, nc * g.m);   // prod[j * m + i] = (op(A) op(B))[i, j0 + j]
    GemmArgs<T> part = t;
    part.m = nc;
    part.a = t.a + j0 * t.rs_a;
    part.c = prod;
    gemm_a_in_place(part, kern);
    const auto add_rows = [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        T* row = g.c + i * g.rs_c + j0 * g.cs_c;
        for (int64_t j = 0; j < nc; ++j) {
          T& dst = row[j * g.cs_c];
          const T r = g.alpha * prod[j * g.m + i];
          dst = g.beta == T(0) ? r : r + g.beta * dst;
        }
      }
    };
    at::in_parallel_region() ? add_rows(0, g.m) : at::parallel_for(0, g.m, 1, add_rows);
  }
  return true;
}

template <typename T>
void gemm(const GemmArgs<T>& g) {
  if (g.m == 0 || g.n == 0) return;
  if (g.k == 0 || g.alpha == T(0)) return scale_c(g);
  const auto& kern = kernels_for<T>();
  if (reads_a_in_place(g, kern)) return gemm_a_in_place(g, kern);
  if (gemm_swapped_in_place(g, kern)) return;
  loop_nest<T, T>(
      g, kern.mr, kern.nr, 1, g.a_packed, g.b_packed,
      [&](const T* ap, const T* bp, int64_t i0, int64_t mc, int64_t j0, int64_t nc, int64_t kc, bool first) {
        kern.macro(g, ap, bp, i0, mc, j0, nc, kc, first);
      },
      [&](int64_t i0, int64_t mc, int64_t k0, int64_t kc, T* dst) { kern.pack_a(g, i0, mc, k0, kc, dst); },
      [&](int64_t k0, int64_t kc, int64_t j0, int64_t nc, T* dst) { kern.pack_b(g, k0, kc, j0, nc, dst); });
}

template void gemm<float>(const GemmArgs<float>& g);
template void gemm<double>(const GemmArgs<double>& g);

namespace {

// The float32 panels of either operand, converted from TIn: panels `width` wide along the operand's
// M (A) or N (B) extent, kc deep along K; element x (< extent, from x0) at K step k (from k0) of
// src[x * x_stride + k * k_stride] goes to dst[(x / width) * width * kc + k * width + x % width], lanes
// past the extent zero (the layout of pack_a's MR-tall and pack_b's NR-wide panels).
template <typename TIn>
void pack_converting(const TIn* src, int64_t x_stride, int64_t k_stride, int64_t x0, int64_t extent, int64_t k0,
                     int64_t kc, int64_t width, float* dst) {
  for (int64_t x = 0; x < extent; x += width) {
    const int64_t w = std::min(width, extent - x);
    float* panel = dst + x * kc;
    for (int64_t k = 0; k < kc; ++k) {
      const TIn* in = src + (x0 + x) * x_stride + (k0 + k) * k_stride;
      float* out = panel + k * width;
      int64_t l = 0;
      for (; l < w; ++l) out[l] = static_cast<float>(in[l * x_stride]);
      for (; l < width; ++l) out[l] = 0.0f;
    }
  }
}

// The pair-packed panels of the bfloat16 path (gemm_bf16_kernels.inc): word (x, p) of a panel
// `width` wide holds elements (x, 2p) and (x, 2p + 1) of the operand, zero past kc; panels kc rounded
// up to k_align (even) steps deep, lanes past the extent zero. Strides as pack_converting's.
void pack_pairs(const c10::BFloat16* src, int64_t x_stride, int64_t k_stride, int64_t x0, int64_t extent, int64_t k0,
                int64_t kc, int64_t width, int64_t k_align, uint16_t* dst) {
  const int64_t pairs = (kc + k_align - 1) / k_align * k_align / 2, whole = kc / 2;   // whole: both steps inside kc
  for (int64_t x = 0; x < extent; x += width) {
    const int64_t w = std::min(width, extent - x);
    uint16_t* panel = dst + x * 2 * pairs;
    const c10::BFloat16* base = src + (x0 + x) * x_stride + k0 * k_stride;
    int64_t p0 = 0;
    if (k_stride == 1) {   // a pair is one 32-bit word of the source (A stored row-major): copy words
      for (int64_t l = 0; l < w; ++l) {
        const c10::BFloat16* row = base + l * x_stride;
        for (int64_t p = 0; p < whole; ++p) std::memcpy(panel + (p * width + l) * 2, row + 2 * p, 4);
      }
      p0 = whole;
    } else if (x_stride == 1) {   // the lanes are contiguous (B stored row-major): interleave two rows
      for (int64_t p = 0; p < whole; ++p) {
        const uint16_t* r0 = reinterpret_cast<const uint16_t*>(base + 2 * p * k_stride);
        const uint16_t* r1 = reinterpret_cast<const uint16_t*>(base + (2 * p + 1) * k_stride);
        uint16_t* out = panel + p * 2 * width;
        for (int64_t l = 0; l < w; ++l) {
          out[2 * l] = r0[l];
          out[2 * l + 1] = r1[l];
        }
      }
      p0 = whole;
    }
    for (int64_t p = p0; p < pairs; ++p) {   // the general case, and steps past kc (zero)
      const c10::BFloat16* in = base + 2 * p * k_stride;
      const bool first = 2 * p < kc, second = 2 * p + 1 < kc;
      uint16_t* out = panel + p * 2 * width;
      for (int64_t l = 0; l < w; ++l) {
        out[2 * l] = first ? in[l * x_stride].x : uint16_t(0);
        out[2 * l + 1] = second ? in[l * x_stride + k_stride].x : uint16_t(0);
      }
    }
    if (w < width) {   // lanes past the extent
      for (int64_t p = 0; p < pairs; ++p) {
        for (int64_t l = w; l < width; ++l) panel[(p * width + l) * 2] = panel[(p * width + l) * 2 + 1] = 0;
      }
    }
  }
}

// The AMX kernel's A panels (gemm_amx_kernels.inc): `width` (32) rows; per chunk of 32 K steps the
// rows one after another, 16 words each, word w of row x holding elements (x, 2p), (x, 2p + 1) for
// p = 16 * chunk + w; zero past kc and past the extent. Strides as pack_converting's.
void pack_amx_rows(const c10::BFloat16* src, int64_t x_stride, int64_t k_stride, int64_t x0, int64_t extent,
                   int64_t k0, int64_t kc, int64_t width, uint16_t* dst) {
  const int64_t chunks = (kc + 31) / 32;
  for (int64_t x = 0; x < extent; x += width) {
    const int64_t w = std::min(width, extent - x);
    uint16_t* panel = dst + x * chunks * 32;
    for (int64_t c = 0; c < chunks; ++c) {
      for (int64_t l = 0; l < width; ++l) {
        uint16_t* out = panel + (c * width + l) * 32;
        const int64_t steps = l < w ? std::clamp<int64_t>(kc - 32 * c, 0, 32) : 0;
        const c10::BFloat16* in = src + (x0 + x + l) * x_stride + (k0 + 32 * c) * k_stride;
        int64_t e = 0;
        for (; e < steps; ++e) out[e] = in[e * k_stride].x;
        for (; e < 32; ++e) out[e] = 0;
      }
    }
  }
}

// vdpbf16ps emulated lane by lane: the instruction's own definition (Intel SDM: "FP32 FMA with DAZ in,
// FTZ out and RNE rounding", the odd element of each pair first), in portable C++.
struct DotEmulated {
  struct Acc {
    float v[16];
  };
  struct B {
    uint16_t h[32];
  };
  static float daz(float x) { return std::fpclassify(x) == FP_SUBNORMAL ? std::copysign(0.0f, x) : x; }
  static Acc zero() { return Acc{}; }
  static B load_b(const uint16_t* p) {
    B b;
    std::memcpy(b.h, p, sizeof(b.h));
    return b;
  }
  static Acc dot(Acc acc, uint32_t a_pair, const B& b) {
    const float a_lo = daz(bf16_bits_to_float(uint16_t(a_pair))), a_hi = daz(bf16_bits_to_float(uint16_t(a_pair >> 16)));
    for (int j = 0; j < 16; ++j) {
      float t = daz(std::fma(a_hi, daz(bf16_bits_to_float(b.h[2 * j + 1])), daz(acc.v[j])));
      acc.v[j] = daz(std::fma(a_lo, daz(bf16_bits_to_float(b.h[2 * j])), t));
    }
    return acc;
  }
  static void store(float* p, const Acc& v) { std::memcpy(p, v.v, sizeof(v.v)); }
  static void update(float* c, const Acc& acc, float alpha, float beta, bool first) {
    for (int j = 0; j < 16; ++j) {
      const float r = alpha * acc.v[j];
      c[j] = !first ? c[j] + r : (beta == 0.0f ? r : r + beta * c[j]);
    }
  }
};

// The AMX tiles emulated: eight 1 KiB tile registers per thread, each 16 rows of 64 bytes as
// gemm_amx_kernels.inc configures them, and tdpbf16ps as the Intel SDM defines it: for each row m of
// C, the products of the even elements of the pairs and those of the odd elements summed over the K
// pairs in two float32 chains (FMAs), then C += (even + odd); denormal inputs read as zero, denormal
// results flushed to zero, round to nearest even.
struct TilesEmulated {
  static constexpr int kRows = 16, kRowBytes = 64;
  struct State {
    alignas(64) unsigned char t[8][kRows * kRowBytes];
  };
  static State& state() {
    thread_local State st;
    return st;
  }
  static void config() { std::memset(&state(), 0, sizeof(State)); }
  static void release() { std::memset(&state(), 0, sizeof(State)); }
  template <int t>
  static void zero() {
    std::memset(state().t[t], 0, sizeof(state().t[t]));
  }
  template <int t>
  static void load(const void* p, int64_t stride) {
    for (int r = 0; r < kRows; ++r) {
      std::memcpy(state().t[t] + r * kRowBytes, static_cast<const unsigned char*>(p) + r * stride, kRowBytes);
    }
  }
  template <int t>
  static void store(void* p, int64_t stride) {
    for (int r = 0; r < kRows; ++r) {
      std::memcpy(static_cast<unsigned char*>(p) + r * stride, state().t[t] + r * kRowBytes, kRowBytes);
    }
  }
  template <int c, int a, int b>
  static void dot() {
    using E = DotEmulated;
    float cv[kRows][16];
    uint16_t av[kRows][32], bv[kRows][32];
    std::memcpy(cv, state().t[c], sizeof(cv));
    std::memcpy(av, state().t[a], sizeof(av));
    std::memcpy(bv, state().t[b], sizeof(bv));
    for (int m = 0; m < kRows; ++m) {
      float even[16] = {}, odd[16] = {};
      for (int k = 0; k < 16; ++k) {   // K pairs: A's row m, word k; B's row k
        const float a0 = E::daz(bf16_bits_to_float(av[m][2 * k])), a1 = E::daz(bf16_bits_to_float(av[m][2 * k + 1]));
        for (int n = 0; n < 16; ++n) {
          even[n] = E::daz(std::fma(a0, E::daz(bf16_bits_to_float(bv[k][2 * n])), even[n]));
          odd[n] = E::daz(std::fma(a1, E::daz(bf16_bits_to_float(bv[k][2 * n + 1])), odd[n]));
        }
      }
      for (int n = 0; n < 16; ++n) cv[m][n] = E::daz(E::daz(cv[m][n]) + E::daz(even[n] + odd[n]));
    }
    std::memcpy(state().t[c], cv, sizeof(cv));
  }
};

#include "cpu/gemm_bf16_kernels.inc"
#include "cpu/gemm_amx_kernels.inc"
#include "cpu/conv2d_bf16_direct.inc"

// Bf16DirectKernels::pair_rows, portably: position by position, two channels a word.
void pair_rows_portable(const uint16_t* src, int64_t cs, int64_t channels, int64_t width, uint32_t* d32, int64_t ld) {
  for (int64_t c = 0; c < channels; c += 2) {
    const uint16_t* r0 = src + c * cs;
    const uint16_t* r1 = c + 1 < channels ? r0 + cs : nullptr;
    for (int64_t w = 0; w < width; ++w) {
      d32[w * ld + c / 2] = uint32_t(r0[w]) | (r1 != nullptr ? uint32_t(r1[w]) << 16 : 0u);
    }
  }
}

const GemmBf16Kernels kBf16Emulated{kBf16MR, kBf16NR, 2, Bf16Layout::pairs, bf16_macro_kernel<DotEmulated>,
                                    bf16_pack_b_offsets<kBf16NR, 2>};
const GemmBf16Kernels kAmxEmulated{kAmxMR, kAmxNR, kAmxKAlign, Bf16Layout::amx_tiles, amx_macro_kernel<TilesEmulated>,
                                   bf16_pack_b_offsets<kAmxNR, kAmxKAlign>};

// Packs an MC x KC block of op(A) or a KC x NC block of op(B) into a bfloat16 kernel's panels.
void pack_bf16_a(const GemmBf16Kernels& k, const c10::BFloat16* a, int64_t rs_a, int64_t cs_a, int64_t i0, int64_t mc,
                 int64_t k0, int64_t kc, uint16_t* dst) {
  if (k.layout == Bf16Layout::amx_tiles) return pack_amx_rows(a, rs_a, cs_a, i0, mc, k0, kc, k.mr, dst);
  pack_pairs(a, rs_a, cs_a, i0, mc, k0, kc, k.mr, k.k_align, dst);
}

void pack_bf16_b(const GemmBf16Kernels& k, const c10::BFloat16* b, int64_t rs_b, int64_t cs_b, int64_t k0, int64_t kc,
                 int64_t j0, int64_t nc, uint16_t* dst) {
  pack_pairs(b, cs_b, rs_b, j0, nc, k0, kc, k.nr, k.k_align, dst);
}

// The K block of the bfloat16 path. The epilogue (C read and written once per block) weighs more than
// in float32, as a dot product does twice an FMA's work, so a long block is faster: as deep as keeps
// one pair-packed B panel (kc x NR bfloat16) within 1/16 of the L2 cache, a power of two from 256 to
// 1024 (on AMD Zen 4, 1 MiB L2: 512, which ran 15% faster there than 256). But the block is also the
// length of the float32 summation chains: with a float32 output they are the whole error, so that
// output keeps float32's chains (kGemmMaxKBlock: the error stays within 2x torch's float32 matmul);
// a half-precision output's final rounding (2^-8 or 2^-11) dwarfs them.
int64_t bf16_k_block(int64_t nr, DType out) {
  if (out == DType::f32) return kGemmMaxKBlock;
  int64_t kc = 256;
  while (kc < 1024 && 2 * kc * nr * 2 <= l2_cache_bytes() / 16) kc *= 2;
  return kc;
}

// The float32 side the loop nest and micro-kernels see: C (float32) and the scalars.
GemmArgs<float> float_side(const MixedGemmArgs& m, float* c, int64_t rs_c, int64_t cs_c) {
  GemmArgs<float> g;
  g.m = m.m; g.n = m.n; g.k = m.k;
  g.alpha = m.alpha; g.beta = m.beta;
  g.a = nullptr; g.rs_a = m.rs_a; g.cs_a = m.cs_a;
  g.b = nullptr; g.rs_b = m.rs_b; g.cs_b = m.cs_b;
  g.c = c; g.rs_c = rs_c; g.cs_c = cs_c;
  return g;
}

// C (float32) (+)= the product: bfloat16 through a pair-packed micro-kernel when `pair` is given,
// otherwise (float16, or bfloat16 without one) widened to float32 in packing for the float kernels.
template <typename TIn>
void gemm_mixed_typed(const MixedGemmArgs& m, float* c, int64_t rs_c, int64_t cs_c, const GemmBf16Kernels* pair) {
  const TIn* a = static_cast<const TIn*>(m.a);
  const TIn* b = static_cast<const TIn*>(m.b);
  const GemmArgs<float> g = float_side(m, c, rs_c, cs_c);
  if (g.k == 0 || g.alpha == 0.0f) return scale_c(g);
  if constexpr (std::is_same_v<TIn, c10::BFloat16>) {
    if (pair != nullptr) {
      const int64_t mr = pair->mr, nr = pair->nr;
      GemmArgs<float> gp = g;
      gp.k_block = bf16_k_block(nr, m.out);
      return loop_nest<float, uint16_t>(
          gp, mr, nr, pair->k_align, nullptr, nullptr,
          [&](const uint16_t* ap, const uint16_t* bp, int64_t i0, int64_t mc, int64_t j0, int64_t nc, int64_t kc,
              bool first) { pair->macro(gp, ap, bp, i0, mc, j0, nc, kc, first); },
          [&](int64_t i0, int64_t mc, int64_t k0, int64_t kc, uint16_t* dst) {
            pack_bf16_a(*pair, a, m.rs_a, m.cs_a, i0, mc, k0, kc, dst);
          },
          [&](int64_t k0, int64_t kc, int64_t j0, int64_t nc, uint16_t* dst) {
            pack_bf16_b(*pair, b, m.rs_b, m.cs_b, k0, kc, j0, nc, dst);
          });
    }
  }
  const auto& kern = kernels_for<float>();
  const int64_t mr = kern.mr, nr = kern.nr;
  loop_nest<float, float>(
      g, mr, nr, 1, nullptr, nullptr,
      [&](const float* ap, const float* bp, int64_t i0, int64_t mc, int64_t j0, int64_t nc, int64_t kc, bool first) {
        kern.macro(g, ap, bp, i0, mc, j0, nc, kc, first);
      },
      [&](int64_t i0, int64_t mc, int64_t k0, int64_t kc, float* dst) {
        pack_converting(a, m.rs_a, m.cs_a, i0, mc, k0, kc, mr, dst);
      },
      [&](int64_t k0, int64_t kc, int64_t j0, int64_t nc, float* dst) {
        pack_converting(b, m.cs_b, m.rs_b, j0, nc, k0, kc, nr, dst);
      });
}

template <typename TIn>
void gemm_mixed_in(const MixedGemmArgs& m, const GemmBf16Kernels* pair) {
  if (m.out == DType::f32) return gemm_mixed_typed<TIn>(m, static_cast<float*>(m.c), m.rs_c, m.cs_c, pair);
  // A half-precision C: accumulate in a float32 copy (the K blocks add into it), round once at the end.
  // Uninitialised: the first K block writes it (beta == 0) or it is loaded from C first.
  std::unique_ptr<float[]> acc(new float[static_cast<size_t>(m.m * m.n)]);
  const auto each_c = [&](auto&& fn) {
    at::parallel_for(0, m.m, 64, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t j = 0; j < m.n; ++j) fn(acc[static_cast<size_t>(i * m.n + j)], i * m.rs_c + j * m.cs_c);
      }
    });
  };
  const auto with_out = [&](auto tag) {
    using TOut = decltype(tag);
    TOut* c = static_cast<TOut*>(m.c);
    if (m.beta != 0.0f) each_c([&](float& v, int64_t off) { v = static_cast<float>(c[off]); });
    gemm_mixed_typed<TIn>(m, acc.get(), m.n, 1, pair);
    each_c([&](float& v, int64_t off) { c[off] = static_cast<TOut>(v); });   // round to nearest even
  };
  if (m.out == DType::bf16) {
    with_out(c10::BFloat16());
  } else {
    with_out(c10::Half());
  }
}

}  // namespace

const Bf16DirectKernels bf16_direct_emulated{bf16_direct_tile<DotEmulated>, pair_rows_portable};

namespace {

const GemmBf16Kernels* native_bf16_kernels() {
  switch (active_isa()) {
    case Isa::amx: return &gemm_bf16_kernels_amx;
    case Isa::avx512_bf16: return &gemm_bf16_kernels_avx512bf16;
    default: return nullptr;
  }
}

const GemmBf16Kernels& native_bf16_checked(const char* fn) {
  const GemmBf16Kernels* k = native_bf16_kernels();
  TORCH_CHECK(k != nullptr, "fastconv: ", fn, " needs a CPU bfloat16 kernel (ISA level avx512_bf16 or amx)");
  return *k;
}

}  // namespace

bool gemm_bf16(const MixedGemmArgs& g, Bf16Path path) {
  const GemmBf16Kernels* pair = nullptr;
  switch (path) {
    case Bf16Path::auto_: pair = native_bf16_kernels(); break;
    case Bf16Path::float32: break;
    case Bf16Path::emulated: pair = &kBf16Emulated; break;
    case Bf16Path::avx512_bf16:
      if (best_supported_isa() < Isa::avx512_bf16) return false;
      pair = &gemm_bf16_kernels_avx512bf16;
      break;
    case Bf16Path::amx_emulated: pair = &kAmxEmulated; break;
    case Bf16Path::amx:
      if (best_supported_isa() < Isa::amx) return false;
      pair = &gemm_bf16_kernels_amx;
      break;
  }
  if (g.m == 0 || g.n == 0) return true;
  gemm_mixed_in<c10::BFloat16>(g, pair);
  return true;
}

bool gemm_bf16_native() { return native_bf16_kernels() != nullptr; }

GemmTile gemm_bf16_tile() {
  const GemmBf16Kernels& k = native_bf16_checked("gemm_bf16_tile");
  return GemmTile{k.mr, k.nr, bf16_k_block(k.nr, DType::bf16), k.k_align};
}

int64_t gemm_bf16_packed_a_elems(int64_t m, int64_t k, int64_t k_block) {
  const GemmBf16Kernels& kern = native_bf16_checked("gemm_bf16_packed_a_elems");
  const int64_t last = k % k_block, align = kern.k_align;   // only the last block can be short
  const int64_t depth = k - last + (last + align - 1) / align * align;
  return (m + kern.mr - 1) / kern.mr * kern.mr * depth;
}

void gemm_bf16_pack_a(const uint16_t* a, int64_t rs_a, int64_t cs_a, int64_t m, int64_t k, int64_t k_block,
                      uint16_t* dst) {
  const GemmBf16Kernels& kern = native_bf16_checked("gemm_bf16_pack_a");
  TORCH_CHECK(k_block % kern.k_align == 0, "fastconv: gemm_bf16_pack_a: K block ", k_block, " is not a multiple of ",
              kern.k_align);
  const int64_t m_pad = (m + kern.mr - 1) / kern.mr * kern.mr;
  const auto* src = reinterpret_cast<const c10::BFloat16*>(a);
  at::parallel_for(0, (k + k_block - 1) / k_block, 1, [&](int64_t b0, int64_t b1) {   // K blocks
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t k0 = blk * k_block;
      pack_bf16_a(kern, src, rs_a, cs_a, 0, m, k0, std::min(k_block, k - k0), dst + k0 * m_pad);
    }
  });
}

void gemm_bf16_pack_b_offsets(const uint16_t* base, const int64_t* row_off, int64_t rows, const int64_t* col_off,
                              int64_t cols, uint16_t* dst) {
  native_bf16_checked("gemm_bf16_pack_b_offsets").pack_b_offsets(base, row_off, rows, col_off, cols, dst);
}

void gemm_bf16_prepacked(const GemmArgs<float>& g, const uint16_t* a_packed, const uint16_t* b_packed) {
  const GemmBf16Kernels& k = native_bf16_checked("gemm_bf16_prepacked");
  TORCH_CHECK(a_packed != nullptr && b_packed != nullptr, "fastconv: gemm_bf16_prepacked needs both operands packed");
  if (g.m == 0 || g.n == 0) return;
  if (g.k == 0 || g.alpha == 0.0f) return scale_c(g);
  loop_nest<float, uint16_t>(
      g, k.mr, k.nr, k.k_align, a_packed, b_packed,
      [&](const uint16_t* ap, const uint16_t* bp, int64_t i0, int64_t mc, int64_t j0, int64_t nc, int64_t kc,
          bool first) { k.macro(g, ap, bp, i0, mc, j0, nc, kc, first); },
      [](int64_t, int64_t, int64_t, int64_t, uint16_t*) {}, [](int64_t, int64_t, int64_t, int64_t, uint16_t*) {});
}

void gemm_mixed(const MixedGemmArgs& g) {
  if (g.in == DType::bf16) {
    gemm_bf16(g, Bf16Path::auto_);
  } else if (g.m > 0 && g.n > 0) {
    gemm_mixed_in<c10::Half>(g, nullptr);
  }
}

int64_t gemm_packed_a_elems(int64_t m, int64_t k) {
  const int64_t mr = kernels_for<float>().mr;
  return (m + mr - 1) / mr * mr * k;
}

template <typename T>
GemmTile gemm_tile() {
  const auto& kern = kernels_for<T>();
  return GemmTile{kern.mr, kern.nr, gemm_blocking<T>().kc};
}

template GemmTile gemm_tile<float>();
template GemmTile gemm_tile<double>();

template <typename T>
void gemm_gathered(const GatheredRows<T>& a, const T* bp, int64_t n, T* c, int64_t rs_c, T beta) {
  if (a.m > 0 && n > 0) kernels_for<T>().macro_gathered(a, bp, n, c, rs_c, beta);
}

template void gemm_gathered<float>(const GatheredRows<float>&, const float*, int64_t, float*, int64_t, float);
template void gemm_gathered<double>(const GatheredRows<double>&, const double*, int64_t, double*, int64_t, double);

template <typename T>
void gemm_block(const T* ap, const T* bp, int64_t m, int64_t n, int64_t kc, T* c, int64_t rs_c, bool accumulate) {
  GemmArgs<T> g;
  g.m = m; g.n = n; g.k = kc;
  g.alpha = T(1); g.beta = T(0);
  g.a = nullptr; g.rs_a = 0; g.cs_a = 0;
  g.b = nullptr; g.rs_b = 0; g.cs_b = 0;
  g.c = c; g.rs_c = rs_c; g.cs_c = 1;
  kernels_for<T>().macro(g, ap, bp, 0, m, 0, n, kc, !accumulate);
}

template void gemm_block<float>(const float*, const float*, int64_t, int64_t, int64_t, float*, int64_t, bool);
template void gemm_block<double>(const double*, const double*, int64_t, int64_t, int64_t, double*, int64_t, bool);

template <typename T>
void gemm_pack_b_offsets(const T* base, const int64_t* row_off, int64_t rows, const int64_t* col_off, int64_t cols,
                         T* dst) {
  kernels_for<T>().pack_b_offsets(base, row_off, rows, col_off, cols, dst);
}

template void gemm_pack_b_offsets<float>(const float*, const int64_t*, int64_t, const int64_t*, int64_t, float*);
template void gemm_pack_b_offsets<double>(const double*, const int64_t*, int64_t, const int64_t*, int64_t, double*);

template <typename T>
void gemm_transpose(const T* src, int64_t rows, int64_t cols, int64_t ld_src, T* dst, int64_t ld_dst) {
  kernels_for<T>().transpose(src, rows, cols, ld_src, dst, ld_dst);
}

template void gemm_transpose<float>(const float*, int64_t, int64_t, int64_t, float*, int64_t);
template void gemm_transpose<double>(const double*, int64_t, int64_t, int64_t, double*, int64_t);

// K block k0 holds the panels of all rows (m_pad x kc), as pack_a lays out one row block.
template <typename T>
void gemm_pack_a(const GemmArgs<T>& g, T* dst) {
  const auto& kern = kernels_for<T>();
  const int64_t m_pad = (g.m + kern.mr - 1) / kern.mr * kern.mr;
  const int64_t kKC = k_block_of(g);
  at::parallel_for(0, (g.k + kKC - 1) / kKC, 1, [&](int64_t b0, int64_t b1) {   // K blocks
    for (int64_t k0 = b0 * kKC; k0 < std::min(g.k, b1 * kKC); k0 += kKC) {
      kern.pack_a(g, 0, g.m, k0, std::min(kKC, g.k - k0), dst + k0 * m_pad);
    }
  });
}

template void gemm_pack_a<float>(const GemmArgs<float>& g, float* dst);
template void gemm_pack_a<double>(const GemmArgs<double>& g, double* dst);

// K block k0 holds all the panels of op(B) (kc x n_pad), as the b_packed layout of GemmArgs says.
template <typename T>
void gemm_pack_b(const GemmArgs<T>& g, T* dst) {
  const auto& kern = kernels_for<T>();
  const int64_t n_pad = (g.n + kern.nr - 1) / kern.nr * kern.nr;
  const int64_t kKC = k_block_of(g);
  const int64_t blocks = (g.k + kKC - 1) / kKC, panels = n_pad / kern.nr;
  at::parallel_for(0, blocks * panels, 1, [&](int64_t u0, int64_t u1) {   // (K block, panel) pairs
    for (int64_t u = u0; u < u1;) {   // the run of panels [p0, p1) of one K block
      const int64_t p0 = u % panels, p1 = std::min(panels, p0 + u1 - u);
      const int64_t k0 = u / panels * kKC, kc = std::min(kKC, g.k - k0), j0 = p0 * kern.nr;
      kern.pack_b(g, k0, kc, j0, std::min(p1 * kern.nr, g.n) - j0, dst + k0 * n_pad + j0 * kc);
      u += p1 - p0;
    }
  });
}

template void gemm_pack_b<float>(const GemmArgs<float>& g, float* dst);
template void gemm_pack_b<double>(const GemmArgs<double>& g, double* dst);

template <typename T>
int64_t gemm_packed_b_elems(int64_t k, int64_t n) {
  const int64_t nr = kernels_for<T>().nr;
  return (n + nr - 1) / nr * nr * k;
}

template int64_t gemm_packed_b_elems<float>(int64_t k, int64_t n);
template int64_t gemm_packed_b_elems<double>(int64_t k, int64_t n);

namespace {

at::Tensor gemm_cpu(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& c, bool trans_a,
                    bool trans_b, double alpha, double beta, std::optional<at::ScalarType> out_dtype) {
  const GemmShape s = check_gemm(a, b, c, trans_a, trans_b, out_dtype, kOp);
  at::Tensor out = gemm_output(a, c, beta, s);
  const bool reads_c = gemm_reads_c(c, beta);
  if (out.numel() == 0) return out;
  const int64_t rs_a = trans_a ? a.stride(1) : a.stride(0), cs_a = trans_a ? a.stride(0) : a.stride(1);
  const int64_t rs_b = trans_b ? b.stride(1) : b.stride(0), cs_b = trans_b ? b.stride(0) : b.stride(1);
  if (is_half(a.scalar_type())) {
    MixedGemmArgs g{s.m, s.n, s.k, static_cast<float>(alpha), static_cast<float>(reads_c ? beta : 0.0),
                    to_dtype(a.scalar_type()), a.data_ptr(), rs_a, cs_a, b.data_ptr(), rs_b, cs_b,
                    to_dtype(s.out_dtype), out.data_ptr(), s.n, 1};
    gemm_mixed(g);
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), kOp, [&] {
    GemmArgs<scalar_t> g;
    g.m = s.m; g.n = s.n; g.k = s.k;
    g.alpha = static_cast<scalar_t>(alpha);
    g.beta = static_cast<scalar_t>(reads_c ? beta : 0.0);
    g.a = a.data_ptr<scalar_t>();
    g.rs_a = rs_a;
    g.cs_a = cs_a;
    g.b = b.data_ptr<scalar_t>();
    g.rs_b = rs_b;
    g.cs_b = cs_b;
    g.c = out.data_ptr<scalar_t>();
    g.rs_c = s.n;
    g.cs_c = 1;
    gemm<scalar_t>(g);
  });
  return out;
}

template <typename T>
double peak_gflops(double seconds) {
  const auto& kern = kernels_for<T>();
  const int64_t threads = at::get_num_threads();
  int64_t iters = 1 << 16;
  for (;;) {
    std::atomic<double> flops{0};
    const auto t0 = std::chrono::steady_clock::now();
    at::parallel_for(0, threads, 1, [&](int64_t b, int64_t e) {
      double f = 0;
      for (int64_t t = b; t < e; ++t) f += kern.fma_peak(iters);
      double cur = flops.load();
      while (!flops.compare_exchange_weak(cur, cur + f)) {
      }
    });
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (dt >= seconds) return flops.load() / dt / 1e9;
    iters *= 2;
  }
}

}  // namespace

double measured_fma_peak_gflops(bool single, double seconds) {
  return single ? peak_gflops<float>(seconds) : peak_gflops<double>(seconds);
}

TORCH_LIBRARY_IMPL(fastconv, CPU, m) { m.impl("gemm", &gemm_cpu); }

namespace {

// For tests (fastconv_testing, outside fastconv's op table): a bfloat16 GEMM through a chosen
// micro-kernel: "float32" (widened in packing), "emulated" (the pair-packed path on the portable
// vdpbf16ps), "avx512_bf16" (the real instruction), "amx_emulated" (the AMX kernel on portable tiles)
// or "amx" (the real tiles); the real ones are refused where the CPU lacks them.
at::Tensor gemm_bf16_path(const at::Tensor& a, const at::Tensor& b, bool trans_a, bool trans_b,
                          c10::string_view path, std::optional<at::ScalarType> out_dtype) {
  constexpr const char* op = "gemm_bf16_path";
  TORCH_CHECK(a.scalar_type() == at::kBFloat16, "fastconv_testing::", op, ": expected bfloat16 a");
  const GemmShape s = check_gemm(a, b, std::nullopt, trans_a, trans_b, out_dtype, op);
  const std::string_view name(path.data(), path.size());
  const Bf16Path p = name == "float32" ? Bf16Path::float32 : name == "emulated" ? Bf16Path::emulated
                   : name == "avx512_bf16" ? Bf16Path::avx512_bf16 : name == "amx_emulated" ? Bf16Path::amx_emulated
                   : name == "amx" ? Bf16Path::amx : Bf16Path::auto_;
  TORCH_CHECK(p != Bf16Path::auto_, "fastconv_testing::", op, ": unknown path '", name,
              "' (float32, emulated, avx512_bf16, amx_emulated, amx)");
  at::Tensor out = at::empty({s.m, s.n}, a.options().dtype(s.out_dtype));
  MixedGemmArgs g{s.m, s.n, s.k, 1.0f, 0.0f, DType::bf16, a.data_ptr(), trans_a ? a.stride(1) : a.stride(0),
                  trans_a ? a.stride(0) : a.stride(1), b.data_ptr(), trans_b ? b.stride(1) : b.stride(0),
                  trans_b ? b.stride(0) : b.stride(1), to_dtype(s.out_dtype), out.data_ptr(), s.n, 1};
  TORCH_CHECK(gemm_bf16(g, p), "fastconv_testing::", op, ": this CPU cannot run the '", name, "' path");
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastconv_testing, m) {
  m.def("gemm_bf16_path(Tensor a, Tensor b, bool trans_a, bool trans_b, str path, ScalarType? out_dtype=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastconv_testing, CPU, m) { m.impl("gemm_bf16_path", &gemm_bf16_path); }

}  // namespace fastconv::cpu
