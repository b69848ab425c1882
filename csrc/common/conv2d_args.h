// Argument checks and output geometry for conv2d, shared by the CPU and CUDA glue (torch side).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <optional>
#include <string_view>
#include <tuple>

#include "common/checks.h"
#include "common/conv2d.h"

namespace fastconv {

enum class Conv2dAlgorithm { im2col, direct, winograd_2x2, winograd_4x4 };

inline int winograd_tile(Conv2dAlgorithm a) {   // m of F(m x m, 3 x 3), or 0
  return a == Conv2dAlgorithm::winograd_2x2 ? 2 : a == Conv2dAlgorithm::winograd_4x4 ? 4 : 0;
}

struct Conv2dShape {
  Conv2dGeometry g;
  Conv2dAlgorithm algorithm;   // "auto" resolved (choose_conv2d_algorithm)
  bool chosen;                 // the caller asked for "auto" (a dtype's own rule may refine the choice)
  int64_t batch, in_channels, out_channels, groups;
  bool batched;
  at::MemoryFormat format;   // of the output (torch: channels-last if input or weight is)
};

// Winograd F(m x m, 3 x 3) as written here: 3x3 kernels, stride 1, dilation 1, one group (grouped
// convolutions would need per-group GEMMs of a few channels, where Winograd does not pay).
inline bool winograd_applies(const Conv2dShape& s) {
  const auto& g = s.g;
  return g.kh == 3 && g.kw == 3 && g.sh == 1 && g.sw == 1 && g.dh == 1 && g.dw == 1 && s.groups == 1;
}

// algorithm="winograd": F(4x4) does 2.25 multiplies per output against F(2x2)'s 4, and wins unless
// the output is so small that its 4x4 tiles are mostly padding: F(2x2) for outputs under 4 pixels
// on a side.
inline Conv2dAlgorithm choose_winograd_tile(const Conv2dShape& s) {
  return s.g.out_h < 4 || s.g.out_w < 4 ? Conv2dAlgorithm::winograd_2x2 : Conv2dAlgorithm::winograd_4x4;
}

// algorithm="auto", from measurements on this project's CPU (README; AMD EPYC, 2 threads, ResNet-18's
// 3x3 layers at batch 1, 2, 4 and 8): on the CPU,
// - forward and grad_input: Winograd for 3x3 stride-1 layers with at least 64 input and output
//   channels (ResNet/VGG 3x3 layers: 1.1-1.8x torch; with fewer channels the transforms outweigh the
//   saved multiplies), F(4x4) on outputs of at least 7x7 and F(2x2) on those of at least 4x4, each
//   given enough tiles to amortise its filter transform U (36 or 16 x C x K values). A weight that
//   requires grad is not cached (weight_cache.h): each call writes U, so both need 32 tiles
//   (512 channels at 7x7: batch 8, 32 tiles of 4x4, F(4x4) 7.4 ms against im2col's 11.2; batch 2,
//   8 tiles, 4.9 against 3.4, F(2x2)'s 32 tiles 3.2; at 4x4 and batch 8, F(2x2) 4.0 against 4.8). A
//   cached U is only read, and the read is what costs with few tiles: F(4x4) from 8 tiles where
//   U fits 9.4 MB (C x K <= 256^2; 256 channels at 14x14, batch 1, 16 tiles: 0.81 ms against F(2x2)'s
//   0.92 and im2col's 1.50), else from 32 (512 channels at 7x7, batch 1 and 2: F(2x2) 1.3 and 2.2 ms
//   against F(4x4)'s 2.5 and 2.6, its 37.7 MB streamed from memory); F(2x2) from 8 tiles (512
//   channels at 4x4: batch 8, 3.0 ms against im2col's 4.3; batch 1, 4 tiles, 1.3 against 1.1).
// - grad_weight: its own rule (grad_weight_algorithm below).
// - direct for depthwise layers (groups = input = output channels), which it runs on its depthwise
//   kernels (cpu/conv2d_depthwise.h): MobileNet-v2's 3x3 layers, batch 16, forward + backward, NCHW
//   1.9-4.4x im2col's speed, channels-last 5.2-9.4x (AMD Zen 3, 2 threads).
// - im2col otherwise. (Direct was the choice for groups of at least 32 output and 16 input channels
//   until im2col's forward lowered by vector loads into L2-sized blocks: im2col then measured 1.05-3.2x
//   direct's speed forward and 0.97-2.7x forward+backward on ResNet's 3x3 layers at stride 1 and 2,
//   batch 1 and 8, a 5x5 layer and LeNet's; "direct" stays available by name.)
// Winograd rounds differently from direct convolution (at most ~10x the error, README's accuracy
// table); ask for "direct" where that matters. On CUDA: im2col, until the other kernels have been
// measured on a GPU.
inline int64_t winograd_tiles(const Conv2dShape& s, int m) {   // m x m output tiles over the batch
  return s.batch * ((s.g.out_h + m - 1) / m) * ((s.g.out_w + m - 1) / m);
}

inline Conv2dAlgorithm choose_conv2d_algorithm(const Conv2dShape& s, bool cuda, bool training) {
  if (cuda) return Conv2dAlgorithm::im2col;
  const int64_t cg = s.in_channels / s.groups, kg = s.out_channels / s.groups;
  if (s.groups == s.in_channels && s.out_channels == s.in_channels) return Conv2dAlgorithm::direct;
  if (!winograd_applies(s) || cg < 64 || kg < 64) return Conv2dAlgorithm::im2col;
  const int64_t tiles4 = winograd_tiles(s, 4), tiles2 = winograd_tiles(s, 2);
  const int64_t min_out = std::min(s.g.out_h, s.g.out_w);
  if (min_out >= 7 && tiles4 >= (training || cg * kg > 256 * 256 ? 32 : 8)) return Conv2dAlgorithm::winograd_4x4;
  if (min_out >= 4 && tiles2 >= (training ? 32 : 8)) return Conv2dAlgorithm::winograd_2x2;
  return Conv2dAlgorithm::im2col;
}

inline Conv2dShape check_conv2d(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                std::string_view algorithm, const char* op) {
  check_pair(stride, op, "stride");
  check_pair(padding, op, "padding");
  check_pair(dilation, op, "dilation");
  const bool winograd = algorithm == "winograd" || algorithm == "winograd_2x2" || algorithm == "winograd_4x4";
  FC_CHECK(algorithm == "auto" || algorithm == "im2col" || algorithm == "direct" || winograd, op,
           "unknown or unavailable algorithm '", algorithm,
           "' (this build has: auto, im2col, direct, winograd, winograd_2x2, winograd_4x4)");
  check_floating(input, op, "input");
  FC_CHECK(weight.scalar_type() == input.scalar_type(), op, "expected weight of dtype ", input.scalar_type(),
           ", but got ", weight.scalar_type());
  FC_CHECK(input.dim() == 3 || input.dim() == 4, op, "expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, but got ",
           "a ", input.dim(), "-D tensor of shape ", input.sizes());
  FC_CHECK(weight.dim() == 4, op, "expected a 4-D weight (out_channels, in_channels/groups, kH, kW), but got ",
           "shape ", weight.sizes());
  FC_CHECK(weight.device() == input.device(), op, "expected input and weight on one device, but got ",
           input.device(), " and ", weight.device());
  FC_CHECK(groups > 0, op, "groups must be positive, but got ", groups);
  Conv2dShape s;
  s.batched = input.dim() == 4;
  s.batch = s.batched ? input.size(0) : 1;
  s.in_channels = input.size(-3);
  s.out_channels = weight.size(0);
  s.groups = groups;
  FC_CHECK(s.in_channels % groups == 0, op, "groups=", groups, " must divide in_channels=", s.in_channels);
  FC_CHECK(s.out_channels % groups == 0, op, "groups=", groups, " must divide out_channels=", s.out_channels);
  FC_CHECK(weight.size(1) * groups == s.in_channels, op, "expected input with ", weight.size(1) * groups,
           " channels (weight ", weight.sizes(), ", groups=", groups, "), but got ", s.in_channels,
           " channels (input ", input.sizes(), ")");
  if (bias.has_value() && bias->defined()) {
    FC_CHECK(bias->dim() == 1 && bias->numel() == s.out_channels, op, "expected bias of shape [",
             s.out_channels, "], but got ", bias->sizes());
    FC_CHECK(bias->scalar_type() == input.scalar_type() && bias->device() == input.device(), op,
             "expected bias of dtype ", input.scalar_type(), " on ", input.device());
  }
  auto& g = s.g;
  g.kh = weight.size(2); g.kw = weight.size(3);
  g.sh = stride[0]; g.sw = stride[1];
  g.ph = padding[0]; g.pw = padding[1];
  g.dh = dilation[0]; g.dw = dilation[1];
  FC_CHECK(g.sh > 0 && g.sw > 0, op, "stride must be positive, but got ", stride);
  FC_CHECK(g.dh > 0 && g.dw > 0, op, "dilation must be positive, but got ", dilation);
  FC_CHECK(g.ph >= 0 && g.pw >= 0, op, "padding must be non-negative, but got ", padding);
  g.in_h = input.size(-2);
  g.in_w = input.size(-1);
  g.out_h = conv_output_size(g.in_h, g.kh, g.ph, g.sh, g.dh);
  g.out_w = conv_output_size(g.in_w, g.kw, g.pw, g.sw, g.dw);
  FC_CHECK(g.out_h >= 1 && g.out_w >= 1, op, "output size is too small: input ", input.sizes(), " with kernel ",
           g.kh, "x", g.kw, ", stride=", stride, ", padding=", padding, ", dilation=", dilation, " gives ",
           g.out_h, "x", g.out_w);
  const bool cl = s.batched && (input.suggest_memory_format() == at::MemoryFormat::ChannelsLast ||
                                weight.suggest_memory_format() == at::MemoryFormat::ChannelsLast);
  s.format = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  if (winograd) {
    FC_CHECK(winograd_applies(s), op, "algorithm '", algorithm, "' applies to 3x3 kernels with stride 1, dilation 1 ",
             "and groups=1, but got kernel ", g.kh, "x", g.kw, ", stride=", stride, ", dilation=", dilation,
             ", groups=", groups, " (use 'auto', 'im2col' or 'direct')");
  }
  s.chosen = algorithm == "auto";
  s.algorithm = algorithm == "direct"         ? Conv2dAlgorithm::direct
              : algorithm == "im2col"         ? Conv2dAlgorithm::im2col
              : algorithm == "winograd_2x2"   ? Conv2dAlgorithm::winograd_2x2
              : algorithm == "winograd_4x4"   ? Conv2dAlgorithm::winograd_4x4
              : algorithm == "winograd"       ? choose_winograd_tile(s)
                                              : choose_conv2d_algorithm(s, input.device().is_cuda(),
                                                                        weight.requires_grad());
  return s;
}

// torch's output sizes; an input of no channels gives an output of none, whatever the weight's
// out_channels (torch's convolution does so).
inline std::vector<int64_t> conv2d_output_sizes(const Conv2dShape& s) {
  const int64_t k = s.in_channels == 0 ? 0 : s.out_channels;
  if (s.batched) return {s.batch, k, s.g.out_h, s.g.out_w};
  return {k, s.g.out_h, s.g.out_w};
}

// The algorithm of grad_weight in a backward call: a Winograd algorithm the caller named runs
// Winograd's weight-gradient form on the CPU; im2col's for the others (direct has no grad_weight of its
// own, nor does CUDA Winograd yet). "auto", measured as above: Winograd's form for 3x3 stride-1 layers
// with at least 16 input and output channels and 64 output positions over the batch (1.4-3x im2col's
// speed on ResNet-18's layers; 512 channels at 7x7 and batch 1, 49 positions, 2.1 ms against 1.8). Its
// summed products dU are alpha^2 x C x K values (of `elem` bytes), written by the GEMMs and read back
// by the filter transform's adjoint whatever the batch: F(4x4) (36 of them, half F(2x2)'s
// multiplies) pays when there are at least 32 tiles of 4x4 and its dU fits in half the L3 (`l3_bytes`,
// cpu/isa.h's cache_sizes), so that the read-back comes from the cache; F(2x2) (16) otherwise. 512
// channels at 7x7, batch 8, where dU is 37.7 MB: on the AMD EPYC (32 MiB L3) F(2x2) 8.0-10.5 ms against
// F(4x4)'s 8.9-14.6; on the Intel Xeon (the L3 its VM reports: 480 MiB) F(4x4) 3.9 against 4.7.
inline Conv2dAlgorithm grad_weight_algorithm(const Conv2dShape& s, bool cuda, int64_t l3_bytes, int64_t elem) {
  if (cuda) return Conv2dAlgorithm::im2col;
  if (!s.chosen) return winograd_tile(s.algorithm) != 0 ? s.algorithm : Conv2dAlgorithm::im2col;
  const int64_t cg = s.in_channels / s.groups, kg = s.out_channels / s.groups;
  if (!winograd_applies(s) || cg < 16 || kg < 16 || s.batch * s.g.out_h * s.g.out_w < 64) {
    return Conv2dAlgorithm::im2col;
  }
  return winograd_tiles(s, 4) >= 32 && 36 * cg * kg * elem <= l3_bytes / 2 ? Conv2dAlgorithm::winograd_4x4
                                                                              : Conv2dAlgorithm::winograd_2x2;
}

// The checked backward call; an "auto" algorithm is grad_input's choice (choose_conv2d_algorithm, the
// forward pass's rule).
inline Conv2dShape check_conv2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                         const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                                         at::IntArrayRef dilation, int64_t groups, std::string_view algorithm,
                                         const char* op) {
  const Conv2dShape s = check_conv2d(input, weight, std::nullopt, stride, padding, dilation, groups, algorithm, op);
  const auto out_sizes = conv2d_output_sizes(s);
  FC_CHECK(grad_output.sizes() == at::IntArrayRef(out_sizes), op, "expected grad_output of shape ",
           at::IntArrayRef(out_sizes), ", but got ", grad_output.sizes());
  FC_CHECK(grad_output.scalar_type() == input.scalar_type(), op, "expected grad_output of dtype ",
           input.scalar_type(), ", but got ", grad_output.scalar_type());
  return s;
}

