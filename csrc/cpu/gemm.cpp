// CPU glue and driver of the GEMM engine (fastconv::gemm): the blocked loop nest over the packing
// routines and macro-kernel of gemm_kernels.inc, parallel over blocks of rows with at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <vector>

#include "common/gemm_args.h"
#include "cpu/gemm_kernels.h"
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
    return for_active_isa(gemm_kernels_f32_avx512, gemm_kernels_f32_avx2, baseline);
  } else {
    return for_active_isa(gemm_kernels_f64_avx512, gemm_kernels_f64_avx2, baseline);
  }
}

// Block sizes: a KC x NR panel of B (32 KB in float32 at NR = 32) stays in L1 while the micro-kernel
// streams it, an MC x KC block of A (240 KB) in L2, a KC x NC block of B (3 MB) in L3.
constexpr int64_t kDefaultKC = 256, kMC = 240, kNC = 3072;

template <typename T>
int64_t k_block_of(const GemmArgs<T>& g) {   // the K block: the caller's, or the default
  return g.k_block > 0 ? g.k_block : kDefaultKC;
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

// The blocked loop nest, shared by every element type: pack_a(i0, mc, k0, kc, dst) and
// pack_b(k0, kc, j0, nc, dst) fill the micro-kernel's panels (kern's layout) from whatever the
// operands are stored as; kern.macro multiplies them into g.c.
template <typename T, class PackA, class PackB>
void loop_nest(const GemmArgs<T>& g, const GemmKernels<T>& kern, PackA pack_a, PackB pack_b) {
  const int64_t mr = kern.mr, nr = kern.nr;
  // Enough row blocks to keep every thread busy, each a multiple of the micro-tile height. Inside a
  // parallel region (a caller already splits the work, as conv2d does over images) the GEMM runs on
  // one thread, and taller row blocks reuse each packed B panel across more micro-tiles.
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  int64_t mc = std::min<int64_t>(kMC, (g.m + 2 * threads - 1) / (2 * threads));
  mc = std::max<int64_t>(mr, (mc + mr - 1) / mr * mr);
  const int64_t ncap = std::min<int64_t>(kNC, (g.n + nr - 1) / nr * nr);
  const int64_t m_pad = (g.m + mr - 1) / mr * mr;   // rows of a prepacked A
  const int64_t kKC = k_block_of(g);
  const int64_t n_pad = (g.n + nr - 1) / nr * nr;   // columns of a prepacked B
  // 64-byte aligned, as the micro-kernel's aligned loads of the B panel need (so must b_packed be).
  T* b_scratch = g.b_packed != nullptr ? nullptr : scratch<T>(Scratch::gemm_b, std::min<int64_t>(kKC, g.k) * ncap);
  const T* bp = b_scratch;
  for (int64_t j0 = 0; j0 < g.n; j0 += kNC) {
    const int64_t nc = std::min(kNC, g.n - j0);
    for (int64_t k0 = 0; k0 < g.k; k0 += kKC) {
      const int64_t kc = std::min(kKC, g.k - k0);
      const bool first = k0 == 0;   // the first K block applies beta; later ones accumulate
      if (g.b_packed != nullptr) {   // K block k0 of all panels, then column j0's panel within it
        bp = g.b_packed + k0 * n_pad + j0 * kc;
      } else {
        const int64_t panels = (nc + nr - 1) / nr;
        at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
          for (int64_t p = p0; p < p1; ++p) {
            pack_b(k0, kc, j0 + p * nr, std::min(nr, nc - p * nr), b_scratch + p * nr * kc);
          }
        });
      }
      const int64_t blocks = (g.m + mc - 1) / mc;
      at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
        T* ap = g.a_packed != nullptr ? nullptr : scratch<T>(Scratch::gemm_a, mc * kc);
        for (int64_t blk = b0; blk < b1; ++blk) {
          const int64_t i0 = blk * mc, m_here = std::min(mc, g.m - i0);
          if (g.a_packed != nullptr) {   // K block k0 of all rows, then row i0's panel within it
            kern.macro(g, g.a_packed + k0 * m_pad + i0 * kc, bp, i0, m_here, j0, nc, kc, first);
          } else {
            pack_a(i0, m_here, k0, kc, ap);
            kern.macro(g, ap, bp, i0, m_here, j0, nc, kc, first);
          }
        }
      });
    }
  }
}

}  // namespace

