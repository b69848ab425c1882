// bfloat16 direct convolution on the CPU's bfloat16 dot product: conv2d_bf16_direct.h says the
// algorithm, conv2d_bf16_direct.inc holds the micro-kernel.
#include "cpu/conv2d_bf16_direct.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <string_view>
#include <vector>

#include "common/checks.h"
#include "common/weight_cache.h"
#include "cpu/half_runs.h"
#include "cpu/isa.h"
#include "cpu/memory.h"

namespace fastconv::cpu {
namespace {

constexpr int MR = 6, NR = 64;   // gemm_bf16_kernels.inc's kBf16MR x kBf16NR, the tile's shape

// Which kernel taps of output row (or column) o fall inside the input: bit i for tap i.
uint32_t tap_mask(int64_t o, int64_t k, int64_t stride, int64_t pad, int64_t dil, int64_t in) {
  uint32_t m = 0;
  for (int64_t i = 0; i < k; ++i) {
    const int64_t at = conv_tap(o, i, stride, pad, dil);
    if (at >= 0 && at < in) m |= 1u << i;
  }
  return m;
}

// A tile of up to MR output positions: each one's offset in the padded NHWC input (in pixels, at tap
// (0, 0)) and in the output (image n's channel 0 plane), and the taps any of them needs.
struct Tile {
  int64_t in[MR], out[MR];
  int rows;
  uint32_t row_taps, col_taps;
};

// The positions of `batch` images grouped by their tap masks (row mask, then column mask; raster order
// within a group, so a tile's pixels are neighbours), each group cut into tiles of MR (its last tile
// partial): a tile's positions need the same taps, so none of them ever multiplies the padding. An
// infinite weight on a tap that lies in the padding thus gives no NaN, as in torch's bfloat16
// convolution on the CPU, and every position's sum is the same whatever shares its tile. (Mixing
// groups in a tile measured no faster: the union of their taps costs what the partial tiles do.)
// Output offsets are from the first image's.
std::vector<Tile> plan_tiles(const Conv2dShape& s, int64_t batch, int64_t hp, int64_t wp) {
  const auto& g = s.g;
  // The rows (columns) of each distinct mask, masks in increasing order.
  const auto classes = [](int64_t count, const auto& mask_of) {
    std::vector<std::pair<uint32_t, std::vector<int64_t>>> out;
    for (int64_t o = 0; o < count; ++o) {
      const uint32_t m = mask_of(o);
      auto it = std::find_if(out.begin(), out.end(), [&](const auto& c) { return c.first == m; });
      if (it == out.end()) it = out.insert(out.end(), {m, {}});
      it->second.push_back(o);
    }
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    return out;
  };
  const auto rows = classes(g.out_h, [&](int64_t o) { return tap_mask(o, g.kh, g.sh, g.ph, g.dh, g.in_h); });
  const auto cols = classes(g.out_w, [&](int64_t o) { return tap_mask(o, g.kw, g.sw, g.pw, g.dw, g.in_w); });
  std::vector<Tile> tiles;
  tiles.reserve(static_cast<size_t>((batch * g.out_h * g.out_w + MR - 1) / MR));
  Tile cur{};
  const auto flush = [&] {
    if (cur.rows == 0) return;
    for (int r = cur.rows; r < MR; ++r) {   // spare rows repeat the last position; never stored
      cur.in[r] = cur.in[cur.rows - 1];
      cur.out[r] = cur.out[cur.rows - 1];
    }
    tiles.push_back(cur);
    cur = Tile{};
  };
  for (const auto& [rm, ohs] : rows) {
    for (const auto& [cm, ows] : cols) {
      for (int64_t n = 0; n < batch; ++n) {
        for (int64_t oh : ohs) {
          for (int64_t ow : ows) {
            cur.in[cur.rows] = (n * hp + oh * g.sh) * wp + ow * g.sw;
            cur.out[cur.rows] = n * s.out_channels * g.out_h * g.out_w + oh * g.out_w + ow;
            cur.row_taps = rm;
            cur.col_taps = cm;
            if (++cur.rows == MR) flush();
          }
        }
      }
      flush();
    }
  }
  return tiles;
}

// The filters (out_channels x C x kh x kw bfloat16 bits) as panels of NR output channels, each
// [tap][channel pair][NR lanes] pair words; channels past C and lanes past out_channels zero.
at::Tensor pack_filters(const uint16_t* w, const Conv2dShape& s, int64_t pairs, bool keep) {
  const int64_t taps = s.g.kh * s.g.kw, panels = (s.out_channels + NR - 1) / NR, panel = taps * pairs * NR * 2;
  const auto opts = at::TensorOptions().dtype(at::kBFloat16);
  at::Tensor out = keep ? at::empty({panels * panel}, opts)
                        : at::from_blob(scratch<uint16_t>(Scratch::conv_wpack, panels * panel), {panels * panel}, opts);
  uint16_t* dst = reinterpret_cast<uint16_t*>(out.data_ptr());
  const int64_t C = s.in_channels;
  at::parallel_for(0, panels, 1, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      for (int64_t t = 0; t < taps; ++t) {
        for (int64_t p = 0; p < pairs; ++p) {
          uint16_t* o = dst + j * panel + (t * pairs + p) * NR * 2;
          for (int64_t l = 0; l < NR; ++l) {
            const int64_t k = j * NR + l;
            for (int64_t e = 0; e < 2; ++e) {
              const int64_t c = 2 * p + e;
              o[2 * l + e] = k < s.out_channels && c < C ? w[(k * C + c) * taps + t] : uint16_t(0);
            }
          }
        }
      }
    }
  });
  return out;
}

}  // namespace

