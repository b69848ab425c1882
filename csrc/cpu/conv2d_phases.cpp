// grad_weight without lowering, for strided convolutions: dW^T (T x K) = cols . dY^T, where the GEMM's
// A is the column matrix with a row per tap, read where it lies, and B = dY^T.
//
// The input is split into stride phases, zero-padded: plane (n, c, a, b) holds the padded pixels
// (i sh + a, j sw + b), so that tap (c, r, s)'s values at the out_w positions of one output row are one
// run of consecutive values, in plane (c, r dh % sh, s dw % sw) from row oy + r dh / sh, column
// s dw / sw. A K block of the GEMM is whole output rows: their runs lie seg_off apart (gemm_gathered,
// the micro-kernel reading A in place). B is those rows of grad_output, their output channels the
// columns of the GEMM's panels (NCHW: transposed a block at a time; channels-last: copied). Output
// rows are shared out to the threads, each summing its own dW^T (sum_in_parts), transposed into dW at
// the end.
//
// What it saves against the lowered path (conv2d.cpp: grad_weight_impl, conv2d_nhwc.cpp:
// grad_weight_by_offsets), which packs every position's T taps (stride 2: gathered in pairs) and A =
// dY besides. Measured with the two alternating in one process (AMD Zen 3, 2 threads, batch 8):
// ResNet-18's stem (7x7 stride 2 over 3 channels, 112^2) 4.0-4.5 -> 3.2-3.4 ms NCHW, 4.1 -> 3.4
// channels-last (torch 3.7-4.0); a 5x5 stride-2 layer of 32 -> 64 channels 8-10% faster; MobileNet-v2's
// 3x3 stem over 3 channels channels-last 0.87 -> 0.66 ms, but NCHW 5% slower; 3x3 layers of 64+
// channels even to 6% slower NCHW, 11-17% slower channels-last (whose phases are gathered channel by
// channel). Hence kMinPhaseTaps, and kFewChannels for channels-last. Rows of a few outputs make short
// runs, each a reload of the tile's row pointers: at out_w 4 it ran 15% slower than the lowering, at 7
// even; hence kMinPhaseRun.
#include "cpu/conv2d_phases.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "cpu/gemm_kernels.h"
#include "cpu/memory.h"

namespace fastconv::cpu {
namespace {

constexpr int64_t kMinPhaseRun = 14, kMinPhaseTaps = 25, kFewChannels = 16;

std::atomic<int64_t> phase_passes{0};   // conv2d_phase_passes

struct PhasePlanes {
  int64_t PH, PW, plane, image;   // rows and columns of a phase plane, its values, an image's
};

PhasePlanes phase_planes(const Conv2dShape& s) {
  const auto& g = s.g;
  PhasePlanes p;
  p.PH = (g.in_h + 2 * g.ph + g.sh - 1) / g.sh;
  p.PW = (g.in_w + 2 * g.pw + g.sw - 1) / g.sw;
  p.plane = p.PH * p.PW;
  p.image = s.in_channels * g.sh * g.sw * p.plane;
  return p;
}

// The phase planes of every image and channel of x (NCHW or NHWC), zeros where they are padding.
template <typename T>
void split_phases(const T* x, const Conv2dShape& s, const PhasePlanes& p, bool channels_last, T* out) {
  const auto& g = s.g;
  const int64_t C = s.in_channels;
  const int64_t c_step = channels_last ? 1 : g.in_h * g.in_w, w_step = channels_last ? C : 1;
  at::parallel_for(0, s.batch * C, 1, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) {
      const T* src = x + e / C * C * g.in_h * g.in_w + e % C * c_step;   // (n, c, 0, 0)
      T* dst = out + e * g.sh * g.sw * p.plane;
      for (int64_t a = 0; a < g.sh; ++a) {
        for (int64_t i = 0; i < p.PH; ++i) {
          const int64_t h = i * g.sh + a - g.ph;
          for (int64_t b = 0; b < g.sw; ++b) {
            T* row = dst + ((a * g.sw + b) * p.PH + i) * p.PW;
            if (h < 0 || h >= g.in_h) {
              std::fill(row, row + p.PW, T(0));
              continue;
            }
            const T* line = src + h * g.in_w * w_step;
            for (int64_t j = 0; j < p.PW; ++j) {
              const int64_t w = j * g.sw + b - g.pw;
              row[j] = w >= 0 && w < g.in_w ? line[w * w_step] : T(0);
            }
          }
        }
      }
    }
  });
}

}  // namespace

template <typename T>
bool grad_weight_by_phases(const Conv2dShape& s, bool channels_last) {
  const auto& g = s.g;
  const bool pays = g.kh * g.kw >= kMinPhaseTaps || (channels_last && s.in_channels < kFewChannels);
  return s.groups == 1 && (g.sh > 1 || g.sw > 1) && pays && g.out_w >= kMinPhaseRun &&
         g.out_w <= gemm_tile<T>().k_block && s.batch * g.out_h * s.in_channels * s.out_channels > 0 &&
         s.batch * phase_planes(s).image * int64_t(sizeof(T)) <= int64_t(kWorkspaceBytes);
}

