// Winograd convolution F(m x m, 3 x 3) on the CPU (algorithm="winograd", "winograd_2x2",
// "winograd_4x4"): Lavin & Gray's algorithm on fastconv's GEMM engine. See common/winograd.h for the
// math and cpu/conv2d_winograd_kernels.h for the layouts.
//
// Per chunk of tile rows (so the transformed buffers stay within kChunkBytes):
//   1. input transform   V[e][c][t] = B^T d B, parallel over (channel, run of tile rows), one tile
//                        per lane (narrow images put several rows of tiles in one vector);
//   2. alpha^2 GEMMs     M[e] (K x T) = U[e] (K x C) . V[e] (C x T), parallel over e, U[e] prepacked;
//   3. output transform  Y = A^T M A + bias, parallel over output channels, written
//                        straight into the NCHW output, partial tiles clipped.
// grad_weight runs the adjoint pipeline (run_grad_weight): input and grad_output transforms, alpha^2
// GEMMs summed over the tiles, and the filter transform's adjoint at the end.
// The filter transform U = G g G^T comes from the WeightCache (computed once per weight's
// contents, common/weight_cache.h). grad_input is the same pipeline on grad_output with the flipped, transposed filters.
// Filters transformed for one call only (a trained weight) whose U is larger than 4 L2s run fused
// instead (run_fused): per block of output channels, U's panels are made, multiplied and dropped in
// the cache, so U is never written to memory and read back. Passes whose thread's transformed tiles
// fit its L2 run tiled (run_tiled, run_tiled_nhwc): per block of tiles, all three steps on one thread,
// V and M never leaving its L2, U streamed from the L3 by each block.
// Channels-last tensors run the same steps with a tile's channels contiguous (run_nhwc, and
// run_grad_weight with nhwc): the transforms vectorised along the channels, the GEMMs M[e]^T = V[e]^T U[e]^T.
#include "cpu/conv2d_winograd.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#include "common/checks.h"
#include "common/winograd.h"
#include "common/weight_cache.h"
#include "cpu/conv2d_winograd_kernels.h"
#include "cpu/gemm_kernels.h"
#include "cpu/isa.h"
#include "cpu/memory.h"

