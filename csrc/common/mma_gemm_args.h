// The tensor-core GEMMs' operands from tensors (torch side), shared by the CUDA glue and the CPU
// emulations of the kernels: each operand read in place where one of its dimensions is unit-stride
// (for the Hopper kernel, K) and the other's pitch keeps every 16-byte chunk aligned, else copied once
// into a K-contiguous buffer whose pitch is rounded up to 8 elements.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "common/gemm_args.h"
#include "common/mma_gemm.h"

namespace fastconv {

// xk: the operand as an extent x K view (A: m x k; B: n x k). *keep holds the copy where one is made.
// k_contiguous_only: the Hopper kernel's TMA boxes run along K.
inline MmaOperand mma_operand(const at::Tensor& xk, at::Tensor* keep, bool k_contiguous_only) {
  const int64_t ex = xk.size(0), ek = xk.size(1), sx = xk.stride(0), sk = xk.stride(1);
  const bool aligned = reinterpret_cast<uintptr_t>(xk.data_ptr()) % 16 == 0;
  // A dimension of extent <= 1 is only ever indexed at 0, so its stride does not matter: a single row
  // is given the padded pitch (what a TMA descriptor accepts; the mma.sync kernel ignores it).
  if (aligned && (sk == 1 || ek <= 1) && (ex <= 1 || sx % 8 == 0)) {
    return {xk.data_ptr(), ex <= 1 ? mma_pitch(ek) : sx, true, ex};
  }
  if (!k_contiguous_only && aligned && (sx == 1 || ex <= 1) && (ek <= 1 || sk % 8 == 0)) {
    return {xk.data_ptr(), sk, false, ex};
  }
  *keep = at::empty({ex, mma_pitch(ek)}, xk.options()).narrow(1, 0, ek);
  keep->copy_(xk);
  return {keep->data_ptr(), keep->stride(0), true, ex};
}

// The kernels' parameters for out = alpha * op(a) * op(b) + beta * out (out row-major m x n,
// prefilled with c by the caller where beta is used); keep_a and keep_b hold operand copies;
// k_contiguous_only for the Hopper kernel (common/wgmma_gemm.h).
inline MmaGemmParams mma_gemm_params(const at::Tensor& a, const at::Tensor& b, bool trans_a, bool trans_b,
                                     const GemmShape& s, double alpha, double beta, at::Tensor& out,
                                     at::Tensor* keep_a, at::Tensor* keep_b, bool k_contiguous_only = false) {
  MmaGemmParams p;
  p.m = s.m;
  p.n = s.n;
  p.k = alpha == 0.0 ? 0 : s.k;   // BLAS: with alpha == 0 A and B are not read (a NaN there must not show)
  p.a = mma_operand(trans_a ? a.t() : a, keep_a, k_contiguous_only);
  p.b = mma_operand(trans_b ? b : b.t(), keep_b, k_contiguous_only);
  p.alpha = static_cast<float>(alpha);
  p.beta = static_cast<float>(beta);
  p.c = out.data_ptr();
  p.ldc = s.n;
  return p;
}

}  // namespace fastconv
