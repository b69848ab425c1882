// CPU convolution by im2col + the GEMM engine (fastconv::conv2d, fastconv::conv2d_backward).
//
// Per image and group (M = output channels of the group, N = output positions, K = Cg*kh*kw):
//   forward      out_g = W_g @ cols(x_g) (+ bias, entering as the GEMM's beta term)
//   grad_input   cols  = W_g^T @ dY_g, then col2im adds each column entry back to its input tap
//   grad_weight  dW_g += dY_g @ cols(x_g)^T, accumulated over images
//   grad_bias    sum of dY over images and positions
// The column buffer holds at most kWorkspaceBytes: output positions are processed in chunks. 1x1,
// stride-1, unpadded convolutions on images of 512+ pixels skip the lowering (the input plane already
// is the column matrix).
// The forward pass (forward_packed) lowers straight into the GEMM engine's packed-B layout
// (gemm_pack_b_offsets, reading zero-padded copies of the planes through offset tables), one K block
// of kForwardChunkBytes at a time so it is still in L2 when the GEMM reads it, with the weights packed
// once (and kept by the weight cache for weights that do not require grad).
// Work is parallel over (image or bundle, group) items when there are enough of them, else over
// chunks of positions (and output channels) of each item, or inside the GEMM.
// grad_weight of strided layers of large kernels (and channels-last ones over few channels) runs by
// stride phases without lowering (conv2d_phases.cpp).
// Channels-last tensors run im2col (and im2col's grad_weight) in NHWC without copies where a tap
// row is a run of 16+ values or a layer of one group has few taps (conv2d_nhwc.cpp), direct always (conv2d_direct.cpp), Winograd with 16+
// channels per group (conv2d_winograd.cpp's channels-last passes); the rest through NCHW copies
// (conv2d_nhwc_applies). algorithm="direct" runs conv2d_direct.cpp's
// kernels for the forward pass and grad_input instead (on depthwise layers conv2d_depthwise.cpp's,
// grad_weight included), the Winograd algorithms (and "auto" where it picks them)
// conv2d_winograd.cpp's, grad_weight included (grad_weight_algorithm in conv2d_args.h); grad_bias is
// always the one here.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/strides.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/conv2d_args.h"
#include "common/weight_cache.h"
#include "cpu/conv2d_bf16_direct.h"
#include "cpu/conv2d_depthwise.h"
#include "cpu/conv2d_direct_kernels.h"
#include "cpu/conv2d_nhwc.h"
#include "cpu/conv2d_phases.h"
#include "cpu/conv2d_winograd.h"
#include "cpu/gemm_bf16.h"
#include "cpu/gemm_kernels.h"
#include "cpu/isa.h"
#include "cpu/memory.h"

