// CPU glue for fastconv::batch_norm and fastconv::batch_norm_backward.
//
// Passes over the data (M = N * spatial values per channel):
//   training forward   statistics (one read of x), normalise + activation (one read, one write)
//   inference forward  normalise + activation (one read, one write)
//   training backward  gradient sums (one read of x and dy), grad_input (one more read, one write)
//   inference backward grad_input (one read of x and dy, one write), plus the sums for
//                      grad_weight/grad_bias only when they are wanted
// Per-channel work (statistics to scale/shift, backward coefficients) is O(C) here in double.
// Planar layouts parallelise over channels (reductions) or rows; interleaved layouts over fixed
// blocks of positions whose partial sums are combined in block order, so results do not depend on
// the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/batch_norm.h"
#include "common/batch_norm_args.h"
#include "cpu/batch_norm_kernels.h"
#include "cpu/half_runs.h"
#include "cpu/isa.h"
#include "cpu/memory.h"

namespace fastconv::cpu {
namespace {

// The baseline-ISA build of the kernels: the portable fallback, and the float16/bfloat16 path.
#include "cpu/batch_norm_kernels.inc"

constexpr const char* kForward = "batch_norm";
constexpr const char* kBackward = "batch_norm_backward";

template <typename T>
const BnKernels<T>& kernels_for() {
  static const BnKernels<T> baseline = make_bn_kernels<T>();
  if constexpr (std::is_same_v<T, float>) {
    return for_active_isa(bn_kernels_f32_avx512, bn_kernels_f32_avx2, baseline);
  } else if constexpr (std::is_same_v<T, double>) {
    return for_active_isa(bn_kernels_f64_avx512, bn_kernels_f64_avx2, baseline);
  } else {
    return baseline;   // float16 / bfloat16
  }
}

// A per-channel vector (C values, checked by the caller) read in place through its stride: no
// converted copy (a tensor allocation and a copy per vector cost about as much as the whole
// normalisation of ResNet-18's 8x512x4x4 maps).
std::vector<double> channel_values(const std::optional<at::Tensor>& t, int64_t C, double fallback) {
  if (!t.has_value() || !t->defined()) return std::vector<double>(C, fallback);
  std::vector<double> out(C);
  const int64_t stride = t->stride(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t->scalar_type(), "batch_norm", [&] {
    const scalar_t* p = t->const_data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) out[c] = static_cast<double>(p[c * stride]);
  });
  return out;
}

// Rounds to the saved-statistics dtype (as a double tensor's .to(type) does): forward and backward
// both derive scale/shift from the stored values, so the ReLU mask recomputed in backward is the
// forward's exactly.
at::Tensor stat_tensor(const std::vector<double>& v, at::ScalarType type) {
  at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::TensorOptions().dtype(type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, "batch_norm", [&] {
    scalar_t* p = t.data_ptr<scalar_t>();
    for (size_t c = 0; c < v.size(); ++c) p[c] = static_cast<scalar_t>(v[c]);
  });
  return t;
}

// torch's update of a running statistic in training, in double as its CPU kernel computes it:
// running = momentum * batch * scale + (1 - momentum) * running, written in place through its stride
// (scale n / (n - 1) makes the variance unbiased).
void update_running(const std::optional<at::Tensor>& running, const std::vector<double>& batch, double scale,
                    double momentum) {
  if (!running.has_value() || !running->defined()) return;
  const int64_t stride = running->stride(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, running->scalar_type(), "batch_norm", [&] {
    scalar_t* p = running->data_ptr<scalar_t>();
    for (size_t c = 0; c < batch.size(); ++c) {
      scalar_t& r = p[static_cast<int64_t>(c) * stride];
      r = static_cast<scalar_t>(momentum * batch[c] * scale + (1 - momentum) * static_cast<double>(r));
    }
  });
}

template <typename Acc>
struct ChannelArrays {
  std::vector<Acc> scale, shift, mean, a, k, b0;
  BnChannelParams<Acc> params(const BnActParams<Acc>& act, bool training) const {
    return {scale.data(), shift.data(), mean.data(), a.data(), k.data(), b0.data(), act, training};
  }
};

template <typename Acc>
ChannelArrays<Acc> scale_shift(const at::Tensor& save_mean, const at::Tensor& save_invstd,
                               const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                               int64_t C) {
  const auto mean = channel_values(save_mean, C, 0), invstd = channel_values(save_invstd, C, 0);
  const auto w = channel_values(weight, C, 1), b = channel_values(bias, C, 0);
  ChannelArrays<Acc> ch;
  ch.scale.resize(C);
  ch.shift.resize(C);
  ch.mean.resize(C);
  for (int64_t c = 0; c < C; ++c) {
    bn_scale_shift<Acc>(mean[c], invstd[c], w[c], b[c], &ch.scale[c], &ch.shift[c]);
    ch.mean[c] = static_cast<Acc>(mean[c]);
  }
  return ch;
}

// Fixed blocks of interleaved positions for reductions: enough work per block, at most 256 blocks.
int64_t interleaved_blocks(const BatchNormShape& s) {
  const int64_t rows_per_block = std::max<int64_t>(1, (int64_t(1) << 15) / s.C);
  return std::max<int64_t>(1, std::min<int64_t>(256, (s.count() + rows_per_block - 1) / rows_per_block));
}

int64_t grain(int64_t elems_per_unit) { return std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, elems_per_unit)); }

