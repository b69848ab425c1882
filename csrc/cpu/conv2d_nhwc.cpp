// CPU convolution by im2col + the GEMM engine on channels-last (NHWC) tensors, without NCHW copies.
//
// In NHWC an output position's row of im2col's matrix is kh*kw runs of Cg contiguous channels, and the
// output positions of the whole batch are the rows of one (N*P) x K matrix. So the GEMMs are
// transposed against the NCHW path's (conv2d.cpp), per group g (taps t = (i, j, c), T = kh*kw*Cg):
//   forward      out[q][g*Kg + k] = sum_t cols[q][t] W_g[k][t]      (+ bias)   M = rows, N = Kg, K = T
//   grad_input   dcols[q][t] = sum_k dY[q][g*Kg + k] W_g[k][t], then col2im adds each run back
//                                                                            M = rows, N = T, K = Kg
//   grad_weight  dW_g[k][t] += sum_q dY[q][g*Kg + k] cols[q][t]            M = Kg, N = T, K = rows
// where q runs over the output positions of all images (row q = n*P + p), W_g[k][t] is the channels-
// last weight (K x kh x kw x Cg, read in place when the weight is channels-last) and dW is written
// channels-last, the format torch gives it. The output and grad_input are written in place, already
// channels-last.
//
// Rows are taken kRowsBytes of columns at a time, so a chunk's columns stay in L2 between being lowered
// and read by the GEMM (at least kMinRows rows, so that each packed weight panel serves many). Work items
// are bundles of whole images (one image when it has at least a chunk of positions): grad_input's
// col2im then never has two threads adding to one image. With at least as many items as threads the
// items run in parallel, each GEMM on one thread over the weights packed once per call, or kept by
// the weight cache for a frozen weight (forward, grad_input) or into a partial dW per thread (grad_weight, added at the end); with fewer, the items run
// in order and the GEMMs are parallel inside. 1x1 stride-1 unpadded convolutions read the input rows,
// and write grad_input's, in place. Layers of few taps (one group, kh * kw * C within a K block: the
// stems, 1x1 stride-2 layers) lower nothing forward (forward_gathered reads the kernel rows in a padded
// copy where they lie) nor, with several taps, for grad_weight (grad_weight_by_offsets packs them).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "common/conv2d.h"
#include "common/conv2d_args.h"
#include "common/weight_cache.h"
#include "cpu/conv2d_nhwc.h"
#include "cpu/conv2d_phases.h"
#include "cpu/gemm_kernels.h"
#include "cpu/isa.h"
#include "cpu/memory.h"