namespace fastconv::cpu {
namespace {

constexpr const char* kForward = "conv2d";
constexpr const char* kBackward = "conv2d_backward";
// Columns lowered per GEMM in the forward pass (one K block of a chunk of positions): about a third of
// a 1 MiB L2, so that they, the packed weights' K block and the output rows stay there. Measured on
// ResNet-18's 3x3 layers (2 threads): 256-768 KiB all beat whole images; 384 KiB was the best.
constexpr int64_t kForwardChunkBytes = int64_t(384) << 10;
// A chunk's outputs (output channels x positions), added to once per K block, are kept to this much so
// that they stay in L2 beside the two blocks above: with 512 output channels (ResNet-18's 7x7 layer)
// they would otherwise take 800 KB and be written back to L3 on every K block (measured there by CPU
// time, 3 runs each: 0.83-0.94x torch -> 0.92-1.00x).
constexpr int64_t kForwardOutputBytes = int64_t(256) << 10;

// cols[(c*kh + i)*kw + j][p - p0] for output positions p in [p0, p1) of one image/group (Cg planes),
// column rows `ld` apart (p1 - p0 unless several images' columns lie side by side).
// Row by row of output positions: a tap row outside the input is zeros; inside, the in-range columns
// [ow_lo, ow_hi) are a strided (for stride 1, contiguous) copy and the rest zeros. (The forward pass
// uses forward_packed below; grad_weight and planes too large to pad use this.)
template <typename T>
void im2col(const T* x, int64_t cg, const Conv2dGeometry& g, int64_t p0, int64_t p1, T* cols, int64_t ld = 0) {
  const int64_t pc = ld > 0 ? ld : p1 - p0;   // row stride of the column matrix
  for (int64_t c = 0; c < cg; ++c) {
    const T* plane = x + c * g.in_h * g.in_w;
    for (int64_t i = 0; i < g.kh; ++i) {
      for (int64_t j = 0; j < g.kw; ++j) {
        T* row = cols + ((c * g.kh + i) * g.kw + j) * pc - p0;   // row[p] for p in [p0, p1)
        const int64_t off = j * g.dw - g.pw;
        int64_t ow_lo, ow_hi;
        conv_tap_columns(g, j, &ow_lo, &ow_hi);
        for (int64_t oh = p0 / g.out_w; oh * g.out_w < p1; ++oh) {
          const int64_t ih = conv_tap(oh, i, g.sh, g.ph, g.dh);
          const int64_t q0 = std::max(p0, oh * g.out_w), q1 = std::min(p1, (oh + 1) * g.out_w);
          T* r = row + oh * g.out_w;   // r[ow]
          const int64_t a0 = q0 - oh * g.out_w, a1 = q1 - oh * g.out_w;
          if (ih < 0 || ih >= g.in_h) {
            std::fill(r + a0, r + a1, T(0));
            continue;
          }
          const T* src = plane + ih * g.in_w + off;   // src[ow * sw]
          const int64_t lo = std::max(a0, ow_lo), hi = std::min(a1, ow_hi);
          for (int64_t ow = a0; ow < std::min(a1, lo); ++ow) r[ow] = T(0);
          if (g.sw == 1) {
            for (int64_t ow = lo; ow < hi; ++ow) r[ow] = src[ow];
          } else {
            for (int64_t ow = lo; ow < hi; ++ow) r[ow] = src[ow * g.sw];
          }
          for (int64_t ow = std::max(lo, hi); ow < a1; ++ow) r[ow] = T(0);
        }
      }
    }
  }
}

// A zero-padded copy of one input plane, (in_h + 2 ph) x (in_w + 2 pw): every tap of every output
// position then lands inside the copy, so the forward pass's column rows need no bounds logic (the
// copy is 1 / (kh kw) of the columns' size).
template <typename T>
void pad_plane(const T* plane, const Conv2dGeometry& g, T* dst) {
  const int64_t hp = g.in_h + 2 * g.ph, wp = g.in_w + 2 * g.pw;
  std::fill(dst, dst + g.ph * wp, T(0));
  for (int64_t ih = 0; ih < g.in_h; ++ih) {
    T* row = dst + (ih + g.ph) * wp;
    std::fill(row, row + g.pw, T(0));
    std::copy(plane + ih * g.in_w, plane + (ih + 1) * g.in_w, row + g.pw);
    std::fill(row + g.pw + g.in_w, row + wp, T(0));
  }
  std::fill(dst + (g.ph + g.in_h) * wp, dst + hp * wp, T(0));
}

// Planes [e0, e1) of a bundle into `padded` (plane e: channel e % cg of image e / cg, at x + (e / cg)
// x_image + (e % cg) H W), each zero-padded as pad_plane pads it. Unpadded planes of one image are one
// run in x and in the copy, and go as one: plane by plane, the row copies of small images (a 1x1
// layer's 7x7 planes, 7 runs of 7 values each) cost more than the values they moved.
template <typename T>
void pad_planes(const T* x, int64_t x_image, int64_t cg, int64_t e0, int64_t e1, const Conv2dGeometry& g, T* padded) {
  const int64_t HW = g.in_h * g.in_w;
  if (g.ph == 0 && g.pw == 0) {
    for (int64_t e = e0; e < e1;) {
      const int64_t run = std::min(e1, (e / cg + 1) * cg) - e;   // the rest of image e / cg's planes
      const T* src = x + e / cg * x_image + e % cg * HW;
      std::copy(src, src + run * HW, padded + e * HW);
      e += run;
    }
    return;
  }
  const int64_t padded_hw = (g.in_h + 2 * g.ph) * (g.in_w + 2 * g.pw);
  for (int64_t e = e0; e < e1; ++e) pad_plane(x + e / cg * x_image + e % cg * HW, g, padded + e * padded_hw);
}

// The adjoint of im2col, with the same row-by-row structure: dx[tap of (c, i, j, p)] += cols entry, the
// entries for positions [p0, p1) of a column row being `ld` apart from one row to the next.
template <typename T>
void col2im_add(const T* cols, int64_t ld, int64_t cg, const Conv2dGeometry& g, int64_t p0, int64_t p1, T* dx) {
  for (int64_t c = 0; c < cg; ++c) {
    T* plane = dx + c * g.in_h * g.in_w;
    for (int64_t i = 0; i < g.kh; ++i) {
      for (int64_t j = 0; j < g.kw; ++j) {
        const T* row = cols + ((c * g.kh + i) * g.kw + j) * ld - p0;
        const int64_t off = j * g.dw - g.pw;
        int64_t ow_lo, ow_hi;
        conv_tap_columns(g, j, &ow_lo, &ow_hi);
        for (int64_t oh = p0 / g.out_w; oh * g.out_w < p1; ++oh) {
          const int64_t ih = conv_tap(oh, i, g.sh, g.ph, g.dh);
          if (ih < 0 || ih >= g.in_h) continue;
          const int64_t a0 = std::max(p0, oh * g.out_w) - oh * g.out_w, a1 = std::min(p1, (oh + 1) * g.out_w) - oh * g.out_w;
          const T* r = row + oh * g.out_w;
          T* dst = plane + ih * g.in_w + off;   // dst[ow * sw]
          const int64_t lo = std::max(a0, ow_lo), hi = std::min(a1, ow_hi);
          if (g.sw == 1) {
            for (int64_t ow = lo; ow < hi; ++ow) dst[ow] += r[ow];
          } else {
            for (int64_t ow = lo; ow < hi; ++ow) dst[ow * g.sw] += r[ow];
          }
        }
      }
    }
  }
}

// Runs run(begin, end) over [0, items): in parallel when there are at least as many items as threads
// (the GEMMs inside then run serially), else serially with the GEMMs parallel inside.
template <typename Run>
void over_items(int64_t items, const Run& run) {
  if (items >= at::get_num_threads()) {
    at::parallel_for(0, items, 1, run);
  } else {
    run(0, items);
  }
}

// The GEMM view of one (image, group) with a column buffer of each thread's share of the workspace.
Conv2dGemmDims per_thread_dims(const Conv2dShape& s, size_t elem) {
  return conv2d_gemm_dims(s, elem, kWorkspaceBytes / std::max<int64_t>(1, at::get_num_threads()));
}

// body(n, grp, cols) for every (image, group), each worker with its own column buffer.
template <typename T, typename Body>
void for_each_item(const Conv2dShape& s, int64_t cols_elems, const Body& body) {
  over_items(s.batch * s.groups, [&](int64_t b, int64_t e) {
    T* cols = scratch<T>(Scratch::conv_cols, cols_elems);   // uninitialised: im2col fills it
    for (int64_t t = b; t < e; ++t) body(t / s.groups, t % s.groups, cols);
  });
}

// Images with few output positions would make thin GEMMs; up to kBundlePositions positions of several
// images then form one bundle (their columns side by side), whose products are scattered to the images.
constexpr int64_t kBundlePositions = 512;

// Images per bundle: at most `most`, and as many bundles on every thread, of even sizes (a thread's
// share of the batch in even bundles): 16 images of 49 positions on 2 threads make two bundles of 8,
// not one of 10 and one of 6 (which left one thread idle for a fifth of MobileNet-v2's 7x7 1x1 layers).
int64_t even_bundle(int64_t batch, int64_t most, int64_t threads) {
  const int64_t share = std::max<int64_t>(1, (batch + threads - 1) / threads);   // images per thread
  const int64_t per_thread = (share + most - 1) / std::max<int64_t>(1, most);       // bundles per thread
  return (share + per_thread - 1) / per_thread;
}

// Lowering a column costs about as much as this many output channels' share of its GEMM work
// (measured: ResNet-18's 512@7x7 layer spends 1/20 as long in the lowering as in the GEMM).
constexpr int64_t kLoweringRows = 32;

// How many parts to split kg output channels into (1 or `threads`, in whole micro-tiles of mr rows)
// when one item's chunks (N positions, `chunk` at a time) are shared out to the threads: whichever
// ends sooner, given at::parallel_for's even split of the (part, chunk) units and a unit cost of its
// positions x (its channels + kLoweringRows), each part lowering its chunk itself. Splitting helps when
// the chunks are few or uneven, as with a whole batch of 7x7 images in one bundle.
inline int64_t channel_parts(int64_t N, int64_t chunk, int64_t kg, int64_t mr, int64_t threads) {
  const auto makespan = [&](int64_t parts) {
    const int64_t rows = ((kg + parts - 1) / parts + mr - 1) / mr * mr;
    const int64_t chunks = (N + chunk - 1) / chunk, units = chunks * parts;
    const int64_t per_thread = (units + threads - 1) / threads;
    int64_t worst = 0;
    for (int64_t t0 = 0; t0 < units; t0 += per_thread) {
      int64_t cost = 0;
      for (int64_t u = t0; u < std::min(units, t0 + per_thread); ++u) {
        const int64_t q0 = u % chunks * chunk, m0 = u / chunks * rows;
        const int64_t m = std::max<int64_t>(0, std::min(kg, m0 + rows) - m0);
        cost += m > 0 ? (std::min(N, q0 + chunk) - q0) * (m + kLoweringRows) : 0;
      }
      worst = std::max(worst, cost);
    }
    return worst;
  };
  return threads > 1 && makespan(threads) < makespan(1) ? threads : 1;
}

// The GEMM side of the packed forward pass, by element type. PlainEngine<T> (float, double): the GEMM
// engine's own panels of T, the products straight into the output. Bf16Engine (bfloat16, where the CPU
// has a bfloat16 kernel, vdpbf16ps or AMX: gemm_bf16_native()): that kernel's panels (tile().k_align
// deep), products summed in float32 and rounded once into the output, as torch's bfloat16
// convolution does.
template <typename T>
struct PlainEngine {
  using Acc = T;      // the products' type
  using Packed = T;   // the panels' element
  static GemmTile tile() { return gemm_tile<T>(); }
  static int64_t packed_a_elems(int64_t m, int64_t k, int64_t) { return gemm_packed_a_elems(m, k); }
  static void pack_a(const T* a, int64_t rs, int64_t cs, int64_t m, int64_t k, int64_t, T* dst) {
    gemm_pack_a(gemm_args<T>(m, 0, k, a, rs, cs, nullptr, 0, 0, nullptr, 0, T(0)), dst);
  }
  static void pack_b_offsets(const T* base, const int64_t* row_off, int64_t rows, const int64_t* col_off,
                             int64_t cols, T* dst) {
    gemm_pack_b_offsets(base, row_off, rows, col_off, cols, dst);
  }
  // C (m x n, rows rs_c apart) = beta * C + A B for one K block of both packed operands
  static void gemm(int64_t m, int64_t n, int64_t k, const T* ap, const T* bp, T* c, int64_t rs_c, T beta) {
    GemmArgs<T> args = gemm_args<T>(m, n, k, nullptr, 0, 0, nullptr, 0, 0, c, rs_c, beta);
    args.a_packed = ap;
    args.b_packed = bp;
    fastconv::cpu::gemm(args);
  }
};

struct Bf16Engine {
  using Acc = float;
  using Packed = uint16_t;
  static GemmTile tile() { return gemm_bf16_tile(); }
  static int64_t packed_a_elems(int64_t m, int64_t k, int64_t kb) { return gemm_bf16_packed_a_elems(m, k, kb); }
  static const uint16_t* bits(const c10::BFloat16* p) { return reinterpret_cast<const uint16_t*>(p); }
  static void pack_a(const c10::BFloat16* a, int64_t rs, int64_t cs, int64_t m, int64_t k, int64_t kb,
                     uint16_t* dst) {
    gemm_bf16_pack_a(bits(a), rs, cs, m, k, kb, dst);
  }
  static void pack_b_offsets(const c10::BFloat16* base, const int64_t* row_off, int64_t rows, const int64_t* col_off,
                             int64_t cols, uint16_t* dst) {
    gemm_bf16_pack_b_offsets(bits(base), row_off, rows, col_off, cols, dst);
  }
  static void gemm(int64_t m, int64_t n, int64_t k, const uint16_t* ap, const uint16_t* bp, float* c, int64_t rs_c,
                   float beta) {
    GemmArgs<float> args = gemm_args<float>(m, n, k, nullptr, 0, 0, nullptr, 0, 0, c, rs_c, beta);
    args.k_block = tile().k_block;
    gemm_bf16_prepacked(args, ap, bp);
  }
};

// The filters of every group in E's packed-A form: W_g (kg x kc), what forward_packed multiplies by,
// or with `transposed` W_g^T (kc x kg), grad_input's. Kept in the WeightCache for a weight that does
// not require grad (an eval model), keyed on the caller's `weight`: checking its bytes (their digest)
// costs less than packing again (the bfloat16 pair interleave measured 40% of its GEMM's time in
// ResNet-18 under autocast); otherwise built in scratch memory reused by the next call.
template <class E, typename T>
at::Tensor packed_filters(const at::Tensor& weight, const T* w, const Conv2dShape& s, bool transposed) {
  using P = typename E::Packed;
  const int64_t variant = WeightCache::for_isa(WeightCache::im2col_filters(transposed, s.groups), int(active_isa()));
  return WeightCache::instance().get(weight, variant, [&] {
    const Conv2dGemmDims d = conv2d_gemm_dims(s, sizeof(T), kWorkspaceBytes);
    const int64_t m = transposed ? d.kc : d.kg, k = transposed ? d.kg : d.kc, kb = E::tile().k_block;
    const int64_t packed = E::packed_a_elems(m, k, kb), bytes = s.groups * packed * int64_t(sizeof(P));
    const auto opts = at::TensorOptions().dtype(at::kByte);
    at::Tensor out = WeightCache::cacheable(weight)
                         ? at::empty({bytes}, opts)
                         : at::from_blob(scratch<P>(Scratch::conv_wpack, s.groups * packed), {bytes}, opts);
    P* op = reinterpret_cast<P*>(out.data_ptr());
    over_items(s.groups, [&](int64_t g0, int64_t g1) {   // the packing is parallel inside over K blocks
      for (int64_t grp = g0; grp < g1; ++grp) {
        E::pack_a(w + grp * d.kg * d.kc, transposed ? 1 : d.kc, transposed ? d.kc : 1, m, k, kb, op + grp * packed);
      }
    });
    return out;
  });
}

// The offset of tap r = (c, i, j) of the column matrix in zero-padded planes of padded_hw elements,
// rows wp apart (pack_b_offsets' tables, forward and grad_weight).
std::vector<int64_t> tap_offsets(const Conv2dGeometry& g, int64_t kc, int64_t padded_hw, int64_t wp) {
  std::vector<int64_t> off(static_cast<size_t>(kc));
  for (int64_t r = 0; r < kc; ++r) off[r] = r / (g.kh * g.kw) * padded_hw + r / g.kw % g.kh * g.dh * wp + r % g.kw * g.dw;
  return off;
}

// Scratch for `elems` values of padded planes (Scratch::conv_pad), with kGemmOffsetsSlackBytes of zeros
// on either side: pack_b_offsets' vector loads may reach that far past the planes.
template <typename T>
T* padded_planes_scratch(int64_t elems) {
  const int64_t slack = kGemmOffsetsSlackBytes / int64_t(sizeof(T));
  T* padded = scratch<T>(Scratch::conv_pad, elems + 2 * slack) + slack;
  std::fill(padded - slack, padded, T(0));
  std::fill(padded + elems, padded + elems + slack, T(0));
  return padded;
}

// The packed forward pass. Work items are (bundle of images, group). Per item: copy the bundle's planes
// zero-padded (pad_plane), then for each chunk of positions and each K block of the column matrix, lower
// that block into packed panels (E::pack_b_offsets) and multiply it with the same K block of the
// weights, packed once (pack_filters: `wpacked`), accumulating into the chunk's products. A lowered
// block is kForwardChunkBytes, so it is still in L2 when the GEMM reads it, and a chunk spans enough
// positions that each weight block read serves many of them. With at least as many items as threads
// the items run in parallel; with fewer (small batches, or a whole batch in one bundle) each item's
// chunks do, as chunks write disjoint columns of the output, and its output channels too where that
// evens out the threads' work (channel_parts).
template <class E, typename T>
void forward_packed(const T* x, const typename E::Packed* wpacked, const T* bias, T* out, const Conv2dShape& s,
                    int64_t bundle) {
  using Acc = typename E::Acc;
  using P = typename E::Packed;
  // Products straight into the output: one image at a time, in the output's own type. Otherwise into
  // `prod`, then scattered to the images (a bundle) or rounded (a narrower output), the bias added.
  constexpr bool kDirect = std::is_same_v<Acc, T>;
  const auto& g = s.g;
  const Conv2dGemmDims d = conv2d_gemm_dims(s, sizeof(T), kWorkspaceBytes);
  const int64_t cg = d.cg, kg = d.kg, kc = d.kc, P_ = d.P, HW = d.HW;
  const int64_t padded_hw = (g.in_h + 2 * g.ph) * (g.in_w + 2 * g.pw);
  const GemmTile tile = E::tile();
  const int64_t mr = tile.mr, nr = tile.nr, kb = tile.k_block;
  const int64_t packed_a = E::packed_a_elems(kg, kc, kb), m_pad = (kg + mr - 1) / mr * mr;
  // The column matrix by offsets into the padded planes (pack_b_offsets): row (c, i, j) is tap (i, j) of
  // channel c, column q output position q % P_ of image q / P_ of the bundle.
  const int64_t wp = g.in_w + 2 * g.pw, image_stride = cg * padded_hw;
  const std::vector<int64_t> row_off = tap_offsets(g, kc, padded_hw, wp);
  const int64_t bundles = (s.batch + bundle - 1) / bundle, items = bundles * s.groups;
  const int64_t threads = at::get_num_threads();
  const int64_t max_chunk = std::max(
      nr, std::min(kForwardChunkBytes / (kb * int64_t(sizeof(P))), kForwardOutputBytes / (kg * int64_t(sizeof(Acc)))) /
              nr * nr);
  const auto aligned = [&](int64_t k) { return (k + tile.k_align - 1) / tile.k_align * tile.k_align; };
  // Item t: pad its planes (in parallel when `par`), then run its chunks.
  const auto run_item = [&](int64_t t, bool par) {
    const int64_t n0 = t / s.groups * bundle, grp = t % s.groups, nb = std::min(bundle, s.batch - n0);
    const int64_t N = nb * P_;
    const bool direct = kDirect && nb == 1;
    // Chunks of at most max_chunk positions, as even as whole panels allow.
    const int64_t pieces = (N + max_chunk - 1) / max_chunk;
    const int64_t chunk = ((N + pieces - 1) / pieces + nr - 1) / nr * nr, chunks = (N + chunk - 1) / chunk;
    const int64_t parts = par ? channel_parts(N, chunk, kg, mr, threads) : 1;
    const int64_t part_rows = ((kg + parts - 1) / parts + mr - 1) / mr * mr;
    T* padded = padded_planes_scratch<T>(nb * image_stride);
    const auto pad = [&](int64_t e0, int64_t e1) {   // planes e = b * cg + c
      pad_planes(x + (n0 * s.in_channels + grp * cg) * HW, s.in_channels * HW, cg, e0, e1, g, padded);
    };
    par ? at::parallel_for(0, nb * cg, 1, pad) : pad(0, nb * cg);
    T* og = out + (n0 * s.out_channels + grp * kg) * P_;
    // Unit u: output channels [m0, m1) of part u / chunks, chunk u % chunks of the positions (so that
    // with as many parts as threads, each thread gets one part).
    const auto run_units = [&](int64_t u0, int64_t u1) {
      P* cols = scratch<P>(Scratch::conv_cols, (std::min(chunk, N) + nr - 1) / nr * nr * aligned(std::min(kb, kc)));
      Acc* prod = direct ? nullptr : scratch<Acc>(Scratch::conv_prod, kg * std::min(chunk, N));
      std::vector<int64_t> col_off(static_cast<size_t>(std::min(chunk, N)));
      for (int64_t u = u0; u < u1; ++u) {
        const int64_t q0 = u % chunks * chunk, q1 = std::min(N, q0 + chunk), nq = q1 - q0;
        const int64_t m0 = u / chunks * part_rows, m1 = std::min(kg, m0 + part_rows);
        if (m0 >= m1) continue;
        for (int64_t q = q0, b = q0 / P_, oh = q0 % P_ / g.out_w, ow = q0 % P_ % g.out_w; q < q1; ++q) {
          col_off[q - q0] = b * image_stride + oh * g.sh * wp + ow * g.sw;
          if (++ow == g.out_w) {
            ow = 0;
            if (++oh == g.out_h) {
              oh = 0;
              ++b;
            }
          }
        }
        // Direct: straight into the image's output, the bias entering as beta * C.
        const int64_t rs_c = direct ? P_ : nq;
        Acc* c = nullptr;
        Acc beta = Acc(0);
        if constexpr (kDirect) {
          if (direct) c = og + q0 + m0 * rs_c;
          if (direct && bias != nullptr) {
            beta = Acc(1);
            for (int64_t k = m0; k < m1; ++k) std::fill(og + k * P_ + q0, og + k * P_ + q1, bias[grp * kg + k]);
          }
        }
        if (!direct) c = prod + m0 * rs_c;
        for (int64_t r0 = 0; r0 < kc; r0 += kb) {   // K blocks, accumulated into C
          const int64_t r1 = std::min(kc, r0 + kb);
          E::pack_b_offsets(padded, row_off.data() + r0, r1 - r0, col_off.data(), nq, cols);
          // K block r0 of the packed filters, rows m0.. within it
          E::gemm(m1 - m0, nq, r1 - r0, wpacked + grp * packed_a + r0 * m_pad + m0 * aligned(r1 - r0), cols, c, rs_c,
                  r0 == 0 ? beta : Acc(1));
        }
        for (int64_t q = q0; !direct && q < q1;) {   // scatter the products, run by run
          const int64_t b = q / P_, p = q % P_, len = std::min(q1 - q, P_ - p);
          for (int64_t k = m0; k < m1; ++k) {
            const Acc add = bias != nullptr ? static_cast<Acc>(bias[grp * kg + k]) : Acc(0);
            const Acc* src = prod + k * nq + (q - q0);
            T* dst = og + (b * s.out_channels + k) * P_ + p;
            for (int64_t e = 0; e < len; ++e) dst[e] = static_cast<T>(src[e] + add);
          }
          q += len;
        }
      }
    };
    // Units in parallel only when every thread gets one; otherwise one after another, each GEMM
    // parallel inside over rows (outside a parallel region).
    const int64_t units = chunks * parts;
    par && units >= threads ? at::parallel_for(0, units, 1, run_units) : run_units(0, units);
  };
  if (items >= threads) {
    at::parallel_for(0, items, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) run_item(t, false);
    });
  } else {
    for (int64_t t = 0; t < items; ++t) run_item(t, true);
  }
}