// Two per-channel sums over the whole tensor, by a planar (per channel) or interleaved (per block,
// then combined in order) kernel.
template <typename PlanarFn, typename InterleavedFn>
void channel_sums(const BatchNormShape& s, std::vector<double>& s1, std::vector<double>& s2, PlanarFn planar,
                  InterleavedFn interleaved) {
  const int64_t C = s.C;
  s1.assign(C, 0);
  s2.assign(C, 0);
  if (!s.interleaved) {
    at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) { planar(c0, c1, s1.data(), s2.data()); });
    return;
  }
  const int64_t blocks = interleaved_blocks(s), M = s.count();
  const int64_t per = (M + blocks - 1) / blocks;
  std::vector<double> part1(blocks * C, 0), part2(blocks * C, 0);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      interleaved(b * per, std::min(M, (b + 1) * per), part1.data() + b * C, part2.data() + b * C);
    }
  });
  for (int64_t b = 0; b < blocks; ++b) {
    for (int64_t c = 0; c < C; ++c) {
      s1[c] += part1[b * C + c];
      s2[c] += part2[b * C + c];
    }
  }
}

// An elementwise pass over planar rows (n, c) or interleaved positions.
template <typename PlanarFn, typename InterleavedFn>
void elementwise(const BatchNormShape& s, PlanarFn planar, InterleavedFn interleaved) {
  if (!s.interleaved) {
    at::parallel_for(0, s.N * s.C, grain(s.S), planar);
  } else {
    at::parallel_for(0, s.count(), grain(s.C), interleaved);
  }
}

// Half precision on the float32 vector kernels (the same float32 arithmetic: Acc is float for half
// data): runs of at most kHalfRun values widened into thread buffers (half_runs.h; the backward widens
// dy beside x), the float32 kernel on the buffers, results narrowed back once. Planar rows shorter
// than a run go several to a run, longer ones in pieces; interleaved positions likewise by their
// channels.
constexpr int64_t kHalfRun = 2048;

template <typename T>
class HalfByF32 {
 public:
  HalfByF32(const T* x, const BnShape& sh, DType dtype)
      : x_(x), sh_(sh), cv_(half_runs(dtype)), f32_(kernels_for<float>()) {}

  // The shifted sums of channels [c0, c1) (stats_planar's contract): each run's sums about its own
  // first value, moved to the channel's first value k[c] exactly in double.
  void stats_planar(int64_t c0, int64_t c1, double* k, double* s1, double* s2) const {
    for (int64_t c = c0; c < c1; ++c) {
      float first;
      cv_.widen(x_ + c * sh_.S, &first, 1);
      k[c] = first;
      double t1 = 0, t2 = 0;
      for (int64_t n = 0; n < sh_.N; ++n) {
        const int64_t r = n * sh_.C + c;
        planar_runs(r, r + 1, [&](Bufs& b, int64_t, int64_t len, int64_t, int64_t) {
          double kb, u, v;
          f32_.stats_planar(b.x, BnShape{1, 1, len, false}, 0, 1, &kb, &u, &v);
          const double d = kb - k[c];   // sum (x - k) = sum (x - kb) + len d; squares likewise
          t1 += u + static_cast<double>(len) * d;
          t2 += v + 2 * d * u + static_cast<double>(len) * d * d;
        });
      }
      s1[c] = t1;
      s2[c] = t2;
    }
  }