namespace fastconv::cpu {
namespace {

// The baseline-ISA build (16-byte vectors): the portable fallback.
constexpr int kVecBytes = 16;
#include "cpu/conv2d_winograd.inc"

template <typename T>
const WinogradKernels<T>& kernels_for() {
  static const WinogradKernels<T> baseline = make_winograd_kernels<T>();
  if constexpr (std::is_same_v<T, float>) {
    return for_active_isa(winograd_kernels_f32_avx512, winograd_kernels_f32_avx512_emulated,
                          winograd_kernels_f32_avx2, baseline);
  } else {
    return for_active_isa(winograd_kernels_f64_avx512, winograd_kernels_f64_avx512_emulated,
                          winograd_kernels_f64_avx2, baseline);
  }
}

// V and M of one chunk of tile rows. Measured on the ResNet-18 layers: 4 MiB splits conv5_x (7x7,
// 512 channels) so that its 37 MB of transformed filters stream from memory twice; 16 MiB was
// slower on conv2_x (larger per-GEMM slices); 8 MiB suits all four.
constexpr int64_t kChunkBytes = int64_t(8) << 20;
constexpr int64_t kRowsPerItem = 8;   // tile rows per input-transform work item (narrow rows share lanes)

// The GEMMs' K block: chains of at most 64 float additions per partial sum. With the engine's
// default 256, F(4x4)'s error on ResNet's 256- and 512-channel layers was 11x direct convolution's
// (the output transform amplifies the accumulation error); with 64 it is about 5x, at a few per cent
// of speed.
constexpr int64_t kKBlock = 64;

// The distance between consecutive transform positions e of a buffer of E planes (V, M, dU, U) of
// `elems` values each: rounded up to a cache line, plus one line. The transforms read or write all E
// planes at once, one stream each; planes a multiple of 4 KiB apart (64 x 64 values, 64 channels x
// 256 tiles, ...) put all 16 or 36 streams in the same L1 set, where they evicted each other. AMD Zen
// 3, 2 threads, batch 8, each pass with and without, alternating in one process: grad_weight 128@14x14
// +18-22%, 256@7x7 +12-14%, 512@4x4 +5-8%, 64@28x28 +1-8%; channels-last forward and grad_input
// 128@14x14 +4-14%, 256@7x7 +4-6%; NCHW forward and grad_input within +-3% (their GEMM-side layouts
// were rarely aligned so).
template <typename T>
int64_t plane_stride(int64_t elems) {
  constexpr int64_t line = 64 / static_cast<int64_t>(sizeof(T));
  return (elems + line - 1) / line * line + line;
}

// Elements per transform position e of the filters' U[e] (kout x cin, packed A) and of the channels-last
// passes' U[e]^T (cin x kout, packed B; each e's panels 64-byte aligned, as the GEMM engine's packed B
// must be): planes, as above.
template <typename T>
int64_t filters_a_stride(int64_t kout, int64_t cin) {
  return plane_stride<T>(gemm_packed_a_elems(kout, cin));
}
template <typename T>
int64_t filters_b_stride(int64_t kout, int64_t cin) {
  return plane_stride<T>(gemm_packed_b_elems<T>(cin, kout));
}

// out[n][k][oh][ow] = bias[k] + sum over c, i, j < 3 of in[n][c][oh + i - ph][ow + j - pw] * g[k][c][i][j]
// (pixels outside the input read zero; ph, pw may be negative).
struct WinogradProblem {
  int64_t batch, in_ch, out_ch, in_h, in_w, out_h, out_w, ph, pw;
};

// The chunks of tile rows a pass works through (so that the transformed buffers stay within
// kChunkBytes, `per_tile` bytes a tile), and per chunk where its tiles sit.
struct TileChunks {
  int m;
  int64_t tiles_h, tiles_w, rows, rows_per_chunk;
  std::vector<WinogradTile> tiles;         // output tiles of the chunk
  std::vector<int64_t> row_image, row_ih0;   // each tile row's image and top input row
  std::vector<WinogradTileNhwc> nhwc;        // the chunk's tiles for the channels-last passes
  TileChunks(int m_, const WinogradProblem& p, int64_t per_tile) : m(m_) {
    tiles_h = (p.out_h + m - 1) / m;
    tiles_w = (p.out_w + m - 1) / m;
    rows = p.batch * tiles_h;
    const int64_t fit =
        std::clamp<int64_t>(kChunkBytes / std::max<int64_t>(1, per_tile * tiles_w), 1, std::max<int64_t>(1, rows));
    const int64_t chunks = (rows + fit - 1) / fit;
    rows_per_chunk = chunks == 0 ? 0 : (rows + chunks - 1) / chunks;   // equal chunks: no thin last GEMM
    tiles.resize(rows_per_chunk * tiles_w);
    row_image.resize(rows_per_chunk);
    row_ih0.resize(rows_per_chunk);
  }
  // Sets up the chunk of rows [r0, r0 + rows_per_chunk) and returns its tile count.
  int64_t at(int64_t r0, const WinogradProblem& p) {
    const int64_t nrows = std::min(rows_per_chunk, rows - r0), tc = nrows * tiles_w;
    for (int64_t t = 0; t < tc; ++t) {
      const int64_t row = r0 + t / tiles_w, n = row / tiles_h, th = row % tiles_h, tw = t % tiles_w;
      tiles[t] = WinogradTile{n * p.out_ch * p.out_h * p.out_w, th * m - p.ph, tw * m - p.pw};
    }
    for (int64_t rr = 0; rr < nrows; ++rr) {
      row_image[rr] = (r0 + rr) / tiles_h;
      row_ih0[rr] = (r0 + rr) % tiles_h * m - p.ph;
    }
    return tc;
  }
  // Sets up the chunk of rows [r0, r0 + rows_per_chunk) for a channels-last pass (nhwc) and returns
  // its tile count.
  int64_t at_nhwc(int64_t r0, const WinogradProblem& p) {
    const int64_t tc = std::min(rows_per_chunk, rows - r0) * tiles_w;
    nhwc.resize(rows_per_chunk * tiles_w);
    for (int64_t t = 0; t < tc; ++t) {
      const int64_t row = r0 + t / tiles_w;
      nhwc[t] = WinogradTileNhwc{row / tiles_h, row % tiles_h * m - p.ph, t % tiles_w * m - p.pw};
    }
    return tc;
  }
  // V[e][c][t] = B^T d B for the chunk's tc tiles of every input channel, in parallel over (channel,
  // run of tile rows).
  template <typename T>
  void input_transform(const WinogradKernels<T>& kern, const T* x, const WinogradProblem& p, int64_t tc, T* v,
                       int64_t e_stride) const {
    const int64_t nrows = tc / tiles_w, blocks = (nrows + kRowsPerItem - 1) / kRowsPerItem, in_plane = p.in_h * p.in_w;
    at::parallel_for(0, p.in_ch * blocks, 1, [&](int64_t b, int64_t e) {
      for (int64_t item = b; item < e; ++item) {
        const int64_t c = item / blocks, rr = item % blocks * kRowsPerItem, nr = std::min(kRowsPerItem, nrows - rr);
        kern.input[m == 4 ? 1 : 0](x + c * in_plane, p.in_ch * in_plane, p.in_h, p.in_w, row_image.data() + rr,
                                   row_ih0.data() + rr, nr, -p.pw, tiles_w, v + c * tc + rr * tiles_w, e_stride);
      }
    });
  }
};

template <typename T>
void run(int m, const T* x, const T* u, const T* bias, T* out, const WinogradProblem& p) {
  const auto& kern = kernels_for<T>();
  const int which = m == 4 ? 1 : 0;
  const int64_t E = (m + 2) * (m + 2);
  TileChunks chunks(m, p, E * (p.in_ch + p.out_ch) * static_cast<int64_t>(sizeof(T)));
  const int64_t cap = chunks.rows_per_chunk * chunks.tiles_w, out_plane = p.out_h * p.out_w;
  T* v = scratch<T>(Scratch::winograd_v, E * plane_stride<T>(p.in_ch * cap));
  T* mt = scratch<T>(Scratch::winograd_m, E * plane_stride<T>(p.out_ch * cap));
  for (int64_t r0 = 0; r0 < chunks.rows; r0 += chunks.rows_per_chunk) {
    const int64_t tc = chunks.at(r0, p), vs = plane_stride<T>(p.in_ch * tc), ms = plane_stride<T>(p.out_ch * tc);
    chunks.input_transform(kern, x, p, tc, v, vs);
    at::parallel_for(0, E, 1, [&](int64_t b, int64_t e_end) {
      for (int64_t e = b; e < e_end; ++e) {
        GemmArgs<T> g;
        g.m = p.out_ch; g.n = tc; g.k = p.in_ch;
        g.alpha = T(1); g.beta = T(0);
        g.a = nullptr; g.rs_a = p.in_ch; g.cs_a = 1;
        g.a_packed = u + e * filters_a_stride<T>(p.out_ch, p.in_ch);
        g.k_block = kKBlock;
        g.b = v + e * vs; g.rs_b = tc; g.cs_b = 1;
        g.c = mt + e * ms; g.rs_c = tc; g.cs_c = 1;
        gemm(g);
      }
    });
    at::parallel_for(0, p.out_ch, 1, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) {
        kern.output[which](mt + k * tc, ms, chunks.tiles.data(), tc, p.ph, p.pw, out + k * out_plane,
                           p.out_h, p.out_w, bias != nullptr ? bias[k] : T(0));
      }
    });
  }
}

std::atomic<int64_t> tiled_max_bytes{-1};   // winograd_set_tiled_max_bytes
std::atomic<int64_t> tiled_passes{0};       // winograd_tiled_passes