// Images per bundle of the packed forward pass, or 0 where it does not apply: 1x1 stride-1 unpadded
// convolutions need no lowering (but images of fewer than kBundlePositions pixels still take it, to
// share one GEMM: MobileNet-v2's 1x1 layers at 4x4 to 14x14, batch 16, from 0.64-0.86x torch's speed
// to 0.76-1.09x), and planes too large to copy padded (more than kWorkspaceBytes across threads) take
// the plain im2col into a bounded column buffer instead.
int64_t packed_bundle(const Conv2dShape& s, int64_t elem) {
  const auto& g = s.g;
  const Conv2dGemmDims d = conv2d_gemm_dims(s, elem, kWorkspaceBytes);
  const int64_t padded_bytes = d.cg * (g.in_h + 2 * g.ph) * (g.in_w + 2 * g.pw) * elem;
  const int64_t budget = int64_t(kWorkspaceBytes) / at::get_num_threads();
  if ((d.pointwise && d.P >= kBundlePositions) || padded_bytes > budget) return 0;
  return even_bundle(s.batch, std::min(std::max<int64_t>(1, kBundlePositions / d.P), budget / padded_bytes),
                     at::get_num_threads());
}

// The forward pass by im2col: the packed path when `wpacked` is given (bundles of `bundle` images, see
// packed_bundle), else per (image, group) in chunks of the bounded column buffer (or straight from the
// input for 1x1).
template <typename T>
void forward_impl(const T* x, const T* w, const T* wpacked, int64_t bundle, const T* bias, T* out,
                  const Conv2dShape& s) {
  if (wpacked != nullptr) {
    forward_packed<PlainEngine<T>>(x, wpacked, bias, out, s, bundle);
    return;
  }
  const auto& g = s.g;
  const Conv2dGemmDims d = per_thread_dims(s, sizeof(T));
  const int64_t cg = d.cg, kg = d.kg, kc = d.kc, P = d.P, HW = d.HW, chunk = d.chunk;
  const bool pointwise = d.pointwise;
  for_each_item<T>(s, pointwise ? 0 : kc * chunk, [&](int64_t n, int64_t grp, T* cols) {
    const T* xg = x + (n * s.in_channels + grp * cg) * HW;
    const T* wg = w + grp * kg * kc;
    T* og = out + (n * s.out_channels + grp * kg) * P;
    if (bias != nullptr) {
      for (int64_t k = 0; k < kg; ++k) std::fill(og + k * P, og + (k + 1) * P, bias[grp * kg + k]);
    }
    const T beta = bias != nullptr ? T(1) : T(0);
    for (int64_t p0 = 0; p0 < P; p0 += chunk) {
      const int64_t p1 = std::min(P, p0 + chunk);
      if (pointwise) {
        gemm(gemm_args<T>(kg, p1 - p0, kc, wg, kc, 1, xg + p0, HW, 1, og + p0, P, beta));
      } else {
        im2col(xg, cg, g, p0, p1, cols);
        gemm(gemm_args<T>(kg, p1 - p0, kc, wg, kc, 1, cols, p1 - p0, 1, og + p0, P, beta));
      }
    }
  });
}