bool bf16_direct_applies(const Conv2dShape& s) { return s.groups == 1 && s.g.kh <= 32 && s.g.kw <= 32; }

// algorithm="auto" in bfloat16, measured on AMD Zen 4 (2 threads, batch 8, ResNet-18's layers at 224
// and 112 pixels): direct beat im2col on the bfloat16 kernel and float32 Winograd on every 3x3 layer
// (by 1.1-1.6x at 14x14 and below, where Winograd's tiles and im2col's panels are mostly edge, and the
// skipped padding taps are 5-31% of the work), and on 1x1 stride-1 layers. It loses where a panel's
// 64 channels are mostly empty (16 or 32 output channels: 2-3x slower than im2col), on the 3-channel
// stem (each tap's run of channels too short), and on 1x1 stride-2 layers (the NHWC copy moves four
// pixels for each one read: 2x slower at 56x56).
bool bf16_direct_preferred(const Conv2dShape& s) {
  const bool strided_pointwise = s.g.kh == 1 && s.g.kw == 1 && (s.g.sh > 1 || s.g.sw > 1);
  return s.in_channels >= 16 && s.out_channels >= 64 && !strided_pointwise;
}

const Bf16DirectKernels* bf16_direct_native() {
  const Isa isa = active_isa();
  return isa == Isa::avx512_bf16 || isa == Isa::amx ? &bf16_direct_avx512bf16 : nullptr;
}