// The blocks of run_tiled: at most nr tiles each (one panel of the GEMMs' B), whole rows of tiles, or
// pieces of one row where a row has more than nr tiles.
struct TileBlocks {
  int64_t tiles_h, tiles_w, rows, pieces, piece_w, rows_per_block, count;
  TileBlocks(int m, const WinogradProblem& p, int64_t nr) {
    tiles_h = (p.out_h + m - 1) / m;
    tiles_w = (p.out_w + m - 1) / m;
    rows = p.batch * tiles_h;
    pieces = std::max<int64_t>(1, (tiles_w + nr - 1) / nr);
    piece_w = (tiles_w + pieces - 1) / pieces;
    rows_per_block = pieces > 1 ? 1 : std::max<int64_t>(1, nr / std::max<int64_t>(1, tiles_w));
    count = pieces > 1 ? rows * pieces : (rows + rows_per_block - 1) / rows_per_block;
  }
};

// The bytes of one thread's ring in the tiled passes: alpha^2 + 1 planes for V and M of `block` tiles.
template <typename T>
int64_t tiled_ring_bytes(int m, const WinogradProblem& p, int64_t block) {
  const int64_t E = (m + 2) * (m + 2);
  return (E + 1) * plane_stride<T>(std::max(p.in_ch, p.out_ch) * block) * static_cast<int64_t>(sizeof(T));
}

// Whether a tiled pass takes a problem of `blocks` blocks: its thread's ring within the L2, and at
// least two blocks per thread. The filters U need not fit there too: each block streams them from the
// L3 (or memory), alpha^2 GEMMs of nr (or 32) tiles a value, which the prefetchers keep up with, where
// the chunked pass writes V and M of every tile there and reads them back, each step parallel apart.
// AMD Zen 4 (1 MiB L2), 2 threads, alternating call by call with the chunked pass: 64@56x56 batch 8
// forward 4.3-4.6 against 4.6-4.9 ms in quiet minutes, 4.9-5.1 against 7.4-7.9 in the minutes when the
// machine's shared cache and memory are busy (torch 8.6-8.8 in both); channels-last 3.3-3.8 against
// 3.9-4.5 quiet, 3.6-4.2 against 5.8-7.1 slow (torch 8.1-8.6). With U in the L3 (2026-12-05 #8, the
// caches flushed between calls, as in a training step): 128@14x14 batch 8 forward 1.22 against 1.38 ms
// (trained weight; U 2.4 MB), 1.11 against 1.28 (cached), grad_input 1.26 against 1.44; 128@28x28
// grad_input 4.45 against 5.36; 96@14x14 0.98 against 1.34; 160@14x14 2.40 against 2.83 (U 3.7 MB),
// cached 2.02 against 2.62; 16x128@14x14 2.59 against 3.56; channels-last 128@14x14 1.29 against 1.62,
// 128@28x28 3.33 against 4.03 (128@28x28 at batch 2, four uneven blocks: 1.15 against 1.08 in one
// measurement, 1.48 against 1.52 in another). The rule also bounds what a block streams: U at most
// twice the bytes of V and M that the chunked pass writes and reads back for the block's tiles
// (channels up to 8 blocks' worth, 256 for blocks of 32, where the measurements reach 192), so that an
// L2 large enough for the ring of a wider layer does not send it through the tiled pass unmeasured.
template <typename T>
bool tiled_applies(int m, const WinogradProblem& p, int64_t block, int64_t blocks) {
  const int64_t set = tiled_max_bytes.load(), most = set >= 0 ? set : l2_cache_bytes();
  if (p.in_ch == 0 || p.out_ch == 0 || blocks == 0 || tiled_ring_bytes<T>(m, p, block) > most) return false;
  if (set >= 0) return true;
  const int64_t E = (m + 2) * (m + 2), u_bytes = E * p.in_ch * p.out_ch * int64_t(sizeof(T));
  const int64_t chunked_bytes = 2 * block * E * (p.in_ch + p.out_ch) * int64_t(sizeof(T));
  return u_bytes <= 2 * chunked_bytes && blocks >= 2 * at::get_num_threads();
}

// The forward pass (NCHW) per block of at most nr tiles, each block on one thread from its input to
// its output: V of the block's tiles (packed as one panel of the GEMMs' B: rows of nr values), its
// alpha^2 products M[e] = U[e] . V[e], and the output transform. run() writes V and M of a whole chunk
// (8 MiB) and parallelises each step apart, so that a thread's GEMMs read V that the other thread
// wrote, and the output transform M that both wrote, through the L3 or memory; here a block's V and M
// stay in its thread's L2 (tiled_applies), and U streams past them from the L3. V and M share a ring of
// alpha^2 + 1 planes: M[e] goes to plane e, where V[e - 1] was (consumed by the GEMM before), and V[e]
// is in plane e + 1. Blocks are handed out one at a time (an atomic counter), so a thread slowed by a
// neighbour takes fewer. The K blocks are summed in the same order as run()'s GEMMs and the
// transforms are the same kernels: the same bits.
template <typename T>
void run_tiled(int m, const T* x, const T* u, const T* bias, T* out, const WinogradProblem& p) {
  const auto& kern = kernels_for<T>();
  const int which = m == 4 ? 1 : 0;
  const int64_t E = (m + 2) * (m + 2), C = p.in_ch, K = p.out_ch, nr = gemm_tile<T>().nr;
  const int64_t in_plane = p.in_h * p.in_w, out_plane = p.out_h * p.out_w;
  const int64_t m_pad = gemm_packed_a_elems(K, 1), u_stride = filters_a_stride<T>(K, C);
  const int64_t slot = plane_stride<T>(std::max(C, K) * nr);
  const TileBlocks blocks(m, p, nr);
  ++tiled_passes;
  std::atomic<int64_t> next{0};
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), blocks.count);
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    T* ring = scratch<T>(Scratch::winograd_v, (E + 1) * slot);
    std::fill(ring, ring + (E + 1) * slot, T(0));   // the panels' columns past a block's tiles: zeros at first
    std::vector<int64_t> row_image(blocks.rows_per_block), row_ih0(blocks.rows_per_block);
    std::vector<WinogradTile> tiles(nr);
    for (int64_t b = next++; b < blocks.count; b = next++) {
      const int64_t r0 = blocks.pieces > 1 ? b / blocks.pieces : b * blocks.rows_per_block;
      const int64_t t0 = blocks.pieces > 1 ? b % blocks.pieces * blocks.piece_w : 0;
      const int64_t nt = std::min(blocks.pieces > 1 ? blocks.piece_w : blocks.tiles_w, blocks.tiles_w - t0);
      const int64_t nrows = std::min(blocks.pieces > 1 ? 1 : blocks.rows_per_block, blocks.rows - r0), tc = nrows * nt;
      for (int64_t r = 0; r < nrows; ++r) {
        const int64_t image = (r0 + r) / blocks.tiles_h, th = (r0 + r) % blocks.tiles_h;
        row_image[r] = image;
        row_ih0[r] = th * m - p.ph;
        for (int64_t t = 0; t < nt; ++t) {
          tiles[r * nt + t] = WinogradTile{image * K * out_plane, th * m - p.ph, (t0 + t) * m - p.pw};
        }
      }
      for (int64_t c = 0; c < C; ++c) {   // V[e] in plane e + 1: row c of each holds the block's tiles
        kern.input[which](x + c * in_plane, C * in_plane, p.in_h, p.in_w, row_image.data(), row_ih0.data(), nrows,
                          t0 * m - p.pw, nt, ring + slot + c * nr, slot);
      }
      for (int64_t e = 0; e < E; ++e) {   // M[e] (K x tc) into plane e
        for (int64_t c0 = 0; c0 < C; c0 += kKBlock) {
          gemm_block(u + e * u_stride + c0 * m_pad, ring + (e + 1) * slot + c0 * nr, K, tc,
                     std::min(kKBlock, C - c0), ring + e * slot, tc, c0 > 0);
        }
      }
      for (int64_t k = 0; k < K; ++k) {
        kern.output[which](ring + k * tc, slot, tiles.data(), tc, p.ph, p.pw, out + k * out_plane, p.out_h, p.out_w,
                           bias != nullptr ? bias[k] : T(0));
      }
    }
  });
}

