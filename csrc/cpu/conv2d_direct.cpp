// The direct convolution on the CPU (algorithm="direct"): a loop nest over register-blocked tiles of
// MR positions x NR channels (conv2d_direct_kernels.h), reading the input (forward) or grad_output
// (grad_input) in place, NCHW or NHWC (channels-last: the reduction runs along each pixel's contiguous
// channels and a tile's results are stored pixel by pixel): no column matrix and no padded copy. The
// weight is read through its strides (contiguous or channels-last) and repacked once per call
// into the kernel's order, [group][channel block][tap][reduction channel][NR], zero-filled past the
// last channel; grad_weight uses the im2col path's columns x grad_output (conv2d.cpp).
//
// Work is parallel over (group, channel block, image, run of tiles), images and tiles fastest so a
// thread keeps one block of packed weights hot in cache across the batch (small images have few tiles).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "common/conv2d_args.h"
#include "cpu/conv2d_depthwise.h"
#include "cpu/conv2d_direct_kernels.h"
#include "cpu/isa.h"

namespace fastconv::cpu {
namespace {

// The baseline-ISA build (16-byte vectors): the portable fallback.
constexpr int kVecBytes = 16;
#include "cpu/conv2d_direct.inc"

template <typename T>
const DirectConvKernels<T>& kernels_for() {
  static const DirectConvKernels<T> baseline = make_direct_kernels<T>();
  if constexpr (std::is_same_v<T, float>) {
    return for_active_isa(direct_kernels_f32_avx512, direct_kernels_f32_avx512_emulated,
                          direct_kernels_f32_avx2, baseline);
  } else {
    return for_active_isa(direct_kernels_f64_avx512, direct_kernels_f64_avx512_emulated,
                          direct_kernels_f64_avx2, baseline);
  }
}

constexpr int64_t kTilesPerItem = 16;

// Reduction channels per pass over a run of tiles. The kernel sweeps the chunk's channels once per
// tap, reading per channel NR weights and about three lines of source pixels; the chunk is sized so
// one sweep (~40 KB) stays in L1 for the next tap, which reads mostly the same lines.
int64_t depth_chunk(int64_t depth, int64_t nr, size_t elem) {
  const int64_t per_channel = nr * static_cast<int64_t>(elem) + 3 * 64;
  return std::min(depth, std::max<int64_t>(16, (int64_t(40) << 10) / per_channel));
}

// Packs w (K, Cg, kh, kw) per group into [group][block of nr channels][reduction chunk][tap]
// [reduction channel of the chunk][nr], the order the tiles read it in. Forward:
// the vector runs over output channels and the reduction over input channels; transposed (for
// grad_input) the other way round.
template <typename T>
at::Tensor pack_weights(const T* w, const DirectWeightStrides& ws, const Conv2dShape& s, int64_t nr, bool transposed) {
  const int64_t cg = s.in_channels / s.groups, kg = s.out_channels / s.groups, taps = s.g.kh * s.g.kw;
  const int64_t vec = transposed ? cg : kg, depth = transposed ? kg : cg;
  const int64_t blocks = (vec + nr - 1) / nr, chunk = depth_chunk(depth, nr, sizeof(T));
  at::Tensor packed = at::empty({s.groups * blocks * taps * depth * nr},
                                at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  T* dst = packed.data_ptr<T>();
  at::parallel_for(0, s.groups * blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t gb = b0; gb < b1; ++gb) {
      const int64_t grp = gb / blocks, v0 = gb % blocks * nr;
      T* out = dst + gb * taps * depth * nr;
      for (int64_t r0 = 0; r0 < depth; r0 += chunk) {
        for (int64_t t = 0; t < taps; ++t) {
          for (int64_t r = r0; r < std::min(depth, r0 + chunk); ++r) {
            for (int64_t l = 0; l < nr; ++l) {
              const int64_t v = v0 + l;
              const int64_t k = transposed ? r : v, c = transposed ? v : r;   // within the group
              *out++ = v < vec ? w[(grp * kg + k) * ws.k + c * ws.c + t / s.g.kw * ws.i + t % s.g.kw * ws.j] : T(0);
            }
          }
        }
      }
    }
  });
  return packed;
}

// Where the tiles read and write, per image and group: the source (input, or grad_output for
// grad_input) has pixels `src_pixel` and reduction channels `src_channel` apart; the result has
// `positions` pixels per image, `out_pixel` apart, and channels `out_channel` apart. NCHW: pixels 1
// apart, channels a plane; NHWC: channels 1 apart, pixels a row of all channels.
template <typename T>
struct TileOperands {
  const T* src;
  int64_t src_image, src_group, src_pixel, src_channel;
  T* out;
  int64_t out_image, out_group, out_pixel, out_channel, positions;
  const T* bias;   // per result channel, or null
};

// The strides of a tensor of `channels` channels (`group` of them per group) and `pixels` pixels per
// image: per image, per group, per pixel, per channel.
struct Layout {
  int64_t image, group, pixel, channel;
};
Layout layout_of(bool nhwc, int64_t channels, int64_t group, int64_t pixels) {
  return nhwc ? Layout{channels * pixels, group, channels, 1} : Layout{channels * pixels, group * pixels, 1, pixels};
}

// The shared loop nest. tap(p, t) is the offset within a source plane of what tap t of result pixel
// p reads (a pixel index within the image), or -1 for a zero. Tiles number the pixels of the whole batch, so a tile may span two
// images (no half-empty tiles on small images). Work items are runs of kTilesPerItem tiles of one
// channel block; within an item the reduction runs in chunks whose
// weights stay in L1 while every tile of the run uses them, tiles accumulating from chunk to chunk.
template <typename T, typename Tap>
void run_tiles(const DirectConvKernels<T>& kern, const T* packed, const TileOperands<T>& o, int64_t batch,
               int64_t groups, int64_t vec, int64_t depth, int64_t taps, const Tap& tap) {
  const int64_t positions = o.positions;
  const int64_t mr = kern.mr, nr = kern.nr, chunk = depth_chunk(depth, nr, sizeof(T));
  const int64_t blocks = (vec + nr - 1) / nr, total = batch * positions, tiles = (total + mr - 1) / mr;
  const int64_t runs = (tiles + kTilesPerItem - 1) / kTilesPerItem;
  // What taps outside the image read: zeros for every reduction channel.
  std::unique_ptr<T, decltype(&std::free)> zeros(
      static_cast<T*>(std::calloc((depth - 1) * o.src_channel + 1, sizeof(T))), &std::free);
  FC_CHECK(zeros != nullptr, "conv2d", "out of memory");
  at::parallel_for(0, groups * blocks * runs, 1, [&](int64_t i0, int64_t i1) {
    std::vector<const T*> src(kTilesPerItem * taps * mr);
    std::vector<int64_t> dst(kTilesPerItem * mr);
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t run = item % runs, blk = item / runs % blocks, grp = item / runs / blocks;
      const int64_t t0 = run * kTilesPerItem, t1 = std::min(tiles, t0 + kTilesPerItem);
      for (int64_t tile = t0; tile < t1; ++tile) {   // the taps and destinations of every tile of the run
        const T** ts = src.data() + (tile - t0) * taps * mr;
        int64_t* td = dst.data() + (tile - t0) * mr;
        for (int64_t m = 0; m < mr; ++m) {
          const int64_t q = tile * mr + m, n = q / positions, p = q % positions;   // q may pass the batch
          const T* base = o.src + n * o.src_image + grp * o.src_group;
          td[m] = n * o.out_image + grp * o.out_group + blk * nr * o.out_channel + p * o.out_pixel;
          for (int64_t t = 0; t < taps; ++t) {
            const int64_t pixel = q < total ? tap(p, t) : -1;
            ts[t * mr + m] = pixel >= 0 ? base + pixel * o.src_pixel : zeros.get();
          }
        }
      }
      const int64_t w = std::min(nr, vec - blk * nr);
      const T* b = o.bias != nullptr ? o.bias + grp * vec + blk * nr : nullptr;
      const T* wblock = packed + (grp * blocks + blk) * taps * depth * nr;
      for (int64_t r0 = 0; r0 < depth; r0 += chunk) {
        const int64_t dc = std::min(chunk, depth - r0);
        for (int64_t tile = t0; tile < t1; ++tile) {
          kern.tile(taps, dc, src.data() + (tile - t0) * taps * mr, r0 * o.src_channel, o.src_channel,
                    wblock + r0 * taps * nr, o.out, dst.data() + (tile - t0) * mr, o.out_channel,
                    std::min(mr, total - tile * mr), w, b, r0 > 0);
        }
      }
    }
  });
}

}  // namespace