namespace fastconv::cpu {
namespace {

constexpr int64_t kRowsBytes = int64_t(384) << 10;
constexpr int64_t kMinRows = 128;

struct NhwcPlan {
  int64_t C, K, cg, kg, T, P, rows_total;
  int64_t chunk;    // rows per GEMM
  int64_t bundle;   // images per work item
  int64_t items;    // bundles x groups
  bool pointwise, parallel_items;
};

NhwcPlan plan_of(const Conv2dShape& s, int64_t elem) {
  const auto& g = s.g;
  NhwcPlan p;
  p.C = s.in_channels;
  p.K = s.out_channels;
  p.cg = s.in_channels / s.groups;
  p.kg = s.out_channels / s.groups;
  p.T = p.cg * g.kh * g.kw;
  p.P = g.out_h * g.out_w;
  p.rows_total = s.batch * p.P;
  p.pointwise = g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
  p.chunk = std::max<int64_t>(kMinRows, kRowsBytes / std::max<int64_t>(1, p.T * elem) / 8 * 8);
  p.bundle = p.P >= p.chunk ? 1 : std::max<int64_t>(1, p.chunk / std::max<int64_t>(1, p.P));
  p.bundle = std::min(p.bundle, std::max<int64_t>(1, s.batch));
  // As many bundles as make whole rounds of items for the threads, where the batch has the images:
  // bundles of the most images a chunk holds left 8 images of 14x14 as bundles of 7 and 1, one thread
  // doing seven eighths of the work (ResNet-18's 1x1 stride-2 layers in channels-last).
  const int64_t threads = at::get_num_threads();
  const int64_t per_round = threads / std::gcd(threads, std::max<int64_t>(1, s.groups));   // bundles
  const int64_t bundles = (s.batch + p.bundle - 1) / p.bundle;
  const int64_t balanced = std::min(std::max<int64_t>(1, s.batch), (bundles + per_round - 1) / per_round * per_round);
  p.bundle = (s.batch + balanced - 1) / balanced;
  p.items = (s.batch + p.bundle - 1) / p.bundle * s.groups;
  p.parallel_items = p.items >= threads;
  return p;
}

// The taps of one kernel row i of output position `ow` that read inside the image: j in [j0, j1).
struct TapRun {
  int64_t j0, j1;
};

TapRun inside_taps(const Conv2dGeometry& g, int64_t ow) {
  const int64_t iw0 = conv_tap(ow, 0, g.sw, g.pw, g.dw);   // what tap 0 reads
  const int64_t j0 = iw0 >= 0 ? 0 : std::min(g.kw, (-iw0 + g.dw - 1) / g.dw);
  const int64_t j1 = iw0 >= g.in_w ? 0 : std::min(g.kw, (g.in_w - iw0 + g.dw - 1) / g.dw);
  return {j0, std::max(j0, j1)};
}

// Where the pixel that tap (i, j) of output column ow reads starts, for image n and input row ih (both
// inside the image, as is that tap).
int64_t pixel_of(const Conv2dShape& s, const NhwcPlan& p, int64_t n, int64_t ih, int64_t ow, int64_t j) {
  const auto& g = s.g;
  return ((n * g.in_h + ih) * g.in_w + conv_tap(ow, j, g.sw, g.pw, g.dw)) * p.C;
}

// cols[r][t] for rows q in [q0, q1) (global output positions) of group grp: per tap (i, j) a run of cg
// channels copied from the input pixel it reads, or zeros where that pixel is padding. Where the taps
// of a kernel row read neighbouring pixels of all channels (one group, no dilation), each row of taps
// is one run of kw * C values, so a 3-channel stem copies 21 values at a time, not 3.
template <typename T>
void im2col_rows(const T* x, const Conv2dShape& s, const NhwcPlan& p, int64_t grp, int64_t q0, int64_t q1, T* cols) {
  const auto& g = s.g;
  const bool whole_rows = p.cg == p.C && g.dw == 1;
  for (int64_t q = q0; q < q1; ++q) {
    const int64_t n = q / p.P, pos = q % p.P, oh = pos / g.out_w, ow = pos % g.out_w;
    const TapRun run = inside_taps(g, ow);
    T* row = cols + (q - q0) * p.T;
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t ih = oh * g.sh - g.ph + i * g.dh;
      T* taps = row + i * g.kw * p.cg;
      if (ih < 0 || ih >= g.in_h || run.j0 == run.j1) {
        std::fill(taps, taps + g.kw * p.cg, T(0));
        continue;
      }
      const T* first = x + pixel_of(s, p, n, ih, ow, run.j0) + grp * p.cg;   // what tap j0 reads
      std::fill(taps, taps + run.j0 * p.cg, T(0));
      if (whole_rows) {
        std::copy(first, first + (run.j1 - run.j0) * p.C, taps + run.j0 * p.cg);
      } else {
        for (int64_t j = run.j0; j < run.j1; ++j) {
          const T* src = first + (j - run.j0) * g.dw * p.C;
          std::copy(src, src + p.cg, taps + j * p.cg);
        }
      }
      std::fill(taps + run.j1 * p.cg, taps + g.kw * p.cg, T(0));
    }
  }
}

// The adjoint: dx[pixel of (q, i, j)][grp's channels] += dcols[q][(i, j, .)].
template <typename T>
void col2im_rows(const T* dcols, const Conv2dShape& s, const NhwcPlan& p, int64_t grp, int64_t q0, int64_t q1, T* dx) {
  const auto& g = s.g;
  const bool whole_rows = p.cg == p.C && g.dw == 1;
  for (int64_t q = q0; q < q1; ++q) {
    const int64_t n = q / p.P, pos = q % p.P, oh = pos / g.out_w, ow = pos % g.out_w;
    const TapRun run = inside_taps(g, ow);
    const T* row = dcols + (q - q0) * p.T;
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t ih = oh * g.sh - g.ph + i * g.dh;
      if (ih < 0 || ih >= g.in_h || run.j0 == run.j1) continue;
      const T* taps = row + (i * g.kw + run.j0) * p.cg;
      T* first = dx + pixel_of(s, p, n, ih, ow, run.j0) + grp * p.cg;   // what tap j0 reads
      if (whole_rows) {
        for (int64_t e = 0; e < (run.j1 - run.j0) * p.C; ++e) first[e] += taps[e];
      } else {
        for (int64_t j = 0; j < run.j1 - run.j0; ++j) {
          T* dst = first + j * g.dw * p.C;
          const T* src = taps + j * p.cg;
          for (int64_t c = 0; c < p.cg; ++c) dst[c] += src[c];
        }
      }
    }
  }
}