// The tiles of a block of the channels-last tiled pass (any run of the tile list: its transforms take
// tiles one by one) and how many blocks a problem makes.
constexpr int64_t kTiledNhwcTiles = 32;
int64_t tiled_nhwc_blocks(int m, const WinogradProblem& p) {
  const int64_t tiles = p.batch * ((p.out_h + m - 1) / m) * ((p.out_w + m - 1) / m);
  return (tiles + kTiledNhwcTiles - 1) / kTiledNhwcTiles;
}

// The channels-last pass per block of kTiledNhwcTiles tiles on one thread, as run_tiled: V[e][t][c] of
// the block's tiles, M[e] (tiles x K) = V[e] . U[e]^T by the engine on this thread (U^T prepacked as its
// B, the same K blocks as run_nhwc's GEMMs: the same bits), then the output transform; V and M in the
// thread's ring of alpha^2 + 1 planes (M[e] where V[e - 1] was). Blocks from an atomic counter.
template <typename T>
void run_tiled_nhwc(int m, const T* x, const T* u, int64_t u_stride, const T* bias, T* out, const WinogradProblem& p) {
  const auto& kern = kernels_for<T>();
  const int which = m == 4 ? 1 : 0;
  const int64_t E = (m + 2) * (m + 2), C = p.in_ch, K = p.out_ch, B = kTiledNhwcTiles;
  const int64_t tiles_h = (p.out_h + m - 1) / m, tiles_w = (p.out_w + m - 1) / m, total = p.batch * tiles_h * tiles_w;
  const int64_t slot = plane_stride<T>(std::max(C, K) * B), blocks = tiled_nhwc_blocks(m, p);
  ++tiled_passes;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(at::get_num_threads(), blocks), 1, [&](int64_t, int64_t) {
    T* ring = scratch<T>(Scratch::winograd_v, (E + 1) * slot);
    std::vector<WinogradTileNhwc> tiles(B);
    for (int64_t b = next++; b < blocks; b = next++) {
      const int64_t t0 = b * B, tc = std::min(B, total - t0);
      for (int64_t t = 0; t < tc; ++t) {
        const int64_t row = (t0 + t) / tiles_w;
        tiles[t] = WinogradTileNhwc{row / tiles_h, row % tiles_h * m - p.ph, (t0 + t) % tiles_w * m - p.pw};
      }
      kern.input_nhwc[which](x, p.in_h, p.in_w, C, tiles.data(), 0, tc, ring + slot, slot);
      for (int64_t e = 0; e < E; ++e) {
        GemmArgs<T> g;
        g.m = tc; g.n = K; g.k = C;
        g.alpha = T(1); g.beta = T(0);
        g.a = ring + (e + 1) * slot; g.rs_a = C; g.cs_a = 1;
        g.b = nullptr; g.rs_b = K; g.cs_b = 1;
        g.b_packed = u + e * u_stride;
        g.k_block = kKBlock;
        g.c = ring + e * slot; g.rs_c = K; g.cs_c = 1;
        gemm(g);
      }
      kern.output_nhwc[which](ring, slot, K, tiles.data(), 0, tc, K, K, p.ph, p.pw, out, p.out_h, p.out_w, bias);
    }
  });
}