template <typename T>
void conv2d_direct_forward(const T* x, const T* w, const DirectWeightStrides& ws, const T* bias, T* out,
                           const Conv2dShape& s, bool nhwc) {
  if (depthwise_applies(s, sizeof(T), nhwc)) return conv2d_depthwise_forward(x, w, ws, bias, out, s, nhwc);
  const auto& g = s.g;
  const auto& kern = kernels_for<T>();
  const int64_t cg = s.in_channels / s.groups, kg = s.out_channels / s.groups, taps = g.kh * g.kw;
  const int64_t HW = g.in_h * g.in_w, P = g.out_h * g.out_w;
  const at::Tensor packed = pack_weights(w, ws, s, kern.nr, false);
  // Tap t = (i, j) of output pixel p reads input pixel (oh*sh - ph + i*dh, ow*sw - pw + j*dw).
  const auto tap = [&](int64_t p, int64_t t) -> int64_t {
    const int64_t ih = conv_tap(p / g.out_w, t / g.kw, g.sh, g.ph, g.dh);
    const int64_t iw = conv_tap(p % g.out_w, t % g.kw, g.sw, g.pw, g.dw);
    return ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w ? ih * g.in_w + iw : -1;
  };
  const Layout in = layout_of(nhwc, s.in_channels, cg, HW), res = layout_of(nhwc, s.out_channels, kg, P);
  const TileOperands<T> o{x,   in.image,  in.group,  in.pixel,  in.channel,
                          out, res.image, res.group, res.pixel, res.channel, P, bias};
  run_tiles<T>(kern, packed.data_ptr<T>(), o, s.batch, s.groups, kg, cg, taps, tap);
}