// Runs chunk(grp, q0, q1, cols) over the row chunks of every work item (bundle of images, group), the
// items in parallel when there are enough, else in order; cols is the worker's column buffer (null
// for pointwise convolutions, which need none).
template <typename T, typename Chunk>
void for_each_chunk(const Conv2dShape& s, const NhwcPlan& p, const Chunk& chunk) {
  const auto item = [&](int64_t t) {
    const int64_t grp = t % s.groups, n0 = t / s.groups * p.bundle;
    const int64_t q_end = std::min(s.batch, n0 + p.bundle) * p.P;
    T* cols = p.pointwise ? nullptr : scratch<T>(Scratch::conv_cols, p.chunk * p.T);
    for (int64_t q0 = n0 * p.P; q0 < q_end; q0 += p.chunk) chunk(grp, q0, std::min(q_end, q0 + p.chunk), cols);
  };
  if (p.parallel_items) {
    at::parallel_for(0, p.items, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) item(t);
    });
  } else {
    for (int64_t t = 0; t < p.items; ++t) item(t);
  }
}

// The weights of every group packed as the GEMM's B: forward's W_g^T (T x Kg, B[t][k] = W[k][t]),
// grad_input's W_g (Kg x T), from w (the channels-last weight). Kept in the WeightCache for a weight
// that does not require grad, keyed on the caller's `weight` (checked against its bytes' digest on every
// call, as im2col's packed filters in conv2d.cpp); otherwise built in scratch memory the next call reuses.
template <typename T>
at::Tensor packed_weights(const at::Tensor& weight, const T* w, const Conv2dShape& s, const NhwcPlan& p,
                          bool transposed_b) {
  const int64_t variant = WeightCache::for_isa(WeightCache::nhwc_filters(transposed_b, s.groups), int(active_isa()));
  return WeightCache::instance().get(weight, variant, [&] {
    const int64_t k = transposed_b ? p.kg : p.T, n = transposed_b ? p.T : p.kg;
    const int64_t per_group = gemm_packed_b_elems<T>(k, n);
    const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
    at::Tensor out = WeightCache::cacheable(weight)
                         ? at::empty({s.groups * per_group}, opts)
                         : at::from_blob(scratch<T>(Scratch::conv_wpack, s.groups * per_group), {s.groups * per_group}, opts);
    for (int64_t grp = 0; grp < s.groups; ++grp) {   // the packing is parallel inside
      const T* wg = w + grp * p.kg * p.T;
      gemm_pack_b(transposed_b ? gemm_args<T>(0, n, k, nullptr, 0, 0, wg, p.T, 1, nullptr, 0, T(0))
                               : gemm_args<T>(0, n, k, nullptr, 0, 0, wg, 1, p.T, nullptr, 0, T(0)),
                  out.data_ptr<T>() + grp * per_group);
    }
    return out;
  });
}

// forward_gathered's pieces: up to kPieceTiles micro-tiles of output positions (their row pointers on
// the stack), at least four per thread where there are enough tiles.
constexpr int64_t kPieceTiles = 32, kMaxMr = 8;