void conv2d_bf16_direct(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& w, const at::Tensor& bias,
                        at::Tensor& out, const Conv2dShape& s, const Bf16DirectKernels& kernels,
                        int64_t workspace_bytes) {
  const auto& g = s.g;
  const int64_t C = s.in_channels, pairs = (C + 1) / 2, hp = g.in_h + 2 * g.ph, wp = g.in_w + 2 * g.pw;
  const int64_t taps = g.kh * g.kw, panel = taps * pairs * NR * 2, panels = (s.out_channels + NR - 1) / NR;
  const int64_t plane = g.out_h * g.out_w, image_words = hp * wp * pairs;
  const auto bits = [](const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr()); };
  // The filters, cached for a weight that does not require grad (the layout is the same on every ISA).
  const at::Tensor packed = WeightCache::instance().get(weight, WeightCache::bf16_direct_filters(), [&] {
    return pack_filters(bits(w), s, pairs, WeightCache::cacheable(weight));
  });
  const uint16_t* bp = bits(packed);
  const uint16_t* biasb = bias.defined() ? bits(bias) : nullptr;
  // Bundles of images whose NHWC copy fits the workspace (at least one image).
  const int64_t bundle = std::clamp<int64_t>(workspace_bytes / std::max<int64_t>(1, image_words * 4), 1, s.batch);
  uint32_t* xp = scratch<uint32_t>(Scratch::conv_pad, bundle * image_words);
  const uint16_t* xb16 = reinterpret_cast<const uint16_t*>(xp);
  std::vector<Tile> tiles;
  for (int64_t n0 = 0; n0 < s.batch; n0 += bundle) {
    const int64_t nb = std::min(bundle, s.batch - n0);
    // 1. The bundle's input, zero-padded NHWC pair words (pairs words a pixel).
    const uint16_t* xb = bits(x) + n0 * C * g.in_h * g.in_w;
    at::parallel_for(0, nb * hp, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = r / hp, h = r % hp - g.ph;
        uint32_t* row = xp + r * wp * pairs;
        if (h < 0 || h >= g.in_h) {
          std::fill(row, row + wp * pairs, 0u);
          continue;
        }
        std::fill(row, row + g.pw * pairs, 0u);
        std::fill(row + (g.pw + g.in_w) * pairs, row + wp * pairs, 0u);
        kernels.pair_rows(xb + (n * C * g.in_h + h) * g.in_w, g.in_h * g.in_w, C, g.in_w, row + g.pw * pairs, pairs);
      }
    });
    // 2. Its tiles (the same for every full bundle).
    if (n0 == 0 || nb != bundle) tiles = plan_tiles(s, nb, hp, wp);
    const int64_t ntiles = static_cast<int64_t>(tiles.size());
    uint16_t* ob = reinterpret_cast<uint16_t*>(out.data_ptr()) + n0 * s.out_channels * plane;
    // 3. (panel, tile) products in chunks of tiles, panels within a chunk. Where the input outweighs the
    // filters, a chunk's input (its positions' pixels, about a quarter of the L2 cache) is reused from
    // cache by every panel; otherwise one chunk of all tiles, each panel's filters reused by every tile.
    const int64_t in_bytes = nb * image_words * 4, w_bytes = panels * panel * 2;
    const int64_t chunk_positions = l2_cache_bytes() / 4 / std::max<int64_t>(1, g.sh * g.sw * pairs * 4);
    const int64_t chunk = in_bytes > w_bytes ? std::clamp<int64_t>(chunk_positions / MR, 1, ntiles) : ntiles;
    at::parallel_for(0, panels * ntiles, 1, [&](int64_t u0, int64_t u1) {
      alignas(64) uint16_t result[MR * NR];
      alignas(64) float add[NR];
      std::vector<Bf16Tap> tap_list(static_cast<size_t>(taps));
      int64_t loaded = -1;   // the panel whose biases `add` holds
      for (int64_t u = u0; u < u1; ++u) {
        // chunk c holds tiles [c * chunk, c * chunk + size), its units panel-major within it
        const int64_t c = u / (panels * chunk), first = c * chunk, size = std::min(chunk, ntiles - first);
        const int64_t j = (u - first * panels) / size, tile = first + (u - first * panels) % size;
        const int64_t lanes = std::min<int64_t>(NR, s.out_channels - j * NR);
        if (j != loaded) {
          for (int64_t l = 0; l < NR; ++l) {
            add[l] = biasb != nullptr && l < lanes ? bf16_bits_to_float(biasb[j * NR + l]) : 0.0f;
          }
          loaded = j;
        }
        const Tile& t = tiles[static_cast<size_t>(tile)];
        int nt = 0;
        for (int64_t ti = 0; ti < g.kh; ++ti) {
          if (!(t.row_taps >> ti & 1u)) continue;
          for (int64_t tj = 0; tj < g.kw; ++tj) {
            if (!(t.col_taps >> tj & 1u)) continue;
            tap_list[nt++] = Bf16Tap{(ti * g.dh * wp + tj * g.dw) * 2 * pairs, (ti * g.kw + tj) * pairs * NR * 2};
          }
        }
        const uint16_t* rows[MR];
        for (int r = 0; r < MR; ++r) rows[r] = xb16 + t.in[r] * 2 * pairs;
        kernels.tile(rows, tap_list.data(), nt, pairs, bp + j * panel, add, result);
        for (int64_t l = 0; l < lanes; ++l) {
          uint16_t* o = ob + (j * NR + l) * plane;
          for (int r = 0; r < t.rows; ++r) o[t.out[r]] = result[r * NR + l];
        }
      }
    });
  }
}

namespace {

// For tests (fastconv_testing, outside fastconv's op table): the bfloat16 direct convolution on a
// chosen build of its kernels, "emulated" (the portable vdpbf16ps, on every machine) or
// "avx512_bf16" (the real instruction, refused where the CPU lacks it). Batched NCHW input, groups 1;
// `workspace` (bytes, 0: the default) bounds the NHWC copy, so tests can make it take several bundles.
at::Tensor conv2d_bf16_direct_path(const at::Tensor& input, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view path,
                                   int64_t workspace) {
  constexpr const char* op = "fastconv_testing::conv2d_bf16_direct: ";
  const Conv2dShape s = check_conv2d(input, weight, bias, stride, padding, dilation, 1, "direct", "conv2d_bf16_direct");
  TORCH_CHECK(input.scalar_type() == at::kBFloat16 && input.dim() == 4, op, "expected a 4-D bfloat16 input");
  const std::string_view name(path.data(), path.size());
  TORCH_CHECK(name == "emulated" || name == "avx512_bf16", op, "unknown path '", name, "' (emulated, avx512_bf16)");
  TORCH_CHECK(name == "emulated" || best_supported_isa() >= Isa::avx512_bf16, op, "this CPU has no AVX512-BF16");
  TORCH_CHECK(workspace >= 0, op, "expected a workspace of at least 0 bytes, but got ", workspace);
  at::Tensor out = at::empty(conv2d_output_sizes(s), input.options());
  if (out.numel() == 0) return out;
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  conv2d_bf16_direct(input.contiguous(), weight, weight.contiguous(), b, out, s,
                     name == "emulated" ? bf16_direct_emulated : bf16_direct_avx512bf16,
                     workspace > 0 ? workspace : int64_t(kWorkspaceBytes));
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastconv_testing, m) {
  m.def("conv2d_bf16_direct(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
        "int[2] dilation, str path, int workspace=0) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastconv_testing, CPU, m) { m.impl("conv2d_bf16_direct", &conv2d_bf16_direct_path); }

}  // namespace fastconv::cpu