at::Tensor conv2d_half(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& b, const Conv2dShape& s);

namespace {

DirectWeightStrides direct_strides(const at::Tensor& weight) {   // read in place, in any layout
  return {weight.stride(0), weight.stride(1), weight.stride(2), weight.stride(3)};
}

// A half-precision weight widened to float32 for the float32 kernels: for a frozen weight from the
// WeightCache (the same tensor every call while the weight's bytes stay, so that the filters packed
// for it are found again: keyed on a fresh copy, they missed on every call and churned the cache on
// CPUs without a bfloat16 GEMM), else a fresh copy.
at::Tensor widened_weight(const at::Tensor& weight) {
  if (!WeightCache::cacheable(weight)) return half_as_float(weight);
  return WeightCache::instance().get(weight, WeightCache::cast_to(at::kFloat), [&] { return weight.to(at::kFloat); });
}

}  // namespace

// The forward pass of a checked call: `s` as check_conv2d made it (its algorithm resolved once, so that
// half precision's float32 inside runs the algorithm the caller's tensors chose), `b` the bias made
// contiguous (or undefined).
at::Tensor conv2d_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& b, const Conv2dShape& s) {
  if (is_half(input.scalar_type())) return conv2d_half(input, weight, b, s);
  at::Tensor out = at::empty(conv2d_output_sizes(s), input.options());
  if (out.numel() == 0) return in_format(out, s.format);
  const bool im2col_or_direct = s.algorithm == Conv2dAlgorithm::im2col || s.algorithm == Conv2dAlgorithm::direct;
  if (im2col_or_direct && conv2d_nhwc_applies(input, s)) {   // channels-last in place
    out = at::empty(out.sizes(), input.options().memory_format(at::MemoryFormat::ChannelsLast));
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), kForward, [&] {
      const scalar_t* bp = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
      if (s.algorithm == Conv2dAlgorithm::direct) {
        conv2d_direct_forward<scalar_t>(input.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(), direct_strides(weight), bp,
                                        out.data_ptr<scalar_t>(), s, true);
      } else {
        const at::Tensor w = weight.contiguous(at::MemoryFormat::ChannelsLast);
        conv2d_nhwc_forward<scalar_t>(input.data_ptr<scalar_t>(), weight, w.data_ptr<scalar_t>(), bp,
                                      out.data_ptr<scalar_t>(), s);
      }
    });
    return out;
  }
  const int m = winograd_tile(s.algorithm);   // the cache keys on the caller's weight tensor
  const bool nhwc_winograd = m != 0 && conv2d_nhwc_applies(input, s);
  if (nhwc_winograd) {   // channels-last in place
    at::Tensor y = at::empty(out.sizes(), input.options().memory_format(at::MemoryFormat::ChannelsLast));
    if (all_finite(input) && conv2d_winograd_forward(input, weight, b, y, s, m)) return y;
  }
  const at::Tensor x = input.contiguous();
  if (m != 0 && !nhwc_winograd && all_finite(x) && conv2d_winograd_forward(x, weight, b, out, s, m)) {
    return in_format(out, s.format);
  }
  // Below: im2col for a Winograd algorithm that declined (a NaN or an infinity in x or the weight).
  const at::Tensor w = weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), kForward, [&] {
    const scalar_t* bp = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    if (s.algorithm == Conv2dAlgorithm::direct) {
      conv2d_direct_forward<scalar_t>(x.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(), direct_strides(weight), bp,
                                      out.data_ptr<scalar_t>(), s, false);
    } else {
      const int64_t bundle = packed_bundle(s, x.element_size());
      const at::Tensor wpacked = bundle > 0 ? packed_filters<PlainEngine<scalar_t>>(weight, w.data_ptr<scalar_t>(), s, false)
                                            : at::Tensor();
      forward_impl<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                             wpacked.defined() ? reinterpret_cast<const scalar_t*>(wpacked.data_ptr()) : nullptr, bundle, bp,
                             out.data_ptr<scalar_t>(), s);
    }
  });
  return in_format(out, s.format);
}

