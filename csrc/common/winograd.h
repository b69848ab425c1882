// Winograd's minimal filtering F(m x m, 3 x 3) after Lavin & Gray, "Fast Algorithms for Convolutional
// Neural Networks" (2015): the transform matrices and their straight-line code, shared by the CPU
// (on SIMD vectors, one lane per tile) and CUDA (on scalars) kernels. Host-and-device, torch-free.
//
// An output tile Y (m x m) of the correlation of an input tile d (alpha x alpha, alpha = m + 2) with a
// 3 x 3 filter g is
//     Y = A^T [ (G g G^T) .* (B^T d B) ] A
// where .* is the element-wise product. Over C input channels the product is summed, which for each
// of the alpha^2 positions e is one GEMM: M[e] (K x tiles) = U[e] (K x C) . V[e] (C x tiles), with the
// filter transform U = G g G^T and the input transform V = B^T d B; the output transform is then
// Y = A^T M A per tile. The weight gradient runs the adjoints: dU[e] (K x C) = sum over tiles of
// dM[e] (K x tiles) . V[e]^T with dM = A dY A^T, then dg = G^T dU G. Each 2-D transform X -> P X Q^T applies the 1-D one to every column and then
// to every row; the functions below are the 1-D ones, y = P x, with strides so the same code reads
// columns and rows.
#pragma once

#include "common/macros.h"