// t laid out in `fmt` with exactly the strides torch gives a fresh tensor of that format (which
// .contiguous(fmt) does not promise when size-1 dimensions make several layouts equivalent).
// out (the NCHW output, batched or not) = the bias broadcast over it: the GEMM paths add their product
// to it (beta = 1), so the bias enters before the one rounding.
inline void conv2d_prefill_bias(at::Tensor& out, const at::Tensor& bias, const Conv2dShape& s) {
  const auto view =
      s.batched ? std::vector<int64_t>{1, s.out_channels, 1, 1} : std::vector<int64_t>{s.out_channels, 1, 1};
  out.copy_(bias.reshape(view).expand_as(out));
}

inline at::Tensor in_format(const at::Tensor& t, at::MemoryFormat fmt) {
  if (fmt == at::MemoryFormat::Contiguous) return t.contiguous();
  at::Tensor out = at::empty(t.sizes(), t.options().memory_format(fmt));
  if (out.strides() == t.strides()) return t;
  return out.copy_(t);
}

// The backward pass of an input with no channels: no products, so an empty grad_input and
// grad_weight and a zero grad_bias (torch's); outputs not asked for are empty.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_no_channels(const at::Tensor& input,
                                                                                 const at::Tensor& weight,
                                                                                 const Conv2dShape& s,
                                                                                 std::array<bool, 3> output_mask) {
  const at::Tensor none = at::empty({0}, input.options());
  return {output_mask[0] ? in_format(at::empty(input.sizes(), input.options()), s.format) : none,
          output_mask[1] ? at::empty(weight.sizes(), weight.options()) : none.clone(),
          output_mask[2] ? at::zeros({s.out_channels}, input.options()) : none.clone()};
}

// The GEMM view of one image and group: M = kg output channels, N = P positions, K = kc; `chunk`
// positions per column buffer of at most `workspace_bytes`; pointwise (1x1, stride 1, no padding)
// convolutions need no lowering.
struct Conv2dGemmDims {
  int64_t cg, kg, kc, P, HW, chunk;
  bool pointwise;
};

inline Conv2dGemmDims conv2d_gemm_dims(const Conv2dShape& s, size_t elem, size_t workspace_bytes) {
  const auto& g = s.g;
  Conv2dGemmDims d;
  d.cg = s.in_channels / s.groups;
  d.kg = s.out_channels / s.groups;
  d.kc = d.cg * g.kh * g.kw;
  d.P = g.out_h * g.out_w;
  d.HW = g.in_h * g.in_w;
  const int64_t fit = static_cast<int64_t>(workspace_bytes / (elem * static_cast<size_t>(std::max<int64_t>(1, d.kc))));
  d.chunk = std::max<int64_t>(1, std::min<int64_t>(d.P, fit));
  d.pointwise = g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
  return d;
}

}  // namespace fastconv