  void stats_interleaved(int64_t m0, int64_t m1, const double* k, double* s1, double* s2) const {
    interleaved_runs(m0, m1, [&](Bufs& b, int64_t rows, int64_t n, int64_t, int64_t c0) {
      f32_.stats_interleaved(b.x, BnShape{rows, n, 1, true}, 0, rows, k + c0, s1 + c0, s2 + c0);
    });
  }

  void normalize_planar(T* y, int64_t r0, int64_t r1, const BnChannelParams<float>& p) const {
    planar_runs(r0, r1, [&](Bufs& b, int64_t rows, int64_t len, int64_t r, int64_t s0) {
      for (int64_t j = 0; j < rows; ++j) {
        const BnChannelParams<float> q = shifted(p, (r + j) % sh_.C);
        f32_.normalize_planar(b.x + j * len, b.out + j * len, BnShape{1, 1, len, false}, 0, 1, q);
      }
      cv_.narrow(b.out, y + r * sh_.S + s0, rows * len);
    });
  }

  void normalize_interleaved(T* y, int64_t m0, int64_t m1, const BnChannelParams<float>& p) const {
    interleaved_runs(m0, m1, [&](Bufs& b, int64_t rows, int64_t n, int64_t m, int64_t c0) {
      f32_.normalize_interleaved(b.x, b.out, BnShape{rows, n, 1, true}, 0, rows, shifted(p, c0));
      cv_.narrow(b.out, y + m * sh_.C + c0, rows * n);
    });
  }

  // The backward's gradient sums of channels [c0, c1) (grad_sums_planar's contract), dy widened beside x.
  void grad_sums_planar(const T* dy, int64_t c0, int64_t c1, const BnChannelParams<float>& p, double* sum_g,
                        double* sum_gx) const {
    for (int64_t c = c0; c < c1; ++c) {
      const BnChannelParams<float> q = shifted(p, c);
      double t1 = 0, t2 = 0;
      for (int64_t n = 0; n < sh_.N; ++n) {
        const int64_t r = n * sh_.C + c;
        line_runs(r, r + 1, sh_.S, dy, [&](Bufs& b, int64_t, int64_t len, int64_t, int64_t) {
          double u, v;
          f32_.grad_sums_planar(b.g, b.x, BnShape{1, 1, len, false}, 0, 1, q, &u, &v);
          t1 += u;
          t2 += v;
        });
      }
      sum_g[c] = t1;
      sum_gx[c] = t2;
    }
  }

  void grad_sums_interleaved(const T* dy, int64_t m0, int64_t m1, const BnChannelParams<float>& p, double* sum_g,
                             double* sum_gx) const {
    line_runs(m0, m1, sh_.C, dy, [&](Bufs& b, int64_t rows, int64_t n, int64_t, int64_t c0) {
      f32_.grad_sums_interleaved(b.g, b.x, BnShape{rows, n, 1, true}, 0, rows, shifted(p, c0), sum_g + c0,
                                 sum_gx + c0);
    });
  }

  // dx (bn_grad_input) over planar rows [r0, r1) / positions [m0, m1).
  void grad_input_planar(const T* dy, T* dx, int64_t r0, int64_t r1, const BnChannelParams<float>& p) const {
    line_runs(r0, r1, sh_.S, dy, [&](Bufs& b, int64_t rows, int64_t len, int64_t r, int64_t s0) {
      for (int64_t j = 0; j < rows; ++j) {
        const BnChannelParams<float> q = shifted(p, (r + j) % sh_.C);
        f32_.grad_input_planar(b.g + j * len, b.x + j * len, b.out + j * len, BnShape{1, 1, len, false}, 0, 1, q);
      }
      cv_.narrow(b.out, dx + r * sh_.S + s0, rows * len);
    });
  }

  void grad_input_interleaved(const T* dy, T* dx, int64_t m0, int64_t m1, const BnChannelParams<float>& p) const {
    line_runs(m0, m1, sh_.C, dy, [&](Bufs& b, int64_t rows, int64_t n, int64_t m, int64_t c0) {
      f32_.grad_input_interleaved(b.g, b.x, b.out, BnShape{rows, n, 1, true}, 0, rows, shifted(p, c0));
      cv_.narrow(b.out, dx + m * sh_.C + c0, rows * n);
    });
  }