// The forward pass without lowering, where each kernel row's taps are one run of kw * C values (one
// group, no dilation along the width) and all T = kh * kw * C taps fit one K block of the GEMM: an output
// position's row of im2col's matrix is then kh runs of a zero-padded copy of the input (the input itself
// when unpadded), which gemm_gathered reads where they lie, the same FMAs in the same order as the
// lowered product (bit for bit the result of im2col_rows + gemm). The stem's lowering had taken a fifth
// of its forward pass (ResNet-18, 7x7 over 3 channels; 1x1 stride-2 layers too take this path). The
// padded copy is bounded by the workspace size (64 MiB); a larger padded input is lowered in chunks.
template <typename T>
bool gathers_rows(const Conv2dShape& s, const NhwcPlan& p) {
  const auto& g = s.g;
  const int64_t padded = g.ph > 0 || g.pw > 0 ? s.batch * (g.in_h + 2 * g.ph) * (g.in_w + 2 * g.pw) * p.C : 0;
  return s.groups == 1 && g.dw == 1 && !p.pointwise && p.T <= gemm_tile<T>().k_block &&
         padded * int64_t(sizeof(T)) <= int64_t(kWorkspaceBytes);   // larger inputs: lowered in chunks
}

// The input zero-padded by (ph, pw) in NHWC, `slack` zero values before and after it; `at` points at
// its first value. Unpadded without slack: the input itself, not copied.
template <typename T>
struct PaddedInput {
  at::Tensor storage;
  const T* at;
  int64_t Hp, Wp, pitch;   // padded rows, columns and values per row
};

template <typename T>
PaddedInput<T> padded_input(const T* x, const Conv2dShape& s, const NhwcPlan& p, int64_t slack) {
  const auto& g = s.g;
  PaddedInput<T> in{at::Tensor(), x, g.in_h + 2 * g.ph, g.in_w + 2 * g.pw, (g.in_w + 2 * g.pw) * p.C};
  if (g.ph == 0 && g.pw == 0 && slack == 0) return in;
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  in.storage = at::zeros({s.batch * in.Hp * in.pitch + 2 * slack}, opts);
  T* dst = in.storage.template data_ptr<T>() + slack;
  const int64_t run = g.in_w * p.C;
  at::parallel_for(0, s.batch * g.in_h, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / g.in_h, h = r % g.in_h;
      std::copy(x + r * run, x + (r + 1) * run, dst + (n * in.Hp + h + g.ph) * in.pitch + g.pw * p.C);
    }
  });
  in.at = dst;
  return in;
}

// Where output position q (of the whole batch) reads its first tap in the padded input.
inline int64_t position_offset(const Conv2dShape& s, const NhwcPlan& p, int64_t Hp, int64_t pitch, int64_t q) {
  const int64_t n = q / p.P, pos = q % p.P, oh = pos / s.g.out_w, ow = pos % s.g.out_w;
  return (n * Hp + oh * s.g.sh) * pitch + ow * s.g.sw * p.C;
}

template <typename T>
void forward_gathered(const T* x, const T* packed, const T* bias, T* out, const Conv2dShape& s, const NhwcPlan& p) {
  const auto& g = s.g;
  const PaddedInput<T> in = padded_input(x, s, p, 0);
  const int64_t mr = gemm_tile<T>().mr, M = s.batch * p.P, tiles = (M + mr - 1) / mr;
  TORCH_INTERNAL_ASSERT(mr <= kMaxMr);
  const int64_t piece = std::clamp<int64_t>(tiles / (4 * at::get_num_threads()), 1, kPieceTiles) * mr;
  const auto gathered = [&](const T* const* rows, int64_t m) {   // kh runs of kw * C values per row
    GatheredRows<T> a;
    a.rows = rows;
    a.m = m;
    a.segs = g.kh;
    a.len = g.kw * p.C;
    a.stride = g.dh * in.pitch;
    return a;
  };
  at::parallel_for(0, (M + piece - 1) / piece, 1, [&](int64_t b0, int64_t b1) {
    const T* rows[kPieceTiles * kMaxMr];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t q0 = b * piece, q1 = std::min(M, q0 + piece);
      for (int64_t q = q0; q < q1; ++q) rows[q - q0] = in.at + position_offset(s, p, in.Hp, in.pitch, q);
      T* c = out + q0 * p.K;
      if (bias != nullptr) {
        for (int64_t q = q0; q < q1; ++q) std::copy(bias, bias + p.K, c + (q - q0) * p.K);
      }
      gemm_gathered(gathered(rows, q1 - q0), packed, p.K, c, p.K, bias != nullptr ? T(1) : T(0));
    }
  });
}