// Half precision. bfloat16 where the CPU has the bfloat16 dot product: algorithm="direct", and "auto"
// by conv2d_bf16_direct.cpp's measured rule (most layers of 16+ input and 64+ output channels), run the
// direct kernel (conv2d_bf16_direct.h: products summed in float32 and rounded once, as torch's
// bfloat16 convolution). Otherwise "auto" picks as in float32: Winograd's float32 transforms and
// GEMMs (conv2d_winograd.cpp, the filter transform cached for the caller's weight), or im2col -- in
// bfloat16 on the bfloat16 kernel (vdpbf16ps or AMX) where there is one, the columns lowered straight
// into its panels (Bf16Engine); otherwise (float16; direct without the dot product; 1x1 convolutions
// and planes too large to pad) the operands widened to float32 (exact), the float32 kernels, the
// output rounded once.
at::Tensor conv2d_half(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& b, const Conv2dShape& s) {
  const std::vector<int64_t> sizes = conv2d_output_sizes(s);
  if (c10::multiply_integers(sizes) == 0) return in_format(at::empty(sizes, input.options()), s.format);
  // Below, every output has elements.
  const Bf16DirectKernels* direct = input.scalar_type() == at::kBFloat16 ? bf16_direct_native() : nullptr;
  if (direct != nullptr && bf16_direct_applies(s) &&
      (s.algorithm == Conv2dAlgorithm::direct || (s.chosen && bf16_direct_preferred(s)))) {
    at::Tensor out = at::empty(sizes, input.options());
    conv2d_bf16_direct(input.contiguous(), weight, weight.contiguous(), b, out, s, *direct);
    return in_format(out, s.format);
  }
  Conv2dShape s32 = s;   // the float32 fallback's
  if (const int m = winograd_tile(s.algorithm)) {   // declined (non-finite values): im2col in float32 below
    at::Tensor out = at::empty(sizes, input.options());
    if (all_finite(input) && conv2d_winograd_forward(input.contiguous(), weight, b, out, s, m)) {
      return in_format(out, s.format);
    }
    s32.algorithm = Conv2dAlgorithm::im2col;
  }
  const int64_t bundle = packed_bundle(s, input.element_size());
  if (input.scalar_type() == at::kBFloat16 && gemm_bf16_native() && s.algorithm == Conv2dAlgorithm::im2col &&
      bundle > 0) {
    at::Tensor out = at::empty(sizes, input.options());
    const at::Tensor x = input.contiguous(), w = weight.contiguous();
    using BF = c10::BFloat16;
    const at::Tensor wpacked = packed_filters<Bf16Engine>(weight, w.data_ptr<BF>(), s, false);
    forward_packed<Bf16Engine>(x.data_ptr<BF>(), reinterpret_cast<const Bf16Engine::Packed*>(wpacked.data_ptr()),
                               b.defined() ? b.data_ptr<BF>() : nullptr, out.data_ptr<BF>(), s, bundle);
    return in_format(out, s.format);
  }
  return conv2d_forward(half_as_float(input), widened_weight(weight), half_as_float(b), s32).to(input.scalar_type());
}

at::Tensor conv2d_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                      c10::string_view algorithm) {
  const Conv2dShape s = check_conv2d(input, weight, bias, stride, padding, dilation, groups,
                                     std::string_view(algorithm.data(), algorithm.size()), kForward);
  return conv2d_forward(input, weight, bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor(), s);
}