namespace fastconv {

template <int M>
struct Winograd;

// F(2x2, 3x3): 16 multiplies per 4 outputs instead of 36.
template <>
struct Winograd<2> {
  static constexpr int kM = 2, kAlpha = 4;
  static constexpr double kBT[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
  static constexpr double kG[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
  static constexpr double kAT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};

  // y = B^T d
  template <typename S, typename V>
  FC_HD static void input(const V* d, int ds, V* y, int ys) {
    const V d0 = d[0], d1 = d[ds], d2 = d[2 * ds], d3 = d[3 * ds];
    y[0] = d0 - d2;
    y[ys] = d1 + d2;
    y[2 * ys] = d2 - d1;
    y[3 * ys] = d1 - d3;
  }
  // u = G g
  template <typename S, typename V>
  FC_HD static void filter(const V* g, int gs, V* u, int us) {
    const V g0 = g[0], g1 = g[gs], g2 = g[2 * gs];
    const V h = (g0 + g2) * S(0.5);
    u[0] = g0;
    u[us] = h + g1 * S(0.5);
    u[2 * us] = h - g1 * S(0.5);
    u[3 * us] = g2;
  }
  // y = A^T m
  template <typename S, typename V>
  FC_HD static void output(const V* m, int ms, V* y, int ys) {
    const V m0 = m[0], m1 = m[ms], m2 = m[2 * ms], m3 = m[3 * ms];
    y[0] = m0 + m1 + m2;
    y[ys] = m1 - m2 - m3;
  }
  // m = A y, the output transform's adjoint (the weight gradient's transform of grad_output)
  template <typename S, typename V>
  FC_HD static void output_adjoint(const V* y, int ys, V* m, int ms) {
    const V y0 = y[0], y1 = y[ys];
    m[0] = y0;
    m[ms] = y0 + y1;
    m[2 * ms] = y0 - y1;
    m[3 * ms] = -y1;
  }
  // g = G^T u, the filter transform's adjoint (the weight gradient from its transform)
  template <typename S, typename V>
  FC_HD static void filter_adjoint(const V* u, int us, V* g, int gs) {
    const V u0 = u[0], u1 = u[us], u2 = u[2 * us], u3 = u[3 * us];
    const V h = (u1 + u2) * S(0.5);
    g[0] = u0 + h;
    g[gs] = (u1 - u2) * S(0.5);
    g[2 * gs] = h + u3;
  }
};

// F(4x4, 3x3): 36 multiplies per 16 outputs instead of 144; larger transforms, larger rounding error.
template <>
struct Winograd<4> {
  static constexpr int kM = 4, kAlpha = 6;
  static constexpr double kBT[6][6] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
                                       {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
  static constexpr double kG[6][3] = {{1.0 / 4, 0, 0},
                                      {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                      {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                      {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                      {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                      {0, 0, 1}};
  static constexpr double kAT[4][6] = {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};

  // y = B^T d, sharing the sums d3 + d4 (and friends) between rows
  template <typename S, typename V>
  FC_HD static void input(const V* d, int ds, V* y, int ys) {
    const V d0 = d[0], d1 = d[ds], d2 = d[2 * ds], d3 = d[3 * ds], d4 = d[4 * ds], d5 = d[5 * ds];
    const V a = d4 - d2 * S(4), b = d3 - d1 * S(4);   // rows 1 and 2: a + b, a - b
    const V c = d4 - d2, e = (d3 - d1) * S(2);        // rows 3 and 4: c + e, c - e
    y[0] = d0 * S(4) - d2 * S(5) + d4;
    y[ys] = a + b;
    y[2 * ys] = a - b;
    y[3 * ys] = c + e;
    y[4 * ys] = c - e;
    y[5 * ys] = d1 * S(4) - d3 * S(5) + d5;
  }
  // u = G g
  template <typename S, typename V>
  FC_HD static void filter(const V* g, int gs, V* u, int us) {
    const V g0 = g[0], g1 = g[gs], g2 = g[2 * gs];
    const V s = (g0 + g2) * S(-1.0 / 6), t = g1 * S(1.0 / 6);
    const V p = g0 * S(1.0 / 24) + g2 * S(1.0 / 6), q = g1 * S(1.0 / 12);
    u[0] = g0 * S(0.25);
    u[us] = s - t;
    u[2 * us] = s + t;
    u[3 * us] = p + q;
    u[4 * us] = p - q;
    u[5 * us] = g2;
  }
  // y = A^T m
  template <typename S, typename V>
  FC_HD static void output(const V* m, int ms, V* y, int ys) {
    const V m0 = m[0], m1 = m[ms], m2 = m[2 * ms], m3 = m[3 * ms], m4 = m[4 * ms], m5 = m[5 * ms];
    const V a = m1 + m2, b = m1 - m2, c = m3 + m4, e = m3 - m4;
    y[0] = m0 + a + c;
    y[ys] = b + e * S(2);
    y[2 * ys] = a + c * S(4);
    y[3 * ys] = b + e * S(8) + m5;
  }
  // m = A y, the output transform's adjoint (the weight gradient's transform of grad_output)
  template <typename S, typename V>
  FC_HD static void output_adjoint(const V* y, int ys, V* m, int ms) {
    const V y0 = y[0], y1 = y[ys], y2 = y[2 * ys], y3 = y[3 * ys];
    const V p = y0 + y2, q = y1 + y3;                          // rows 1 and 2: p + q, p - q
    const V r = y0 + y2 * S(4), t = y1 * S(2) + y3 * S(8);     // rows 3 and 4: r + t, r - t
    m[0] = y0;
    m[ms] = p + q;
    m[2 * ms] = p - q;
    m[3 * ms] = r + t;
    m[4 * ms] = r - t;
    m[5 * ms] = y3;
  }
  // g = G^T u, the filter transform's adjoint (the weight gradient from its transform)
  template <typename S, typename V>
  FC_HD static void filter_adjoint(const V* u, int us, V* g, int gs) {
    const V u0 = u[0], u1 = u[us], u2 = u[2 * us], u3 = u[3 * us], u4 = u[4 * us], u5 = u[5 * us];
    const V s = u1 + u2, d = u2 - u1, p = u3 + u4, q = u3 - u4;
    g[0] = u0 * S(0.25) - s * S(1.0 / 6) + p * S(1.0 / 24);
    g[gs] = d * S(1.0 / 6) + q * S(1.0 / 12);
    g[2 * gs] = (p - s) * S(1.0 / 6) + u5;
  }
};

// The 2-D transforms on alpha x alpha (or 3 x 3 / m x m) row-major arrays: columns first, then rows.
template <int M, typename S, typename V>
FC_HD void winograd_input_2d(const V* d, V* out) {   // out = B^T d B
  constexpr int A = Winograd<M>::kAlpha;
  V tmp[A * A];
  for (int j = 0; j < A; ++j) Winograd<M>::template input<S>(d + j, A, tmp + j, A);
  for (int i = 0; i < A; ++i) Winograd<M>::template input<S>(tmp + i * A, 1, out + i * A, 1);
}

template <int M, typename S, typename V>
FC_HD void winograd_filter_2d(const V* g, V* out) {   // g: 3 x 3, out = G g G^T: alpha x alpha
  constexpr int A = Winograd<M>::kAlpha;
  V tmp[A * 3];
  for (int j = 0; j < 3; ++j) Winograd<M>::template filter<S>(g + j, 3, tmp + j, 3);
  for (int i = 0; i < A; ++i) Winograd<M>::template filter<S>(tmp + i * 3, 1, out + i * A, 1);
}

template <int M, typename S, typename V>
FC_HD void winograd_output_2d(const V* m, V* out) {   // out = A^T m A: M x M
  constexpr int A = Winograd<M>::kAlpha;
  V tmp[M * A];
  for (int j = 0; j < A; ++j) Winograd<M>::template output<S>(m + j, A, tmp + j, A);
  for (int i = 0; i < M; ++i) Winograd<M>::template output<S>(tmp + i * A, 1, out + i * M, 1);
}

// The weight gradient's transforms (the adjoints of the output and filter transforms): dM = A dY A^T
// of an M x M grad_output tile, and dg = G^T dU G of a summed alpha x alpha product.
template <int M, typename S, typename V>
FC_HD void winograd_output_adjoint_2d(const V* y, V* out) {   // out = A y A^T: alpha x alpha
  constexpr int A = Winograd<M>::kAlpha;
  V tmp[A * M];
  for (int j = 0; j < M; ++j) Winograd<M>::template output_adjoint<S>(y + j, M, tmp + j, M);
  for (int i = 0; i < A; ++i) Winograd<M>::template output_adjoint<S>(tmp + i * M, 1, out + i * A, 1);
}

template <int M, typename S, typename V>
FC_HD void winograd_filter_adjoint_2d(const V* u, V* out) {   // out = G^T u G: 3 x 3
  constexpr int A = Winograd<M>::kAlpha;
  V tmp[3 * A];
  for (int j = 0; j < A; ++j) Winograd<M>::template filter_adjoint<S>(u + j, A, tmp + j, A);
  for (int i = 0; i < 3; ++i) Winograd<M>::template filter_adjoint<S>(tmp + i * A, 1, out + i * 3, 1);
}

}  // namespace fastconv