// The channels-last pass: the same three steps with a tile's channels contiguous (V[e][t][c],
// M[e][t][k]), so that the transforms read and write NHWC pixels a vector of channels at a time, in
// parallel over tiles, and the GEMMs are M[e] (T x K) = V[e] (T x C) . U[e]^T, U[e]^T prepacked as the
// GEMM's B (transform_filters with as_b). Per chunk the sums are those of run(): the same K blocks in
// the same order.
template <typename T>
void run_nhwc(int m, const T* x, const T* u, int64_t u_stride, const T* bias, T* out, const WinogradProblem& p) {
  const auto& kern = kernels_for<T>();
  const int which = m == 4 ? 1 : 0;
  const int64_t E = (m + 2) * (m + 2), C = p.in_ch, K = p.out_ch;
  TileChunks chunks(m, p, E * (C + K) * static_cast<int64_t>(sizeof(T)));
  const int64_t cap = chunks.rows_per_chunk * chunks.tiles_w;
  T* v = scratch<T>(Scratch::winograd_v, E * plane_stride<T>(C * cap));
  T* mt = scratch<T>(Scratch::winograd_m, E * plane_stride<T>(K * cap));
  for (int64_t r0 = 0; r0 < chunks.rows; r0 += chunks.rows_per_chunk) {
    const int64_t tc = chunks.at_nhwc(r0, p), vs = plane_stride<T>(C * tc), ms = plane_stride<T>(K * tc);
    const WinogradTileNhwc* tiles = chunks.nhwc.data();
    at::parallel_for(0, tc, 1, [&](int64_t b, int64_t e) {
      kern.input_nhwc[which](x, p.in_h, p.in_w, C, tiles, b, e, v, vs);
    });
    at::parallel_for(0, E, 1, [&](int64_t b, int64_t e_end) {
      for (int64_t e = b; e < e_end; ++e) {
        GemmArgs<T> g;
        g.m = tc; g.n = K; g.k = C;
        g.alpha = T(1); g.beta = T(0);
        g.a = v + e * vs; g.rs_a = C; g.cs_a = 1;
        g.b = nullptr; g.rs_b = K; g.cs_b = 1;
        g.b_packed = u + e * u_stride;
        g.k_block = kKBlock;
        g.c = mt + e * ms; g.rs_c = K; g.cs_c = 1;
        gemm(g);
      }
    });
    at::parallel_for(0, tc, 1, [&](int64_t b, int64_t e) {
      kern.output_nhwc[which](mt, ms, K, tiles, b, e, K, K, p.ph, p.pw, out, p.out_h, p.out_w, bias);
    });
  }
}

std::atomic<int64_t> fused_min_bytes{-1};   // winograd_set_fused_min_bytes
std::atomic<int64_t> fused_passes{0};       // winograd_fused_passes

// The forward pass fused per block of output channels, for filters transformed for this call only (a
// weight that requires grad: trained, so not cached). run() writes all of U (alpha^2 x K x C values:
// 16.8 MB for ResNet-18's 512-channel layer in F(2x2), 9.4 MB for its 256-channel one in F(4x4)) to
// memory and its GEMMs read it back. Here V is transformed and packed once (all tiles: one chunk),
// then each thread takes a block of kb output channels at a time and, per K block of kKBlock input
// channels, transforms that slice of the block's filters into packed panels (in its L1/L2) and adds
// their products with V's slice into the block's M (kept in its L2); then the output transform of the
// block's channels. U never leaves the cache, and there is one parallel region after the input
// transform where run() has three per chunk. The K blocks are summed in the same order as run()'s
// GEMMs, so the results are the same bits. False where a filter value is a NaN or an infinity (the
// caller declines, as for a declined transform).
template <typename T>
bool run_fused(int m, const T* x, const T* w, int64_t s_out, int64_t s_in, int64_t s_i, int64_t s_j, const T* bias,
               T* out, const WinogradProblem& p, bool nhwc) {
  const auto& kern = kernels_for<T>();
  const int which = m == 4 ? 1 : 0;
  const int64_t E = (m + 2) * (m + 2), K = p.out_ch, C = p.in_ch, out_plane = p.out_h * p.out_w;
  const int64_t elem = static_cast<int64_t>(sizeof(T));
  TileChunks chunks(m, p, E * (C + K) * elem);
  const int64_t tc = nhwc ? chunks.at_nhwc(0, p) : chunks.at(0, p);
  TORCH_INTERNAL_ASSERT(tc == chunks.rows * chunks.tiles_w, "run_fused: the tiles must make one chunk");
  ++fused_passes;
  const int64_t vs = plane_stride<T>(C * tc);
  T* v = scratch<T>(Scratch::winograd_v, E * vs);
  if (nhwc) {
    at::parallel_for(0, tc, 1, [&](int64_t b, int64_t e) {
      kern.input_nhwc[which](x, p.in_h, p.in_w, C, chunks.nhwc.data(), b, e, v, vs);
    });
  } else {
    chunks.input_transform(kern, x, p, tc, v, vs);
  }
  // V[e] packed (K blocks of kKBlock channels), each 64-byte aligned: the GEMMs' B (tc columns), or
  // their A (tc rows) in the channels-last pass, where the filters are B
  const GemmTile tile = gemm_tile<T>();
  const int64_t pr = nhwc ? tile.nr : tile.mr, tr = nhwc ? tile.mr : tile.nr;   // filters' and tiles' panels
  const int64_t t_pad = (tc + tr - 1) / tr * tr;
  const int64_t vp_stride = plane_stride<T>(t_pad * C);
  T* vp = scratch<T>(Scratch::winograd_vp, E * vp_stride);
  at::parallel_for(0, E, 1, [&](int64_t b, int64_t e_end) {
    for (int64_t e = b; e < e_end; ++e) {
      GemmArgs<T> g;
      g.k = C; g.k_block = kKBlock;
      if (nhwc) {
        g.m = tc; g.a = v + e * vs; g.rs_a = C; g.cs_a = 1;
        gemm_pack_a(g, vp + e * vp_stride);
      } else {
        g.n = tc; g.b = v + e * vs; g.rs_b = tc; g.cs_b = 1;
        gemm_pack_b(g, vp + e * vp_stride);
      }
    }
  });
  // kb: a block's filter panels for one K block (E x kb x kKBlock) and its products M (E x kb x tc)
  // within half the L2, and at least 4 blocks per thread so that they share out evenly; a multiple of
  // the filter panels' width.
  const int64_t threads = at::get_num_threads();
  int64_t kb = std::min<int64_t>(l2_cache_bytes() / 2 / (E * elem * (kKBlock + tc)),
                                 (K + 4 * threads - 1) / (4 * threads));
  kb = std::max(pr, kb / pr * pr);
  // A block's U[e] panels are planes (plane_stride): the transform stores each vector of filters to all
  // E of them, and at k_pad x kc apart (a multiple of 4 KiB with the channels-last passes' 16-wide
  // panels and K blocks of 64; every other 2 KiB with AVX-512's 8-row ones) those stores fell in one or
  // two L1 sets. AMD Zen 3, 2 threads, 512@4x4 channels-last (F(2x2), 16 streams): forward 3.6-4.5 ->
  // 3.0-3.1 ms; 256@7x7 (F(4x4), 36): 2.1-2.2 -> 1.7.
  std::atomic<bool> finite{true};
  at::parallel_for(0, (K + kb - 1) / kb, 1, [&](int64_t b0, int64_t b1) {
    T* ub = scratch<T>(Scratch::winograd_u, E * plane_stride<T>(kb * kKBlock));
    T* mb = scratch<T>(Scratch::winograd_m, E * plane_stride<T>(kb * tc));
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t k0 = blk * kb, kn = std::min(kb, K - k0), k_pad = (kn + pr - 1) / pr * pr;
      const int64_t ms = plane_stride<T>(kn * tc);   // M's planes
      for (int64_t c0 = 0; c0 < C; c0 += kKBlock) {
        const int64_t kc = std::min(kKBlock, C - c0);
        for (int64_t r0 = 0; r0 < kn; r0 += pr) {   // U[e]'s (or U[e]^T's) panels for these filters and channels
          if (!kern.filter[which](w + (k0 + r0) * s_out + c0 * s_in, s_out, s_in, s_i, s_j, std::min(pr, kn - r0), pr,
                                  kc, ub + r0 * kc, plane_stride<T>(k_pad * kc))) {
            finite = false;
          }
        }
        for (int64_t e = 0; e < E; ++e) {   // M[e] (+)= U[e] . V[e] over these channels, or M[e]^T = V[e]^T U[e]^T
          const T* u_e = ub + e * plane_stride<T>(k_pad * kc);
          const T* v_e = vp + e * vp_stride + c0 * t_pad;
          if (nhwc) {
            gemm_block(v_e, u_e, tc, kn, kc, mb + e * ms, kn, c0 > 0);
          } else {
            gemm_block(u_e, v_e, kn, tc, kc, mb + e * ms, tc, c0 > 0);
          }
        }
      }
      if (nhwc) {
        kern.output_nhwc[which](mb, ms, kn, chunks.nhwc.data(), 0, tc, K, kn, p.ph, p.pw, out + k0, p.out_h,
                                p.out_w, bias != nullptr ? bias + k0 : nullptr);
        continue;
      }
      for (int64_t k = 0; k < kn; ++k) {
        kern.output[which](mb + k * tc, ms, chunks.tiles.data(), tc, p.ph, p.pw, out + (k0 + k) * out_plane,
                           p.out_h, p.out_w, bias != nullptr ? bias[k0 + k] : T(0));
      }
    }
  });
  return finite.load();
}