// dx_g = col2im(W_g^T @ dY_g) per image and group, W_g^T packed once for all of them (`wt`). Small images
// form bundles as in the forward pass: their grad_output copied side by side, one GEMM, then col2im
// image by image from the bundle's columns.
template <typename T>
void grad_input_impl(const T* dy, const T* wt, T* dx, const Conv2dShape& s) {   // wt: pack_filters' W^T
  const auto& g = s.g;
  const Conv2dGemmDims d = per_thread_dims(s, sizeof(T));
  const int64_t cg = d.cg, kg = d.kg, kc = d.kc, P = d.P, HW = d.HW, chunk = d.chunk;
  const bool pointwise = d.pointwise;
  const int64_t packed_a = gemm_packed_a_elems(kc, kg);
  const int64_t fit = int64_t(kWorkspaceBytes) / at::get_num_threads() / (kc * int64_t(sizeof(T)));   // columns
  const int64_t bundle = pointwise ? 1
                                   : even_bundle(s.batch, std::max<int64_t>(1, std::min(kBundlePositions, fit) / P),
                                                 at::get_num_threads());
  const int64_t items = (s.batch + bundle - 1) / bundle * s.groups;
  over_items(items, [&](int64_t t0, int64_t t1) {
    T* cols = scratch<T>(Scratch::conv_cols, pointwise ? 0 : kc * std::max(chunk, bundle * P));
    T* dyb = bundle > 1 ? scratch<T>(Scratch::conv_prod, kg * bundle * P) : nullptr;
    // col2im of positions [p0, p1) of `nb` images whose columns lie side by side (P apart, rows ld
    // apart) into their planes from dxg on: parallel over channels when the items are not (a single
    // item: each thread's channels write their own planes).
    const auto col2im = [&](const T* c, int64_t ld, int64_t nb, int64_t p0, int64_t p1, T* dxg) {
      at::parallel_for(0, cg, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t b = 0; b < nb; ++b) {
          col2im_add(c + c0 * g.kh * g.kw * ld + b * P, ld, c1 - c0, g, p0, p1, dxg + b * s.in_channels * HW + c0 * HW);
        }
      });
    };
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = t / s.groups * bundle, grp = t % s.groups, nb = std::min(bundle, s.batch - n0);
      const T* dyg = dy + (n0 * s.out_channels + grp * kg) * P;
      T* dxg = dx + (n0 * s.in_channels + grp * cg) * HW;   // image b's at + b * in_channels * HW
      GemmArgs<T> args = gemm_args<T>(kc, 0, kg, nullptr, 0, 0, dyg, P, 1, cols, 0, T(0));
      args.a_packed = wt + grp * packed_a;
      if (pointwise) {   // dx_g = W_g^T @ dY_g directly
        args.n = P;
        args.c = dxg;
        args.rs_c = HW;
        gemm(args);
        continue;
      }
      for (int64_t b = 0; b < nb; ++b) {
        T* planes = dxg + b * s.in_channels * HW;
        std::fill(planes, planes + cg * HW, T(0));
      }
      if (nb == 1) {
        for (int64_t p0 = 0; p0 < P; p0 += chunk) {
          const int64_t p1 = std::min(P, p0 + chunk), pc = p1 - p0;
          args.n = pc;
          args.b = dyg + p0;
          args.rs_c = pc;
          gemm(args);
          col2im(cols, pc, 1, p0, p1, dxg);
        }
        continue;
      }
      const int64_t N = nb * P;
      for (int64_t b = 0; b < nb; ++b) {   // the bundle's grad_output side by side: dyb[k][b * P + p]
        for (int64_t k = 0; k < kg; ++k) {
          const T* src = dyg + (b * s.out_channels + k) * P;
          std::copy(src, src + P, dyb + k * N + b * P);
        }
      }
      args.n = N;
      args.b = dyb;
      args.rs_b = N;
      args.rs_c = N;
      gemm(args);
      col2im(cols, N, nb, 0, P, dxg);
    }
  });
}

// dW_g = sum over images of dY_g(n) @ cols(x_g(n))^T, a GEMM whose reduction runs over output positions.
// Images with few positions (ResNet-18's 7x7 and 4x4 layers) would each make a GEMM with a reduction of
// 49 or 16 that reads and writes all of dW (9 MB at 512 channels) for little work: up to
// kBundlePositions positions of several images then form one bundle, their columns and grad_output rows
// side by side, one GEMM each. The bundles are shared out to the threads, each summing its share into
// a partial dW of its own (the first straight into dw), and the partials are added at the end: the GEMMs
// then run one per thread, without a fork per K block. With a single bundle (or thread) the bundles run
// in order and the GEMMs are parallel inside.
template <typename T>
void grad_weight_impl(const T* dy, const T* x, T* dw, const Conv2dShape& s) {
  const auto& g = s.g;
  const int64_t threads = at::get_num_threads();
  if (grad_weight_by_phases<T>(s, false)) return conv2d_grad_weight_phases(dy, x, dw, s, false);
  const Conv2dGemmDims whole = conv2d_gemm_dims(s, sizeof(T), kWorkspaceBytes);
  // Images per bundle: enough for kBundlePositions positions, within a thread's share of the workspace,
  // in even bundles (even_bundle: 4 images of 196 positions make two bundles of 2, not one of 3 and one of 1).
  const int64_t fit = int64_t(kWorkspaceBytes) / threads / (std::max<int64_t>(1, whole.kc) * int64_t(sizeof(T)));
  const int64_t most = std::max<int64_t>(1, std::min((kBundlePositions + whole.P - 1) / std::max<int64_t>(1, whole.P),
                                                     fit / std::max<int64_t>(1, whole.P)));
  const int64_t bundle = even_bundle(s.batch, most, threads);
  const int64_t bundles = (s.batch + bundle - 1) / bundle;
  const int64_t parts = std::min(threads, bundles);
  const Conv2dGemmDims d = parts > 1 ? per_thread_dims(s, sizeof(T)) : whole;
  const int64_t cg = d.cg, kg = d.kg, kc = d.kc, P = d.P, HW = d.HW, chunk = d.chunk;
  const bool pointwise = d.pointwise;
  const int64_t elems = s.groups * kg * kc;
  // Lowered by offsets where a bundle's planes, zero-padded, fit a thread's share of the workspace:
  // cols^T packed straight from them into the GEMM's B panels (gemm_pack_b_offsets: row k an output
  // position, column j a tap), K blocks of positions at a time, so no column matrix is written and then
  // transposed by the packing. ResNet-18 at batch 8, 112 px, on the Intel Xeon, 2 threads: the stem's
  // grad_weight 3.3 -> 1.9 ms (torch 1.6-1.8), the stride-2 3x3 layers' 4-12% faster. Not for 1x1
  // kernels (the downsampling ones: padding whole planes to read a quarter of them was 10-20% slower)
  // nor where the planes do not fit: im2col into the column buffer, below.
  const int64_t padded_hw = (g.in_h + 2 * g.ph) * (g.in_w + 2 * g.pw), wp = g.in_w + 2 * g.pw;
  const bool lowered = g.kh * g.kw > 1 && packed_bundle(s, sizeof(T)) != 0 &&
                       bundle * cg * padded_hw * int64_t(sizeof(T)) <= int64_t(kWorkspaceBytes) / threads;
  const int64_t kb = gemm_tile<T>().k_block, n_pad = gemm_packed_b_elems<T>(1, kc);
  const std::vector<int64_t> tap_off = lowered ? tap_offsets(g, kc, padded_hw, wp) : std::vector<int64_t>();
  // Positions per GEMM: whole K blocks whose packed panels take about kForwardChunkBytes.
  const int64_t pos_chunk = std::max<int64_t>(1, kForwardChunkBytes / (kb * n_pad * int64_t(sizeof(T)))) * kb;
  // The offset of position q % P of image q / P of a bundle in its padded planes (a smaller last bundle
  // uses a prefix).
  std::vector<int64_t> pos_off(static_cast<size_t>(lowered ? bundle * P : 0));
  for (int64_t q = 0; q < int64_t(pos_off.size()); ++q) {
    const int64_t p = q % P;
    pos_off[q] = q / P * cg * padded_hw + p / g.out_w * g.sh * wp + p % g.out_w * g.sw;
  }
  // The bundle's images nb from x_b (their group's planes) against dY_b (kg rows of N = nb * P values,
  // row stride ld) into dw_g: planes padded, then per chunk of positions cols^T packed and multiplied.
  const auto lowered_bundle = [&](const T* xb, int64_t nb, const T* dyb, int64_t ld, T* dwg, bool first) {
    T* padded = padded_planes_scratch<T>(nb * cg * padded_hw);
    pad_planes(xb, s.in_channels * HW, cg, 0, nb * cg, g, padded);
    const int64_t N = nb * P;
    T* bp = scratch<T>(Scratch::conv_cols, std::min(pos_chunk, N) * n_pad);
    for (int64_t q0 = 0; q0 < N; q0 += pos_chunk) {
      const int64_t nq = std::min(pos_chunk, N - q0);
      for (int64_t r0 = 0; r0 < nq; r0 += kb) {
        gemm_pack_b_offsets<T>(padded, pos_off.data() + q0 + r0, std::min(kb, nq - r0), tap_off.data(), kc,
                               bp + r0 * n_pad);
      }
      GemmArgs<T> a = gemm_args<T>(kg, kc, nq, dyb + q0, ld, 1, nullptr, 0, 0, dwg, kc, first ? T(0) : T(1));
      a.b_packed = bp;
      a.k_block = kb;
      gemm(a);
      first = false;
    }
  };
  // Bundles [b0, b1) summed into acc (overwritten; zeros for an empty range).
  const auto sum_bundles = [&](int64_t b0, int64_t b1, T* acc) {
    const bool side_by_side = bundle > 1;
    // (the lowered path's columns live in its own K-block buffer, also Scratch::conv_cols)
    T* cols = lowered ? nullptr
                      : scratch<T>(Scratch::conv_cols, pointwise && !side_by_side ? 1 : kc * std::max(chunk, bundle * P));
    T* dyb = side_by_side ? scratch<T>(Scratch::conv_prod, kg * bundle * P) : nullptr;
    for (int64_t grp = 0; grp < s.groups; ++grp) {
      T* dwg = acc + grp * kg * kc;
      bool first = true;
      for (int64_t bi = b0; bi < b1; ++bi) {
        const int64_t n0 = bi * bundle, nb = std::min(bundle, s.batch - n0), N = nb * P;
        const T* dyg = dy + (n0 * s.out_channels + grp * kg) * P;
        const T* xg = x + (n0 * s.in_channels + grp * cg) * HW;
        for (int64_t b = 0; side_by_side && b < nb; ++b) {   // the bundle's grad_output rows side by side
          for (int64_t k = 0; k < kg; ++k) {
            const T* src = dyg + (b * s.out_channels + k) * P;
            std::copy(src, src + P, dyb + k * N + b * P);
          }
        }
        if (lowered) {
          lowered_bundle(xg, nb, side_by_side ? dyb : dyg, side_by_side ? N : P, dwg, first);
          first = false;
          continue;
        }
        if (side_by_side) {   // and their columns likewise
          for (int64_t b = 0; b < nb; ++b) im2col(xg + b * s.in_channels * HW, cg, g, 0, P, cols + b * P, N);
          gemm(gemm_args<T>(kg, kc, N, dyb, N, 1, cols, 1, N, dwg, kc, first ? T(0) : T(1)));
          first = false;
          continue;
        }
        for (int64_t p0 = 0; p0 < P; p0 += chunk) {
          const int64_t p1 = std::min(P, p0 + chunk), pc = p1 - p0;
          const T beta = first ? T(0) : T(1);
          if (pointwise) {
            gemm(gemm_args<T>(kg, kc, pc, dyg + p0, P, 1, xg + p0, 1, HW, dwg, kc, beta));
          } else {
            im2col(xg, cg, g, p0, p1, cols);
            gemm(gemm_args<T>(kg, kc, pc, dyg + p0, P, 1, cols, 1, pc, dwg, kc, beta));
          }
          first = false;
        }
      }
      if (first) std::fill(dwg, dwg + kg * kc, T(0));   // no images
    }
  };
  if (parts <= 1) {
    sum_bundles(0, bundles, dw);
    return;
  }
  sum_in_parts(parts, bundles, elems, dw, sum_bundles);
}