bool direct_grad_input_applies(const Conv2dShape& s, int64_t elem, bool nhwc) {
  return depthwise_applies(s, elem, nhwc) || (s.g.sh == 1 && s.g.sw == 1);
}

template <typename T>
void conv2d_direct_grad_input(const T* dy, const T* w, const DirectWeightStrides& ws, T* dx, const Conv2dShape& s,
                              bool nhwc) {
  TORCH_INTERNAL_ASSERT(direct_grad_input_applies(s, sizeof(T), nhwc),
                        "conv2d_direct_grad_input: a strided layer's grad_input is im2col's");
  if (depthwise_applies(s, sizeof(T), nhwc)) return conv2d_depthwise_grad_input(dy, w, ws, dx, s, nhwc);
  const auto& g = s.g;
  const auto& kern = kernels_for<T>();
  const int64_t cg = s.in_channels / s.groups, kg = s.out_channels / s.groups, taps = g.kh * g.kw;
  const int64_t HW = g.in_h * g.in_w, P = g.out_h * g.out_w;
  const at::Tensor packed = pack_weights(w, ws, s, kern.nr, true);
  // The transposed form: input pixel q receives grad_output at the output pixel whose tap t reads
  // it, if there is one (conv_reader: in range and on the stride's grid).
  const auto tap = [&](int64_t q, int64_t t) -> int64_t {
    const int64_t oh = conv_reader(q / g.in_w, t / g.kw, g.sh, g.ph, g.dh, g.out_h);
    const int64_t ow = conv_reader(q % g.in_w, t % g.kw, g.sw, g.pw, g.dw, g.out_w);
    return oh >= 0 && ow >= 0 ? oh * g.out_w + ow : -1;
  };
  const Layout src = layout_of(nhwc, s.out_channels, kg, P), res = layout_of(nhwc, s.in_channels, cg, HW);
  const TileOperands<T> o{dy, src.image, src.group, src.pixel, src.channel,
                          dx, res.image, res.group, res.pixel, res.channel, HW, nullptr};
  run_tiles<T>(kern, packed.data_ptr<T>(), o, s.batch, s.groups, cg, kg, taps, tap);
}

template void conv2d_direct_forward<float>(const float*, const float*, const DirectWeightStrides&, const float*, float*,
                                           const Conv2dShape&, bool);
template void conv2d_direct_forward<double>(const double*, const double*, const DirectWeightStrides&, const double*,
                                            double*, const Conv2dShape&, bool);
template void conv2d_direct_grad_input<float>(const float*, const float*, const DirectWeightStrides&, float*,
                                              const Conv2dShape&, bool);
template void conv2d_direct_grad_input<double>(const double*, const double*, const DirectWeightStrides&, double*,
                                               const Conv2dShape&, bool);

}  // namespace fastconv::cpu