 private:
  struct Bufs {
    float x[kHalfRun], g[kHalfRun], out[kHalfRun];   // x widened, dy widened (backward), results
  };

  // Every per-channel array of p from channel c on (the backward's a, k, b0, mean where present).
  static BnChannelParams<float> shifted(BnChannelParams<float> p, int64_t c) {
    for (const float** q : {&p.scale, &p.shift, &p.mean, &p.a, &p.k, &p.b0}) {
      if (*q != nullptr) *q += c;
    }
    return p;
  }

  // Lines [i0, i1) of `len` contiguous values (planar rows: len = S; interleaved positions: len = C)
  // as f(bufs, lines, n, i, off): `lines` whole lines from line i (n = len, off = 0), or values
  // [off, off + n) of line i; x widened into bufs.x and, when dy is given, dy into bufs.g.
  template <typename F>
  void line_runs(int64_t i0, int64_t i1, int64_t len, const T* dy, F&& f) const {
    Bufs b;
    const auto widen = [&](int64_t at, int64_t n) {
      cv_.widen(x_ + at, b.x, n);
      if (dy != nullptr) cv_.widen(dy + at, b.g, n);
    };
    for (int64_t i = i0; i < i1;) {
      if (len <= kHalfRun) {
        const int64_t lines = std::min(kHalfRun / len, i1 - i);
        widen(i * len, lines * len);
        f(b, lines, len, i, int64_t(0));
        i += lines;
        continue;
      }
      for (int64_t off = 0; off < len; off += kHalfRun) {
        const int64_t n = std::min(kHalfRun, len - off);
        widen(i * len + off, n);
        f(b, int64_t(1), n, i, off);
      }
      ++i;
    }
  }
  template <typename F>
  void planar_runs(int64_t r0, int64_t r1, F&& f) const { line_runs(r0, r1, sh_.S, nullptr, f); }
  template <typename F>
  void interleaved_runs(int64_t m0, int64_t m1, F&& f) const { line_runs(m0, m1, sh_.C, nullptr, f); }

  const T* x_;
  BnShape sh_;
  const HalfRunFns& cv_;
  const BnKernels<float>& f32_;
};

template <typename T>
constexpr bool kIsHalf = std::is_same_v<T, at::Half> || std::is_same_v<T, at::BFloat16>;