// Whether run_fused takes a problem whose filters are transformed for this call: its tiles make one
// chunk (V and every block's products stay small), and U is larger than 4 L2s, so that run() would
// stream it from the L3 or memory (the rule's measurements: README).
bool fused_applies(int m, const WinogradProblem& p, int64_t elem) {
  const int64_t E = (m + 2) * (m + 2);
  const int64_t set = fused_min_bytes.load(), least = set >= 0 ? set : 4 * l2_cache_bytes();
  if (E * p.in_ch * p.out_ch * elem <= least) return false;   // before the chunking: most calls stop here
  const TileChunks chunks(m, p, E * (p.in_ch + p.out_ch) * elem);
  return chunks.rows > 0 && chunks.tiles_w > 0 && chunks.rows_per_chunk >= chunks.rows;
}

// The weight gradient (Winograd's own form, Lavin & Gray's adjoint): per chunk, V = B^T d B of the
// input tiles (as the forward pass) and dM = A dY A^T of grad_output's, then alpha^2 GEMMs
// dU[e] (K x C) += dM[e] (K x tiles) . V[e]^T, parallel over e; at the end dw = G^T dU G per filter.
// F(4x4) does 36 multiplies per 16 outputs of each (k, c) pair where im2col does 144. Channels-last
// x and dy (nhwc): V[e][t][c] and dM[e][t][k] by the NHWC transforms, parallel over tiles.
template <typename T>
void run_grad_weight(int m, const T* x, const T* dy, T* dw, at::IntArrayRef dw_strides, const WinogradProblem& p,
                     bool nhwc) {
  const auto& kern = kernels_for<T>();
  const int which = m == 4 ? 1 : 0;
  const int64_t E = (m + 2) * (m + 2), K = p.out_ch, C = p.in_ch;
  TileChunks chunks(m, p, E * (C + K) * static_cast<int64_t>(sizeof(T)));
  if (chunks.rows == 0 || chunks.tiles_w == 0) {   // no output positions: no products (dw is dense)
    std::fill(dw, dw + K * C * 9, T(0));
    return;
  }
  const int64_t cap = chunks.rows_per_chunk * chunks.tiles_w, out_plane = p.out_h * p.out_w;
  T* v = scratch<T>(Scratch::winograd_v, E * plane_stride<T>(C * cap));
  T* dm = scratch<T>(Scratch::winograd_m, E * plane_stride<T>(K * cap));
  const int64_t du_stride = plane_stride<T>(K * C);
  T* du = scratch<T>(Scratch::winograd_u, E * du_stride);
  for (int64_t r0 = 0; r0 < chunks.rows; r0 += chunks.rows_per_chunk) {
    const int64_t tc = nhwc ? chunks.at_nhwc(r0, p) : chunks.at(r0, p);
    const int64_t vs = plane_stride<T>(C * tc), ms = plane_stride<T>(K * tc);
    if (nhwc) {
      const WinogradTileNhwc* tiles = chunks.nhwc.data();
      at::parallel_for(0, tc, 1, [&](int64_t b, int64_t e) {
        kern.input_nhwc[which](x, p.in_h, p.in_w, C, tiles, b, e, v, vs);
        kern.output_adjoint_nhwc[which](dy, p.out_h, p.out_w, K, tiles, b, e, p.ph, p.pw, dm, ms);
      });
    } else {
      chunks.input_transform(kern, x, p, tc, v, vs);
      at::parallel_for(0, K, 1, [&](int64_t b, int64_t e) {
        for (int64_t k = b; k < e; ++k) {
          kern.output_adjoint[which](dy + k * out_plane, p.out_h, p.out_w, chunks.tiles.data(), tc, p.ph, p.pw,
                                     dm + k * tc, ms);
        }
      });
    }
    // element (k, t) of dM[e] and (t, c) of V[e]: at [k][t] and [c][t], or [t][k] and [t][c] (nhwc)
    const int64_t dm_k = nhwc ? 1 : tc, dm_t = nhwc ? K : 1, v_t = nhwc ? C : 1, v_c = nhwc ? 1 : tc;
    at::parallel_for(0, E, 1, [&](int64_t b, int64_t e_end) {
      for (int64_t e = b; e < e_end; ++e) {
        GemmArgs<T> g;
        g.m = K; g.n = C; g.k = tc;
        g.alpha = T(1); g.beta = r0 == 0 ? T(0) : T(1);
        g.k_block = kKBlock;
        g.a = dm + e * ms; g.rs_a = dm_k; g.cs_a = dm_t;
        g.b = v + e * vs; g.rs_b = v_t; g.cs_b = v_c;   // V[e]^T
        g.c = du + e * du_stride; g.rs_c = C; g.cs_c = 1;
        gemm(g);
      }
    });
  }
  at::parallel_for(0, K, 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      kern.filter_adjoint[which](du + k * C, du_stride, C, dw + k * dw_strides[0], dw_strides[1], dw_strides[2],
                                 dw_strides[3]);
    }
  });
}