template <typename T>
void grad_bias_impl(const T* dy, T* db, const Conv2dShape& s) {
  const int64_t P = s.g.out_h * s.g.out_w;
  at::parallel_for(0, s.out_channels, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      double sum = 0;
      for (int64_t n = 0; n < s.batch; ++n) {
        const T* row = dy + (n * s.out_channels + k) * P;
        for (int64_t p = 0; p < P; ++p) sum += row[p];
      }
      db[k] = static_cast<T>(sum);
    }
  });
}

// grad_weight's algorithm for this CPU (common/conv2d_args.h's rule; Winograd computes half precision in
// float32).
Conv2dAlgorithm grad_weight_choice(const Conv2dShape& s, at::ScalarType dtype) {
  return grad_weight_algorithm(s, false, cache_sizes().l3, dtype == at::kDouble ? 8 : 4);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_half(const at::Tensor& grad_output,
                                                                    const at::Tensor& input, const at::Tensor& weight,
                                                                    const Conv2dShape& s, std::array<bool, 3> output_mask);

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_nchw(const at::Tensor& grad_output,
                                                                    const at::Tensor& input, const at::Tensor& weight,
                                                                    const Conv2dShape& s, std::array<bool, 3> output_mask);

// The backward pass of a channels-last call on channels-last input (conv2d_nhwc.h, conv2d_winograd.h,
// conv2d_direct_kernels.h): every gradient in NHWC without copies, but Winograd's grad_input where it
// declines (non-finite values), which runs im2col's through NCHW, and im2col's where its NHWC lowering
// does not apply (conv2d_nhwc_applies).
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_nhwc(const at::Tensor& grad_output,
                                                                    const at::Tensor& input, const at::Tensor& weight,
                                                                    const Conv2dShape& s, std::array<bool, 3> output_mask) {
  constexpr auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor dy = grad_output.contiguous(cl);
  std::optional<bool> dy_finite;   // scanned once, for whichever Winograd pass asks first
  const auto finite_dy = [&] { return dy_finite.has_value() ? *dy_finite : *(dy_finite = all_finite(dy)); };
  at::Tensor dx = at::empty({0}, input.options()), dw = at::empty({0}, input.options()),
             db = at::empty({0}, input.options());
  // im2col's grad_input: asked for, or direct's where its kernels do not pay (direct_grad_input_applies);
  // in NHWC below where its lowering applies, else through the NCHW route
  Conv2dShape s_im2col = s;
  s_im2col.algorithm = Conv2dAlgorithm::im2col;
  const bool direct = s.algorithm == Conv2dAlgorithm::direct;
  const bool direct_own = direct && direct_grad_input_applies(s, input.element_size(), true);
  const bool as_im2col = s.algorithm == Conv2dAlgorithm::im2col || (direct && !direct_own);
  const bool im2col_nhwc = as_im2col && conv2d_nhwc_applies(input, s_im2col);
  bool dx_done = !output_mask[0] || im2col_nhwc;
  if (!dx_done && direct_own) {
    dx = at::empty(input.sizes(), input.options().memory_format(cl));
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), kBackward, [&] {
      conv2d_direct_grad_input<scalar_t>(dy.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(), direct_strides(weight),
                                         dx.data_ptr<scalar_t>(), s, true);
    });
    dx_done = true;
  }
  Conv2dShape s_nchw = as_im2col ? s_im2col : s;   // for the NCHW route: im2col's where Winograd declined
  if (!dx_done && winograd_tile(s.algorithm) != 0) {
    dx = at::empty(input.sizes(), input.options().memory_format(cl));
    dx_done = dx.numel() == 0 ||
              (finite_dy() && conv2d_winograd_grad_input(dy, weight, dx, s, winograd_tile(s.algorithm)));
    s_nchw.algorithm = Conv2dAlgorithm::im2col;   // not Winograd again on the same values
  }
  if (!dx_done) {
    std::tie(dx, std::ignore, std::ignore) = conv2d_backward_nchw(dy, input, weight, s_nchw, {true, false, false});
  }
  const int dw_m = output_mask[1] ? winograd_tile(grad_weight_choice(s, input.scalar_type())) : 0;
  const bool winograd_dw = dw_m != 0 && finite_dy() && all_finite(input);   // else im2col's below
  if (winograd_dw) {
    dw = at::empty(weight.sizes(), weight.options().memory_format(cl));
    conv2d_winograd_grad_weight(input, dy, dw, s, dw_m);
  }
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), kBackward, [&] {
    if (output_mask[0] && im2col_nhwc) {
      dx = at::empty(input.sizes(), input.options().memory_format(cl));
      const at::Tensor w = weight.contiguous(cl);   // read in place when the weight is channels-last
      conv2d_nhwc_grad_input<scalar_t>(dy.data_ptr<scalar_t>(), weight, w.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(),
                                       s_im2col);
    }
    if (output_mask[1] && !winograd_dw) {
      dw = at::empty(weight.sizes(), weight.options().memory_format(cl));
      if (s.algorithm == Conv2dAlgorithm::direct && depthwise_applies(s, input.element_size(), true)) {
        conv2d_depthwise_grad_weight<scalar_t>(dy.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>(),
                                               s, true);
      } else {
        conv2d_nhwc_grad_weight<scalar_t>(dy.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>(),
                                          s);
      }
    }
    if (output_mask[2]) {   // sum over images and positions: the rows of dy
      db = at::empty({s.out_channels}, input.options());
      const scalar_t* rows = dy.data_ptr<scalar_t>();
      scalar_t* out = db.data_ptr<scalar_t>();
      const int64_t K = s.out_channels, R = dy.numel() / std::max<int64_t>(1, K);
      at::parallel_for(0, K, 16, [&](int64_t k0, int64_t k1) {
        std::vector<double> sum(k1 - k0, 0.0);
        for (int64_t r = 0; r < R; ++r) {
          for (int64_t k = k0; k < k1; ++k) sum[k - k0] += rows[r * K + k];
        }
        for (int64_t k = k0; k < k1; ++k) out[k] = static_cast<scalar_t>(sum[k - k0]);
      });
    }
  });
  return {dx, dw, db};
}