template <typename T>
void forward_impl(const at::Tensor& x, at::Tensor& out, const BatchNormShape& s, bool training,
                  const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                  const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
                  double momentum, double eps, const BnActParams<typename BnAcc<T>::type>& act,
                  at::Tensor& save_mean, at::Tensor& save_invstd,
                  at::Tensor& batch_var) {
  using Acc = typename BnAcc<T>::type;
  const auto& kern = kernels_for<T>();
  const T* xp = x.data_ptr<T>();
  const BnShape sh{s.N, s.C, s.S, s.interleaved};
  const int64_t C = s.C;
  // float16/bfloat16 on the float32 vector kernels where the CPU has them, else the portable kernels
  std::optional<HalfByF32<T>> half;
  if (kIsHalf<T> && active_isa() >= Isa::avx2) half.emplace(xp, sh, to_dtype(x.scalar_type()));
  std::vector<double> mean(C), var(C), invstd(C);
  if (training) {
    std::vector<double> k(C), s1, s2;
    if (s.interleaved) {
      for (int64_t c = 0; c < C; ++c) k[c] = static_cast<double>(xp[c]);
    }
    channel_sums(
        s, s1, s2,
        [&](int64_t c0, int64_t c1, double* a1, double* a2) {
          if constexpr (kIsHalf<T>) {
            if (half.has_value()) return half->stats_planar(c0, c1, k.data(), a1, a2);
          }
          kern.stats_planar(xp, sh, c0, c1, k.data(), a1, a2);
        },
        [&](int64_t m0, int64_t m1, double* a1, double* a2) {
          if constexpr (kIsHalf<T>) {
            if (half.has_value()) return half->stats_interleaved(m0, m1, k.data(), a1, a2);
          }
          kern.stats_interleaved(xp, sh, m0, m1, k.data(), a1, a2);
        });
    for (int64_t c = 0; c < C; ++c) {
      bn_moments(k[c], s1[c], s2[c], static_cast<double>(s.count()), &mean[c], &var[c]);
      invstd[c] = bn_invstd(var[c], eps);
    }
    batch_var = stat_tensor(var, s.stat_type);
    update_running(running_mean, mean, 1.0, momentum);
    const double n = static_cast<double>(s.count());
    update_running(running_var, var, n / (n - 1), momentum);
  } else {
    mean = channel_values(running_mean, C, 0);
    const auto rv = channel_values(running_var, C, 1);
    for (int64_t c = 0; c < C; ++c) invstd[c] = bn_invstd(rv[c], eps);
    batch_var = at::empty({0}, x.options().dtype(s.stat_type));
  }
  save_mean = stat_tensor(mean, s.stat_type);
  save_invstd = stat_tensor(invstd, s.stat_type);
  const auto ch = scale_shift<Acc>(save_mean, save_invstd, weight, bias, C);
  const auto p = ch.params(act, training);
  T* yp = out.data_ptr<T>();
  elementwise(
      s,
      [&](int64_t r0, int64_t r1) {
        if constexpr (kIsHalf<T>) {
          if (half.has_value()) return half->normalize_planar(yp, r0, r1, p);
        }
        kern.normalize_planar(xp, yp, sh, r0, r1, p);
      },
      [&](int64_t m0, int64_t m1) {
        if constexpr (kIsHalf<T>) {
          if (half.has_value()) return half->normalize_interleaved(yp, m0, m1, p);
        }
        kern.normalize_interleaved(xp, yp, sh, m0, m1, p);
      });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_cpu(
    const at::Tensor& input, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var, bool training,
    double momentum, double eps, bool relu, std::optional<double> relu_max) {
  const BatchNormShape s =
      check_batch_norm_forward(input, weight, bias, running_mean, running_var, training, eps, kForward);
  const BnActKind act = batch_norm_act_kind(relu, relu_max, kForward);
  at::Tensor out = at::empty(input.sizes(), input.options().memory_format(s.format));
  const auto stat_opts = input.options().dtype(s.stat_type);
  if (input.numel() == 0) {
    return {out, at::zeros({s.C}, stat_opts), at::zeros({s.C}, stat_opts), at::zeros({training ? s.C : 0}, stat_opts)};
  }
  check_batch_norm_count(input, s, training, kForward);
  advise_huge_pages(out);
  const at::Tensor x = input.contiguous(s.format);
  at::Tensor save_mean, save_invstd, batch_var;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), kForward, [&] {
    forward_impl<scalar_t>(x, out, s, training, weight, bias, running_mean, running_var, momentum, eps,
                           bn_act_params<typename BnAcc<scalar_t>::type>(act, relu_max, input.scalar_type()),
                           save_mean, save_invstd, batch_var);
  });
  return {out, save_mean, save_invstd, batch_var};
}