// U[e] (kout x cin) for the filters w viewed through the strides (see WinogradKernels::filter), each
// in the GEMM engine's packed-A form, which the alpha^2 GEMMs then read without packing: K blocks of
// kKBlock columns, each holding the micro-panels of mr rows, every panel written by the transform
// itself (a whole vector per store), in parallel over (panel, K block). A transform the cache keeps
// gets its own tensor; one used once (a trained weight's, every step) is built in scratch memory, so
// each step does not fault in fresh pages for it. (Transforming into a k x c matrix and packing that
// took twice as long: ResNet-18's 512-channel layer, 6.2 ms a call on the EPYC, 2 threads.) Each
// vector's 9 filter values come by gather instructions: reading them lane by lane into a buffer cost
// 2.5x as much (512 channels, F(2x2), one thread on the Intel Xeon: 1.25 -> 0.5 ms; a ResNet-18
// training step at batch 8, 112 px, 2 threads: 129 -> 123 ms). With as_b, U[e]^T (cin x kout) in the
// packed-B form instead, for the channels-last passes: the same panels, nr columns wide in place of mr
// rows tall, so the same kernel writes them. A weight
// with a NaN or an infinity, seen by the transform as it reads it, gets an empty tensor (kept by the
// cache like any other transform while the weight's bytes stay the same): the callers then decline.
template <typename T>
at::Tensor transform_filters(int m, const T* w, int64_t s_out, int64_t s_in, int64_t s_i, int64_t s_j, int64_t kout,
                             int64_t cin, bool keep, bool as_b) {
  const auto& kern = kernels_for<T>();
  const int64_t E = (m + 2) * (m + 2), mr = as_b ? gemm_tile<T>().nr : gemm_tile<T>().mr;
  const int64_t packed = as_b ? filters_b_stride<T>(kout, cin) : filters_a_stride<T>(kout, cin);
  const int64_t panels = (kout + mr - 1) / mr, m_pad = panels * mr;
  TORCH_INTERNAL_ASSERT(mr <= kMaxPanelRows, "Winograd's filter panels hold at most ", kMaxPanelRows, " rows, not ", mr);
  const int64_t blocks = (cin + kKBlock - 1) / kKBlock;
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor out = keep ? at::empty({E, packed}, opts)
                        : at::from_blob(scratch<T>(Scratch::winograd_u, E * packed), {E, packed}, opts);
  T* u = out.data_ptr<T>();
  std::atomic<bool> finite{true};
  at::parallel_for(0, blocks * panels, 1, [&](int64_t b, int64_t e) {
    for (int64_t item = b; item < e; ++item) {
      const int64_t c0 = item / panels * kKBlock, k0 = item % panels * mr, kc = std::min(kKBlock, cin - c0);
      if (!kern.filter[m == 4 ? 1 : 0](w + k0 * s_out + c0 * s_in, s_out, s_in, s_i, s_j, std::min(mr, kout - k0),
                                       mr, kc, u + c0 * m_pad + k0 * kc, packed)) {
        finite = false;
      }
    }
  });
  return finite.load() ? out : at::empty({0}, opts);
}

}  // namespace

// Half precision (float16, bfloat16) runs in float32 in both directions: the values widened (exactly),
// the transforms and GEMMs in float32, the result rounded once to nearest even. Its error is float32
// Winograd's (README's accuracy table), far below the half-precision rounding of the output. The
// cache keys on the caller's weight, whatever its dtype: its float32 transform is what is kept.