template <typename T>
void conv2d_grad_weight_phases(const T* dy, const T* x, T* dw, const Conv2dShape& s, bool channels_last) {
  const auto& g = s.g;
  ++phase_passes;
  const PhasePlanes pp = phase_planes(s);
  T* phases = scratch<T>(Scratch::conv_pad, s.batch * pp.image);
  split_phases(x, s, pp, channels_last, phases);
  const int64_t C = s.in_channels, K = s.out_channels, taps = C * g.kh * g.kw, P = g.out_h * g.out_w;
  const GemmTile tile = gemm_tile<T>();
  const int64_t units = s.batch * g.out_h, threads = at::get_num_threads();   // output rows
  // Whole output rows per K block, and at least one block per thread.
  const int64_t rows_per_block = std::clamp<int64_t>((units + threads - 1) / threads, 1, tile.k_block / g.out_w);
  const int64_t n_pad = (K + tile.nr - 1) / tile.nr * tile.nr;
  std::vector<const T*> tap_at(static_cast<size_t>(taps));   // row t of A (dW's order): its run at row 0
  for (int64_t t = 0; t < taps; ++t) {
    const int64_t c = channels_last ? t % C : t / (g.kh * g.kw);
    const int64_t i = (channels_last ? t / C / g.kw : t / g.kw % g.kh) * g.dh;
    const int64_t j = (channels_last ? t / C % g.kw : t % g.kw) * g.dw;
    tap_at[t] = phases + ((c * g.sh + i % g.sh) * g.sw + j % g.sw) * pp.plane + i / g.sh * pp.PW + j / g.sw;
  }
  const auto sum_rows = [&](int64_t u0, int64_t u1, T* acc) {   // output rows [u0, u1) into acc (T x K)
    T* bp = scratch<T>(Scratch::conv_cols, rows_per_block * g.out_w * n_pad);
    int64_t seg_off[kGemmMaxKBlock];
    bool first = true;
    for (int64_t r0 = u0; r0 < u1; r0 += rows_per_block) {
      const int64_t segs = std::min(rows_per_block, u1 - r0), kc = segs * g.out_w;
      if (K % tile.nr != 0) std::fill(bp + K / tile.nr * tile.nr * kc, bp + n_pad * kc, T(0));
      for (int64_t q = 0; q < segs; ++q) {
        const int64_t n = (r0 + q) / g.out_h, oy = (r0 + q) % g.out_h;
        seg_off[q] = n * pp.image + oy * pp.PW;
        for (int64_t j0 = 0; j0 < K; j0 += tile.nr) {   // the row's B values, panel by panel
          T* dst = bp + j0 * kc + q * g.out_w * tile.nr;
          const int64_t w = std::min(tile.nr, K - j0);
          if (channels_last) {
            const T* src = dy + ((n * g.out_h + oy) * g.out_w) * K + j0;
            for (int64_t ox = 0; ox < g.out_w; ++ox) std::copy(src + ox * K, src + ox * K + w, dst + ox * tile.nr);
          } else {
            gemm_transpose(dy + (n * K + j0) * P + oy * g.out_w, w, g.out_w, P, dst, tile.nr);
          }
        }
      }
      GatheredRows<T> a;
      a.rows = tap_at.data();
      a.m = taps;
      a.segs = segs;
      a.len = g.out_w;
      a.stride = 0;
      a.seg_off = seg_off;
      gemm_gathered(a, bp, K, acc, K, first ? T(0) : T(1));
      first = false;
    }
    if (first) std::fill(acc, acc + taps * K, T(0));
  };
  const int64_t parts = std::min<int64_t>(threads, (units + rows_per_block - 1) / rows_per_block);
  T* acc = scratch<T>(Scratch::conv_prod, taps * K);
  if (parts <= 1) {
    sum_rows(0, units, acc);
  } else {
    sum_in_parts(parts, units, taps * K, acc, sum_rows);
  }
  at::parallel_for(0, K, 16, [&](int64_t k0, int64_t k1) {   // dW = (dW^T)^T
    gemm_transpose(acc + k0, taps, k1 - k0, K, dw + k0 * taps, taps);
  });
}

int64_t conv2d_phase_passes() { return phase_passes.load(); }

template bool grad_weight_by_phases<float>(const Conv2dShape&, bool);
template bool grad_weight_by_phases<double>(const Conv2dShape&, bool);
template void conv2d_grad_weight_phases<float>(const float*, const float*, float*, const Conv2dShape&, bool);
template void conv2d_grad_weight_phases<double>(const double*, const double*, double*, const Conv2dShape&, bool);

}  // namespace fastconv::cpu