// grad_weight without lowering, for kernels of several taps whose rows are runs (one group, dw 1):
// dW (K x T) = dY^T . cols, cols' K blocks of positions packed straight from the zero-padded input into
// the GEMM's B panels by offset tables (gemm_pack_b_offsets: row q a position, column t a tap), as the
// NCHW path does (conv2d.cpp: grad_weight_impl), instead of written by im2col_rows and read again by the
// packing. Positions in parts per thread, each into its own partial dW. For layers of few taps (T within
// the GEMM's K block, as forward_gathered): ResNet-18's channels-last stem 5.0-5.5 -> 3.8 ms (torch
// 3.3-3.7; AMD Zen 3, 2 threads); on its 3x3 layers of 64-512 channels the lowering and this measured
// within each other's noise (-15%..+25%), and they keep the lowering.
template <typename T>
bool packs_by_offsets(const Conv2dShape& s, const NhwcPlan& p) {
  const auto& g = s.g;
  const int64_t padded = s.batch * (g.in_h + 2 * g.ph) * (g.in_w + 2 * g.pw) * p.C;
  return s.groups == 1 && g.dw == 1 && g.kh * g.kw > 1 && p.T <= gemm_tile<T>().k_block &&
         padded * int64_t(sizeof(T)) <= int64_t(kWorkspaceBytes);
}

template <typename T>
void grad_weight_by_offsets(const T* dy, const T* x, T* dw, const Conv2dShape& s, const NhwcPlan& p) {
  const auto& g = s.g;
  const int64_t slack = (kGemmOffsetsSlackBytes + int64_t(sizeof(T)) - 1) / int64_t(sizeof(T));
  const PaddedInput<T> in = padded_input(x, s, p, slack);
  std::vector<int64_t> tap_off(static_cast<size_t>(p.T));   // tap t = (i, j, c), the weight's order
  for (int64_t t = 0; t < p.T; ++t) tap_off[t] = t / (g.kw * p.C) * g.dh * in.pitch + t % (g.kw * p.C);
  const int64_t M = s.batch * p.P, kb = gemm_tile<T>().k_block, n_pad = gemm_packed_b_elems<T>(1, p.T);
  const int64_t pos_chunk = std::max<int64_t>(1, kRowsBytes / (kb * n_pad * int64_t(sizeof(T)))) * kb;
  const int64_t blocks = (M + kb - 1) / kb;
  const int64_t parts = std::min<int64_t>(at::get_num_threads(), (M + pos_chunk - 1) / pos_chunk);
  const auto sum_blocks = [&](int64_t b0, int64_t b1, T* acc) {   // K blocks [b0, b1) of positions into acc
    T* bp = scratch<T>(Scratch::conv_cols, pos_chunk * n_pad);
    std::vector<int64_t> pos_off(static_cast<size_t>(pos_chunk));
    const int64_t q_end = std::min(M, b1 * kb);
    bool first = true;
    for (int64_t q0 = b0 * kb; q0 < q_end; q0 += pos_chunk) {
      const int64_t nq = std::min(pos_chunk, q_end - q0);
      for (int64_t q = 0; q < nq; ++q) pos_off[q] = position_offset(s, p, in.Hp, in.pitch, q0 + q);
      for (int64_t r0 = 0; r0 < nq; r0 += kb) {
        gemm_pack_b_offsets<T>(in.at, pos_off.data() + r0, std::min(kb, nq - r0), tap_off.data(), p.T,
                               bp + r0 * n_pad);
      }
      GemmArgs<T> a = gemm_args<T>(p.K, p.T, nq, dy + q0 * p.K, 1, p.K, nullptr, 0, 0, acc, p.T, first ? T(0) : T(1));
      a.b_packed = bp;
      a.k_block = kb;
      gemm(a);
      first = false;
    }
    if (first) std::fill(acc, acc + p.K * p.T, T(0));
  };
  if (parts <= 1) return sum_blocks(0, blocks, dw);
  sum_in_parts(parts, blocks, p.K * p.T, dw, sum_blocks);
}

}  // namespace