template <typename T>
void gemm(const GemmArgs<T>& g) {
  if (g.m == 0 || g.n == 0) return;
  if (g.k == 0 || g.alpha == T(0)) return scale_c(g);
  const auto& kern = kernels_for<T>();
  loop_nest(
      g, kern, [&](int64_t i0, int64_t mc, int64_t k0, int64_t kc, T* dst) { kern.pack_a(g, i0, mc, k0, kc, dst); },
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

template <typename TIn>
void gemm_mixed_typed(const MixedGemmArgs& m, float* c, int64_t rs_c, int64_t cs_c) {
  const auto& kern = kernels_for<float>();
  const TIn* a = static_cast<const TIn*>(m.a);
  const TIn* b = static_cast<const TIn*>(m.b);
  GemmArgs<float> g;   // the float32 side the loop nest and micro-kernel see
  g.m = m.m; g.n = m.n; g.k = m.k;
  g.alpha = m.alpha; g.beta = m.beta;
  g.a = nullptr; g.rs_a = m.rs_a; g.cs_a = m.cs_a;
  g.b = nullptr; g.rs_b = m.rs_b; g.cs_b = m.cs_b;
  g.c = c; g.rs_c = rs_c; g.cs_c = cs_c;
  if (g.k == 0 || g.alpha == 0.0f) return scale_c(g);
  const int64_t mr = kern.mr, nr = kern.nr;
  loop_nest(
      g, kern,
      [&](int64_t i0, int64_t mc, int64_t k0, int64_t kc, float* dst) {
        pack_converting(a, m.rs_a, m.cs_a, i0, mc, k0, kc, mr, dst);
      },
      [&](int64_t k0, int64_t kc, int64_t j0, int64_t nc, float* dst) {
        pack_converting(b, m.cs_b, m.rs_b, j0, nc, k0, kc, nr, dst);
      });
}

template <typename TIn>
void gemm_mixed_in(const MixedGemmArgs& m) {
  if (m.out == DType::f32) return gemm_mixed_typed<TIn>(m, static_cast<float*>(m.c), m.rs_c, m.cs_c);
  // A half-precision C: accumulate in a float32 copy (the K blocks add into it), round once at the end.
  std::vector<float> acc(static_cast<size_t>(m.m * m.n));
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
    gemm_mixed_typed<TIn>(m, acc.data(), m.n, 1);
    each_c([&](float& v, int64_t off) { c[off] = static_cast<TOut>(v); });   // round to nearest even
  };
  if (m.out == DType::bf16) {
    with_out(c10::BFloat16());
  } else {
    with_out(c10::Half());
  }
}

}  // namespace

void gemm_mixed(const MixedGemmArgs& g) {
  if (g.m == 0 || g.n == 0) return;
  if (g.in == DType::bf16) {
    gemm_mixed_in<c10::BFloat16>(g);
  } else {
    gemm_mixed_in<c10::Half>(g);
  }
}

int64_t gemm_packed_a_elems(int64_t m, int64_t k) {
  const int64_t mr = kernels_for<float>().mr;
  return (m + mr - 1) / mr * mr * k;
}

template <typename T>
GemmTile gemm_tile() {
  const auto& kern = kernels_for<T>();
  return GemmTile{kern.mr, kern.nr, kDefaultKC};
}

template GemmTile gemm_tile<float>();
template GemmTile gemm_tile<double>();

template <typename T>
void gemm_pack_b_offsets(const T* base, const int64_t* row_off, int64_t rows, const int64_t* col_off, int64_t cols,
                         T* dst) {
  kernels_for<T>().pack_b_offsets(base, row_off, rows, col_off, cols, dst);
}

template void gemm_pack_b_offsets<float>(const float*, const int64_t*, int64_t, const int64_t*, int64_t, float*);
template void gemm_pack_b_offsets<double>(const double*, const int64_t*, int64_t, const int64_t*, int64_t, double*);

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
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t k0 = u / panels * kKC, kc = std::min(kKC, g.k - k0), j0 = u % panels * kern.nr;
      kern.pack_b(g, k0, kc, j0, std::min<int64_t>(kern.nr, g.n - j0), dst + k0 * n_pad + j0 * kc);
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

DType half_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default: return DType::f32;
  }
}

at::Tensor gemm_cpu(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& c, bool trans_a,
                    bool trans_b, double alpha, double beta, std::optional<at::ScalarType> out_dtype) {
  const GemmShape s = check_gemm(a, b, c, trans_a, trans_b, out_dtype, kOp);
  at::Tensor out = at::empty({s.m, s.n}, a.options().dtype(s.out_dtype));
  const bool reads_c = gemm_reads_c(c, beta);
  if (reads_c) out.copy_(c->expand({s.m, s.n}));
  if (out.numel() == 0) return out;
  const int64_t rs_a = trans_a ? a.stride(1) : a.stride(0), cs_a = trans_a ? a.stride(0) : a.stride(1);
  const int64_t rs_b = trans_b ? b.stride(1) : b.stride(0), cs_b = trans_b ? b.stride(0) : b.stride(1);
  if (is_half(a.scalar_type())) {
    MixedGemmArgs g{s.m, s.n, s.k, static_cast<float>(alpha), static_cast<float>(reads_c ? beta : 0.0),
                    half_dtype(a.scalar_type()), a.data_ptr(), rs_a, cs_a, b.data_ptr(), rs_b, cs_b,
                    half_dtype(s.out_dtype), out.data_ptr(), s.n, 1};
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

}  // namespace fastconv::cpu