namespace {

// Whether a pass reads `in` and writes `out` channels-last (run_nhwc): both dense in that layout, and not
// both plain contiguous too (a tensor of one channel or one pixel is both; NCHW is then run()'s).
bool channels_last_pass(const at::Tensor& in, const at::Tensor& out) {
  constexpr auto cl = at::MemoryFormat::ChannelsLast;
  return in.dim() == 4 && in.is_contiguous(cl) && out.is_contiguous(cl) && !(in.is_contiguous() && out.is_contiguous());
}

// Forward and grad_input are one pass: an input (x, or dy) through transformed 3x3 filters into an
// output (y, or dx). The forward's filters are w[k][c][i][j]; grad_input's are w flipped and
// transposed, g'[c][k][i][j] = w[k][c][2 - i][2 - j], read in place (start at w[0][0][2][2] and step
// back). Each orientation has its own cache entry. False where the transform declined (a non-finite
// weight: the caller runs im2col).
bool forward_pass(const at::Tensor& in_in, const at::Tensor& weight, const at::Tensor& bias_in, at::Tensor& out_in,
                  const WinogradProblem& p, int m, bool flipped, const char* op) {
  const at::Tensor in = half_as_float(in_in), bias = half_as_float(bias_in);
  const bool nhwc = channels_last_pass(in, out_in);
  at::Tensor out = in.scalar_type() == out_in.scalar_type()
                       ? out_in
                       : at::empty(out_in.sizes(), in.options().memory_format(nhwc ? at::MemoryFormat::ChannelsLast
                                                                                  : at::MemoryFormat::Contiguous));
  bool done = false;
  const auto pass = [&](auto zero) {   // float or double: half precision is float32 here
    using scalar_t = decltype(zero);
    // use(g, s_out, s_in, s_i, s_j) with this pass's filters g[k][c] read in place through the weight's
    // strides (widened when half, only when they are read): w[k][c], or flipped and transposed,
    // w[c][k][2 - i][2 - j]
    const auto with_filters = [&](const auto& use) {
      const at::Tensor w = half_as_float(weight);
      const int64_t s_i = w.stride(2), s_j = w.stride(3);
      if (!flipped) return use(w.data_ptr<scalar_t>(), w.stride(0), w.stride(1), s_i, s_j);
      return use(w.data_ptr<scalar_t>() + 2 * s_i + 2 * s_j, w.stride(1), w.stride(0), -s_i, -s_j);
    };
    const bool cacheable = WeightCache::cacheable(weight);
    if (!cacheable && fused_applies(m, p, sizeof(scalar_t))) {
      done = with_filters([&](const scalar_t* g, int64_t s_out, int64_t s_in, int64_t s_i, int64_t s_j) {
        return run_fused<scalar_t>(m, in.data_ptr<scalar_t>(), g, s_out, s_in, s_i, s_j,
                                   bias.defined() ? bias.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), p,
                                   nhwc);
      });
      return;
    }
    // U[e] packed as the GEMMs' A, or (channels-last) U[e]^T as their B: two cache entries
    const int64_t kind = nhwc ? WeightCache::winograd_nhwc(m, flipped) : WeightCache::winograd(m, flipped);
    const at::Tensor u = WeightCache::instance().get(weight, WeightCache::for_isa(kind, int(active_isa())), [&] {
      return with_filters([&](const scalar_t* g, int64_t s_out, int64_t s_in, int64_t s_i, int64_t s_j) {
        return transform_filters<scalar_t>(m, g, s_out, s_in, s_i, s_j, p.out_ch, p.in_ch, cacheable, nhwc);
      });
    });
    if (u.numel() == 0) return;
    if (nhwc) {
      const bool tiled = tiled_applies<scalar_t>(m, p, kTiledNhwcTiles, tiled_nhwc_blocks(m, p));
      const auto run_pass = tiled ? run_tiled_nhwc<scalar_t> : run_nhwc<scalar_t>;
      run_pass(m, in.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), u.size(1),
               bias.defined() ? bias.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), p);
      done = true;
      return;
    }
    const int64_t nr = gemm_tile<scalar_t>().nr;
    const bool tiled = tiled_applies<scalar_t>(m, p, nr, TileBlocks(m, p, nr).count);
    const auto run_pass = tiled ? run_tiled<scalar_t> : run<scalar_t>;
    run_pass(m, in.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), bias.defined() ? bias.data_ptr<scalar_t>() : nullptr,
             out.data_ptr<scalar_t>(), p);
    done = true;
  };
  FC_CHECK(in.scalar_type() == at::kFloat || in.scalar_type() == at::kDouble, op,
           "Winograd runs float32 or float64, but got ", in.scalar_type());
  if (in.scalar_type() == at::kDouble) {
    pass(0.0);
  } else {
    pass(0.0f);
  }
  if (done && !out.is_same(out_in)) out_in.copy_(out);   // rounded to nearest even
  return done;
}

}  // namespace

int64_t winograd_set_fused_min_bytes(int64_t bytes) { return fused_min_bytes.exchange(bytes); }
int64_t winograd_fused_passes() { return fused_passes.load(); }
int64_t winograd_set_tiled_max_bytes(int64_t bytes) { return tiled_max_bytes.exchange(bytes); }
int64_t winograd_tiled_passes() { return tiled_passes.load(); }

bool conv2d_winograd_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, at::Tensor& out,
                             const Conv2dShape& s, int m) {
  const auto& g = s.g;
  const WinogradProblem p{s.batch, s.in_channels, s.out_channels, g.in_h, g.in_w, g.out_h, g.out_w, g.ph, g.pw};
  return forward_pass(x, weight, bias, out, p, m, false, "conv2d");
}

// dx[c][ih][iw] = sum over k, i, j of dy[k][ih + i - (2 - ph)][iw + j - (2 - pw)] * w[k][c][2 - i][2 - j]:
// the forward pass on grad_output with the flipped, transposed filters and padding 2 - p.
bool conv2d_winograd_grad_input(const at::Tensor& dy, const at::Tensor& weight, at::Tensor& dx,
                                const Conv2dShape& s, int m) {
  const auto& g = s.g;
  const WinogradProblem p{s.batch, s.out_channels, s.in_channels, g.out_h, g.out_w, g.in_h, g.in_w, 2 - g.ph,
                          2 - g.pw};
  return forward_pass(dy, weight, at::Tensor(), dx, p, m, true, "conv2d_backward");
}

void conv2d_winograd_grad_weight(const at::Tensor& x_in, const at::Tensor& dy_in, at::Tensor& dw_in,
                                 const Conv2dShape& s, int m) {
  const auto& g = s.g;
  const at::Tensor x = half_as_float(x_in), dy = half_as_float(dy_in);
  at::Tensor dw = x.scalar_type() == dw_in.scalar_type() ? dw_in : at::empty_like(dw_in, x.options());
  const bool nhwc = channels_last_pass(x, dy);
  TORCH_INTERNAL_ASSERT(nhwc || (x.is_contiguous() && dy.is_contiguous()),
                        "Winograd grad_weight: x and dy in one layout");
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv2d_backward", [&] {
    const WinogradProblem p{s.batch, s.in_channels, s.out_channels, g.in_h, g.in_w, g.out_h, g.out_w, g.ph, g.pw};
    run_grad_weight<scalar_t>(m, x.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>(),
                              dw.strides(), p, nhwc);
  });
  if (!dw.is_same(dw_in)) dw_in.copy_(dw);   // rounded to nearest even
}

}  // namespace fastconv::cpu