template <typename T>
void backward_impl(const at::Tensor& dy, const at::Tensor& x, at::Tensor& dx, const BatchNormShape& s,
                   const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                   const at::Tensor& save_mean, const at::Tensor& save_invstd, bool training,
                   const BnActParams<typename BnAcc<T>::type>& act, bool grad_affine, std::vector<double>& sum_g,
                   std::vector<double>& sum_gx) {
  using Acc = typename BnAcc<T>::type;
  const auto& kern = kernels_for<T>();
  const T* xp = x.data_ptr<T>();
  const T* gp = dy.data_ptr<T>();
  const BnShape sh{s.N, s.C, s.S, s.interleaved};
  const int64_t C = s.C;
  // float16/bfloat16 on the float32 vector kernels where the CPU has them (as forward_impl): float16's
  // scalar conversions made its backward 8x slower in the portable kernels (35 vs 4.6 ms, 32x64x56x56,
  // AMD Zen 4). bfloat16's portable kernels widen by a shift the compiler vectorises and were 8% faster
  // than the buffers on that Zen 4 (4.40 vs 4.76 ms, 2026-11-24), but 2-3x slower on an AVX2-only Zen 3
  // (2026-12-06, alternating in one process: 32x64x56x56 14.5-15.1 vs 6.1-7.5 ms NCHW, 14.8-17.7 vs
  // 5.0-5.7 channels-last; 16x96x56x56 7.3-11.1 vs 3.9-5.3; 8x512x7x7 0.61 vs 0.37), so both take them.
  std::optional<HalfByF32<T>> half;
  if (kIsHalf<T> && active_isa() >= Isa::avx2) half.emplace(xp, sh, to_dtype(x.scalar_type()));
  auto ch = scale_shift<Acc>(save_mean, save_invstd, weight, bias, C);
  if (training || grad_affine) {
    const auto p = ch.params(act, training);
    channel_sums(
        s, sum_g, sum_gx,
        [&](int64_t c0, int64_t c1, double* a1, double* a2) {
          if constexpr (kIsHalf<T>) {
            if (half.has_value()) return half->grad_sums_planar(gp, c0, c1, p, a1, a2);
          }
          kern.grad_sums_planar(gp, xp, sh, c0, c1, p, a1, a2);
        },
        [&](int64_t m0, int64_t m1, double* a1, double* a2) {
          if constexpr (kIsHalf<T>) {
            if (half.has_value()) return half->grad_sums_interleaved(gp, m0, m1, p, a1, a2);
          }
          kern.grad_sums_interleaved(gp, xp, sh, m0, m1, p, a1, a2);
        });
  }
  const auto w = channel_values(weight, C, 1), invstd = channel_values(save_invstd, C, 0);
  ch.a.resize(C);
  ch.k.resize(C);
  ch.b0.resize(C);
  for (int64_t c = 0; c < C; ++c) {
    double a, k, b0;
    bn_backward_coeffs(training, w[c], invstd[c], training ? sum_g[c] : 0, training ? sum_gx[c] : 0,
                       static_cast<double>(s.count()), &a, &k, &b0);
    ch.a[c] = static_cast<Acc>(a);
    ch.k[c] = static_cast<Acc>(k);
    ch.b0[c] = static_cast<Acc>(b0);
  }
  const auto p = ch.params(act, training);
  T* dp = dx.data_ptr<T>();
  elementwise(
      s,
      [&](int64_t r0, int64_t r1) {
        if constexpr (kIsHalf<T>) {
          if (half.has_value()) return half->grad_input_planar(gp, dp, r0, r1, p);
        }
        kern.grad_input_planar(gp, xp, dp, sh, r0, r1, p);
      },
      [&](int64_t m0, int64_t m1) {
        if constexpr (kIsHalf<T>) {
          if (half.has_value()) return half->grad_input_interleaved(gp, dp, m0, m1, p);
        }
        kern.grad_input_interleaved(gp, xp, dp, sh, m0, m1, p);
      });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& save_mean, const at::Tensor& save_invstd,
    bool training, bool relu, bool grad_affine, std::optional<double> relu_max) {
  const BatchNormShape s =
      check_batch_norm_backward(grad_output, input, weight, bias, save_mean, save_invstd, kBackward);
  const BnActKind act = batch_norm_act_kind(relu, relu_max, kBackward);
  at::Tensor dx = at::empty(input.sizes(), input.options().memory_format(s.format));
  const auto affine_type = batch_norm_affine_type(weight, s);
  const auto affine_opts = input.options().dtype(affine_type);
  const int64_t affine_n = grad_affine ? s.C : 0;
  if (input.numel() == 0) return {dx, at::zeros({affine_n}, affine_opts), at::zeros({affine_n}, affine_opts)};
  advise_huge_pages(dx);
  const at::Tensor x = input.contiguous(s.format), dy = grad_output.contiguous(s.format);
  std::vector<double> sum_g, sum_gx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), kBackward, [&] {
    backward_impl<scalar_t>(dy, x, dx, s, weight, bias, save_mean, save_invstd, training,
                            bn_act_params<typename BnAcc<scalar_t>::type>(act, relu_max, input.scalar_type()),
                            grad_affine, sum_g, sum_gx);
  });
  if (!grad_affine) return {dx, at::empty({0}, affine_opts), at::empty({0}, affine_opts)};
  const auto invstd = channel_values(save_invstd, s.C, 0);
  std::vector<double> gw(s.C);
  for (int64_t c = 0; c < s.C; ++c) gw[c] = sum_gx[c] * invstd[c];
  return {dx, stat_tensor(gw, affine_type), stat_tensor(sum_g, affine_type)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("batch_norm", &batch_norm_cpu);
  m.impl("batch_norm_backward", &batch_norm_backward_cpu);
}

}  // namespace fastconv::cpu
