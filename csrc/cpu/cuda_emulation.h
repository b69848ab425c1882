// What the CPU emulations of the CUDA tensor-core kernels (cuda_mma_emulation.cpp: mma.sync;
// cuda_wgmma_emulation.cpp: Hopper's wgmma and TMA) share: the bounds every emulated global read is
// checked against, the value of a 16-bit operand element, and the GEMM op around the kernel.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <deque>
#include <vector>

#include "common/gemm_args.h"
#include "common/gemm_batch.h"
#include "common/mma_gemm_args.h"
#include "cpu/half_runs.h"

namespace fastconv::cpu {

// The bytes an operand's reads may fall in.
struct Range {
  const unsigned char* begin;
  const unsigned char* end;
  bool holds(const void* p, int64_t bytes) const {
    const auto* c = static_cast<const unsigned char*>(p);
    return c >= begin && c + bytes <= end;
  }
};

// The storage of the operand (of its copy, where the glue made one).
inline Range operand_range(const at::Tensor& t, const at::Tensor& keep) {
  const at::Tensor& src = keep.defined() ? keep : t;
  const auto* base = static_cast<const unsigned char*>(src.storage().data());
  return {base, base + src.storage().nbytes()};
}

// A float16 or bfloat16 element's value from its bits.
inline float half_bits_value(uint16_t bits, bool bf16) {
  if (bf16) return bf16_bits_to_float(bits);
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

// Asynchronous operations in commit groups (cp.async's, wgmma's): issued, committed, then retired in
// order when a wait leaves at most N groups pending.
template <typename Op>
struct CommitGroups {
  std::vector<Op> issued;             // since the last commit
  std::deque<std::vector<Op>> groups;   // committed, not yet retired

  void commit() {
    groups.push_back(std::move(issued));
    issued.clear();
  }
  template <typename F>
  void retire_beyond(size_t pending, F&& retire) {
    while (groups.size() > pending) {
      for (const Op& op : groups.front()) retire(op);
      groups.pop_front();
    }
  }
  bool empty() const { return issued.empty() && groups.empty(); }
};

// f(row0, col0) for every bm x bn block tile of an m x n output, in the kernels' grid order.
template <typename F>
void for_each_block_tile(int64_t m, int64_t n, int64_t bm, int64_t bn, F&& f) {
  const int64_t m_tiles = (m + bm - 1) / bm, tiles = m_tiles * ((n + bn - 1) / bn);
  for (int64_t block = 0; block < tiles; ++block) {
    int64_t row0, col0;
    gemm_block_tile(block, m_tiles, bm, bn, &row0, &col0);
    f(row0, col0);
  }
}

template <typename T>
struct TypeTag {
  using type = T;
};

// fastconv::gemm's semantics on an emulated tensor-core kernel: the checks, the output (prefilled with
// c where beta is used), the operands as the CUDA glue prepares them, then
// run(TypeTag<Out>{}, params, bf16, range_a, range_b) for C's element type.
template <typename Run>
at::Tensor emulated_gemm(const char* op, bool k_contiguous_only, Run&& run, const at::Tensor& a, const at::Tensor& b,
                         const std::optional<at::Tensor>& c, bool trans_a, bool trans_b, double alpha, double beta,
                         std::optional<at::ScalarType> out_dtype) {
  const GemmShape s = check_gemm(a, b, c, trans_a, trans_b, out_dtype, op);
  TORCH_CHECK(is_half(a.scalar_type()) && a.device().is_cpu(), "fastconv_testing::", op,
              ": expected float16 or bfloat16 CPU tensors");
  at::Tensor out = gemm_output(a, c, beta, s);
  const bool reads_c = gemm_reads_c(c, beta);
  if (out.numel() == 0) return out;
  at::Tensor keep_a, keep_b;
  const MmaGemmParams p = mma_gemm_params(a, b, trans_a, trans_b, s, alpha, reads_c ? beta : 0.0, out, &keep_a,
                                          &keep_b, k_contiguous_only);
  const Range ra = operand_range(a, keep_a), rb = operand_range(b, keep_b);
  const bool bf16 = a.scalar_type() == at::kBFloat16;
  switch (s.out_dtype) {
    case at::kFloat: run(TypeTag<float>{}, p, bf16, ra, rb); break;
    case at::kBFloat16: run(TypeTag<c10::BFloat16>{}, p, bf16, ra, rb); break;
    default: run(TypeTag<c10::Half>{}, p, bf16, ra, rb); break;
  }
  return out;
}

}  // namespace fastconv::cpu