// torch's float64 grad_weight on a channels-last call without dilation has the contiguous strides where
// those are also channels-last ones: one input channel per group (depthwise layers, also with a channel
// multiplier) or a 1x1 kernel -- torch's own float64 convolution kernels make the result channels-last
// by .contiguous(channels_last), which leaves such a tensor as it is. K x Cg x kh x kw is then one memory
// order either way, only size-1 dims' strides tell them apart (which opcheck and torch.compile's stride
// asserts do not compare), so every route's result (im2col, direct, the depthwise kernels) is restrided
// in place, not copied.
at::Tensor torch_float64_weight_strides(const at::Tensor& dw, const at::Tensor& input, const Conv2dShape& s) {
  const bool both = s.in_channels / s.groups == 1 || s.g.kh * s.g.kw == 1;
  if (!both || s.format != at::MemoryFormat::ChannelsLast || input.scalar_type() != at::kDouble || s.g.dh != 1 ||
      s.g.dw != 1 || dw.numel() == 0) {
    return dw;
  }
  return dw.as_strided(dw.sizes(), c10::contiguous_strides(dw.sizes()));
}

// The backward pass of a checked call (`s` as check_conv2d_backward made it).
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                                               const at::Tensor& weight, const Conv2dShape& s,
                                                               std::array<bool, 3> output_mask) {
  if (s.in_channels == 0) return conv2d_backward_no_channels(input, weight, s, output_mask);
  if (is_half(input.scalar_type())) return conv2d_backward_half(grad_output, input, weight, s, output_mask);
  auto [dx, dw, db] = conv2d_nhwc_applies(input, s) ? conv2d_backward_nhwc(grad_output, input, weight, s, output_mask)
                                                    : conv2d_backward_nchw(grad_output, input, weight, s, output_mask);
  return {dx, torch_float64_weight_strides(dw, input, s), db};
}

// The backward pass in NCHW (channels-last tensors through NCHW copies).
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_nchw(const at::Tensor& grad_output,
                                                                    const at::Tensor& input, const at::Tensor& weight,
                                                                    const Conv2dShape& s, std::array<bool, 3> output_mask) {
  const at::Tensor dy = grad_output.contiguous();
  std::optional<bool> dy_finite;   // scanned once, for whichever Winograd pass asks first
  const auto finite_dy = [&] { return dy_finite.has_value() ? *dy_finite : *(dy_finite = all_finite(dy)); };
  // Outputs not asked for are returned empty (0 elements).
  at::Tensor dx = at::empty({0}, input.options()), dw = at::empty({0}, input.options()),
             db = at::empty({0}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), kBackward, [&] {
    if (output_mask[0]) {
      dx = at::empty(input.sizes(), input.options());
      // Winograd reads the weight through its strides; declined (non-finite values), im2col's below.
      const bool winograd = dx.numel() > 0 && winograd_tile(s.algorithm) != 0 && finite_dy() &&
                            conv2d_winograd_grad_input(dy, weight, dx, s, winograd_tile(s.algorithm));
      if (!winograd && dx.numel() > 0 && s.algorithm == Conv2dAlgorithm::direct &&
          direct_grad_input_applies(s, input.element_size(), false)) {
        conv2d_direct_grad_input<scalar_t>(dy.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(), direct_strides(weight),
                                           dx.data_ptr<scalar_t>(), s, false);
      } else if (!winograd && dx.numel() > 0) {
        const at::Tensor w = weight.contiguous();
        const at::Tensor wt = packed_filters<PlainEngine<scalar_t>>(weight, w.data_ptr<scalar_t>(), s, true);
        grad_input_impl<scalar_t>(dy.data_ptr<scalar_t>(), reinterpret_cast<const scalar_t*>(wt.data_ptr()),
                                  dx.data_ptr<scalar_t>(), s);
      }
      dx = in_format(dx, s.format);   // torch: the convolution's memory format
    }
    if (output_mask[1]) {
      const at::Tensor x = input.contiguous();
      const int m = winograd_tile(grad_weight_choice(s, input.scalar_type()));
      if (m != 0 && finite_dy() && all_finite(x)) {   // written in the output's format
        dw = at::empty(weight.sizes(), weight.options().memory_format(s.format));
        conv2d_winograd_grad_weight(x, dy, dw, s, m);
      } else if (s.algorithm == Conv2dAlgorithm::direct && depthwise_applies(s, x.element_size(), false)) {
        dw = at::empty(weight.sizes(), weight.options());
        conv2d_depthwise_grad_weight<scalar_t>(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>(), s,
                                               false);
        dw = in_format(dw, s.format);
      } else {   // im2col's (also where Winograd declines: non-finite values)
        dw = at::empty(weight.sizes(), weight.options());
        grad_weight_impl<scalar_t>(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>(), s);
        dw = in_format(dw, s.format);
      }
    }
    if (output_mask[2]) {
      db = at::empty({s.out_channels}, input.options());
      grad_bias_impl<scalar_t>(dy.data_ptr<scalar_t>(), db.data_ptr<scalar_t>(), s);
    }
  });
  return {dx, dw, db};
}

// Half precision, as the forward pass: float32 inside, each gradient rounded once. Winograd's
// grad_input is given the caller's weight (it widens inside), so that its filter transform is keyed on
// that weight rather than on a widened copy that would be a new cache entry every call.
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_half(const at::Tensor& grad_output,
                                                                    const at::Tensor& input, const at::Tensor& weight,
                                                                    const Conv2dShape& s, std::array<bool, 3> output_mask) {
  int m = output_mask[0] ? winograd_tile(s.algorithm) : 0;
  Conv2dShape s32 = s;   // the float32 rest's
  at::Tensor dx;
  if (m != 0) {
    dx = at::empty(input.sizes(), input.options());
    if (dx.numel() > 0 && !(all_finite(grad_output) &&
                            conv2d_winograd_grad_input(grad_output.contiguous(), weight, dx, s, m))) {
      m = 0;   // declined (non-finite values): im2col's, with the rest in float32 below
      s32.algorithm = Conv2dAlgorithm::im2col;
    }
    dx = in_format(dx, s.format);
  }
  const bool dx_here = output_mask[0] && m == 0;   // the only gradient below that reads the weight
  auto [dx32, dw32, db32] = conv2d_backward(half_as_float(grad_output), half_as_float(input),
                                            dx_here ? widened_weight(weight) : half_as_float(weight), s32,
                                            {dx_here, output_mask[1], output_mask[2]});
  const auto dt = input.scalar_type();
  return {m != 0 ? dx : dx32.to(dt), dw32.to(dt), db32.to(dt)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, c10::string_view algorithm,
    std::array<bool, 3> output_mask) {
  const Conv2dShape s = check_conv2d_backward(grad_output, input, weight, stride, padding, dilation, groups,
                                              std::string_view(algorithm.data(), algorithm.size()), kBackward);
  return conv2d_backward(grad_output, input, weight, s, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("conv2d", &conv2d_cpu);
  m.impl("conv2d_backward", &conv2d_backward_cpu);
}

}  // namespace fastconv::cpu