bool conv2d_nhwc_applies(const at::Tensor& input, const Conv2dShape& s) {
  if (s.format != at::MemoryFormat::ChannelsLast || input.dim() != 4 ||
      !input.is_contiguous(at::MemoryFormat::ChannelsLast) || s.batch == 0 ||
      (input.scalar_type() != at::kFloat && input.scalar_type() != at::kDouble)) {
    return false;
  }
  // Runs of fewer than kMinRun values per copy make the lowering a scalar loop: ResNet-18's stem
  // (3 channels, 7x7) took 5.4 ms in NHWC copying 3 channels per tap, against 2.8 ms through NCHW copies
  // (batch 8, 112^2); copying whole tap rows of 7 pixels (21 values) 4.4 ms against 4.0-4.2 through the
  // copies, forward and grad_weight 10.2 ms against 10.5-10.8 (AMD Zen 3, 2 threads, warm memory).
  // Layers of few taps (forward_gathered, grad_weight_by_offsets) lower nothing in those passes, so
  // short runs do not matter there: MobileNet-v2's stem (3x3 stride 2 over 3 channels, batch 16, 112^2)
  // in NHWC against through the NCHW copies: forward 1.5 -> 0.93 ms, grad_weight 2.3 -> 1.5 ms, and
  // grad_input (im2col's col2im on runs of 9 values) 2.7 -> 1.6 ms (torch 0.64, 0.81, 2.7; Zen 3).
  constexpr int64_t kMinRun = 16;
  const int64_t cg = s.in_channels / std::max<int64_t>(1, s.groups);
  const int64_t k_block = input.scalar_type() == at::kDouble ? gemm_tile<double>().k_block : gemm_tile<float>().k_block;
  const bool few_taps = s.groups == 1 && s.g.dw == 1 && s.g.kh * s.g.kw * cg <= k_block;
  switch (s.algorithm) {
    case Conv2dAlgorithm::im2col:
      return few_taps || (s.groups == 1 && s.g.dw == 1 ? s.g.kw * cg : cg) >= kMinRun;
    case Conv2dAlgorithm::direct: return true;   // its tiles read any run of channels in place
    default: return cg >= kMinRun;                // Winograd's transforms read cg channels per pixel
  }
}

template <typename T>
void conv2d_nhwc_forward(const T* x, const at::Tensor& weight, const T* w, const T* bias, T* out,
                         const Conv2dShape& s) {
  const NhwcPlan p = plan_of(s, sizeof(T));
  const at::Tensor wpacked = packed_weights(weight, w, s, p, false);
  const T* packed = wpacked.data_ptr<T>();
  if (gathers_rows<T>(s, p)) return forward_gathered(x, packed, bias, out, s, p);
  const int64_t per_group = gemm_packed_b_elems<T>(p.T, p.kg);
  for_each_chunk<T>(s, p, [&](int64_t grp, int64_t q0, int64_t q1, T* cols) {
    const int64_t rows = q1 - q0;
    T* c = out + q0 * p.K + grp * p.kg;
    if (bias != nullptr) {
      for (int64_t r = 0; r < rows; ++r) std::copy(bias + grp * p.kg, bias + (grp + 1) * p.kg, c + r * p.K);
    }
    const T* a = x + q0 * p.C + grp * p.cg;   // pointwise: the input rows themselves
    if (!p.pointwise) {
      im2col_rows(x, s, p, grp, q0, q1, cols);
      a = cols;
    }
    GemmArgs<T> args = gemm_args<T>(rows, p.kg, p.T, a, p.pointwise ? p.C : p.T, 1, nullptr, 0, 0, c, p.K,
                                    bias != nullptr ? T(1) : T(0));
    args.b_packed = packed + grp * per_group;
    gemm(args);
  });
}

template <typename T>
void conv2d_nhwc_grad_input(const T* dy, const at::Tensor& weight, const T* w, T* dx, const Conv2dShape& s) {
  const NhwcPlan p = plan_of(s, sizeof(T));
  const at::Tensor wpacked = packed_weights(weight, w, s, p, true);
  const T* packed = wpacked.data_ptr<T>();
  const int64_t per_group = gemm_packed_b_elems<T>(p.kg, p.T);
  if (!p.pointwise) std::fill(dx, dx + s.batch * s.g.in_h * s.g.in_w * p.C, T(0));
  for_each_chunk<T>(s, p, [&](int64_t grp, int64_t q0, int64_t q1, T* dcols) {
    T* c = p.pointwise ? dx + q0 * p.C + grp * p.cg : dcols;   // pointwise: grad_input's rows themselves
    GemmArgs<T> args = gemm_args<T>(q1 - q0, p.T, p.kg, dy + q0 * p.K + grp * p.kg, p.K, 1, nullptr, 0, 0, c,
                                    p.pointwise ? p.C : p.T, T(0));
    args.b_packed = packed + grp * per_group;
    gemm(args);
    if (!p.pointwise) col2im_rows(dcols, s, p, grp, q0, q1, dx);
  });
}

template <typename T>
void conv2d_nhwc_grad_weight(const T* dy, const T* x, T* dw, const Conv2dShape& s) {
  const NhwcPlan p = plan_of(s, sizeof(T));
  if (grad_weight_by_phases<T>(s, true)) return conv2d_grad_weight_phases(dy, x, dw, s, true);
  if (packs_by_offsets<T>(s, p)) return grad_weight_by_offsets(dy, x, dw, s, p);
  const int64_t bundles = p.items / s.groups;
  const int64_t parts = p.parallel_items ? std::min<int64_t>(at::get_num_threads(), bundles) : 1;
  const int64_t elems = p.K * p.T;
  // Bundles [b0, b1) of every group summed into acc (overwritten).
  const auto sum_bundles = [&](int64_t b0, int64_t b1, T* acc) {
    T* cols = p.pointwise ? nullptr : scratch<T>(Scratch::conv_cols, p.chunk * p.T);
    for (int64_t grp = 0; grp < s.groups; ++grp) {
      T* dwg = acc + grp * p.kg * p.T;
      bool first = true;
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t q_end = std::min(s.batch, (b + 1) * p.bundle) * p.P;
        for (int64_t q0 = b * p.bundle * p.P; q0 < q_end; q0 += p.chunk) {
          const int64_t q1 = std::min(q_end, q0 + p.chunk), rows = q1 - q0;
          const T* bsrc = x + q0 * p.C + grp * p.cg;
          if (!p.pointwise) {
            im2col_rows(x, s, p, grp, q0, q1, cols);
            bsrc = cols;
          }
          gemm(gemm_args<T>(p.kg, p.T, rows, dy + q0 * p.K + grp * p.kg, 1, p.K, bsrc, p.pointwise ? p.C : p.T, 1, dwg,
                          p.T, first ? T(0) : T(1)));
          first = false;
        }
      }
      if (first) std::fill(dwg, dwg + p.kg * p.T, T(0));
    }
  };
  if (parts <= 1) {
    sum_bundles(0, bundles, dw);
    return;
  }
  sum_in_parts(parts, bundles, elems, dw, sum_bundles);
}

template void conv2d_nhwc_forward<float>(const float*, const at::Tensor&, const float*, const float*, float*,
                                         const Conv2dShape&);
template void conv2d_nhwc_forward<double>(const double*, const at::Tensor&, const double*, const double*, double*,
                                          const Conv2dShape&);
template void conv2d_nhwc_grad_input<float>(const float*, const at::Tensor&, const float*, float*, const Conv2dShape&);
template void conv2d_nhwc_grad_input<double>(const double*, const at::Tensor&, const double*, double*,
                                             const Conv2dShape&);
template void conv2d_nhwc_grad_weight<float>(const float*, const float*, float*, const Conv2dShape&);
template void conv2d_nhwc_grad_weight<double>(const double*, const double*, double*, const Conv2dShape&);

}  // namespace fastconv::cpu
