// A CPU emulation of the CUDA tensor-core GEMM (cuda/gemm_mma.cu), for tests on machines without a
// GPU: common/mma_gemm.h's block algorithm -- the same tile loops, cp.async stage ring, swizzle,
// ldmatrix addressing and epilogue -- run over every block, warp and lane on an execution interface
// that implements the PTX ISA's semantics of the instructions:
//   cp.async.cg ... 16, src-size   copies land only when a cp.async.wait_group lets their commit group
//                                  complete (until then shared memory holds NaN bytes, so reading a
//                                  stage before its wait shows); the rest of the 16 bytes zero-filled;
//   ldmatrix.m8n8.x4(.trans).b16   lanes 8j..8j+7 address the rows of matrix j; lane l receives in its
//                                  register j the elements (l/4, 2(l%4)) and (l/4, 2(l%4)+1) of matrix
//                                  j, or with .trans (2(l%4), l/4) and (2(l%4)+1, l/4), low half first;
//   mma.m16n8k16.row.col.f32       the fragment tables of the PTX ISA (section "Matrix fragments for
//                                  mma.m16n8k16 with floating point type"); the 16 products of a k
//                                  group summed exactly and added to C with one float32 rounding (the
//                                  ISA leaves the internal order and precision open; tensor cores add a
//                                  k group at once in wider precision, so one rounding per mma).
// Every global read is checked to lie inside its operand and every shared access inside the stages,
// 16-byte aligned. Not emulated: the instructions' syntax, the barrier (the emulation runs one warp
// after another, which a missing __syncthreads cannot upset) and the tensor cores' internal sum order.
//
//   torch.ops.fastconv_testing.cuda_mma_gemm(a, b, c, trans_a, trans_b, alpha, beta, out_dtype)
// takes CPU float16/bfloat16 tensors, fastconv::gemm's semantics.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstring>
#include <memory>
#include <vector>

#include "common/conv2d_tensor_cores.h"
#include "common/gemm_batch.h"
#include "common/mma_gemm_args.h"
#include "cpu/cuda_emulation.h"

namespace fastconv::cpu {
namespace {

constexpr const char* kOp = "cuda_mma_gemm";
using T = MmaTiles;

struct HostExec {
  using Frag = uint32_t[T::kWarps][32][4];
  using Acc = float[T::kWarps][32][4];

  bool bf16;
  Range a, b;   // where the operands' reads may fall
  std::vector<unsigned char> smem = std::vector<unsigned char>(T::kSmemBytes, 0xFF);   // NaN halves
  struct Copy {
    int dst;
    const unsigned char* src;
    int bytes;
  };
  CommitGroups<Copy> copies;   // landed when retired

  void zero(Acc& acc) const { std::memset(acc, 0, sizeof(Acc)); }

  template <typename F>
  void threads(F&& f) const {
    for (int tid = 0; tid < T::kThreads; ++tid) f(tid);
  }

  template <typename F>
  void lanes(F&& f) const {
    for (int w = 0; w < T::kWarps; ++w) {
      for (int l = 0; l < 32; ++l) f(w, l);
    }
  }

  float acc_at(const Acc& acc, int warp, int lane, int i) const { return acc[warp][lane][i]; }

  void cp_async(int dst, const uint16_t* src, int bytes) {
    TORCH_CHECK(dst >= 0 && dst % 16 == 0 && dst + 16 <= T::kSmemBytes && bytes >= 0 && bytes <= 16,
                kOp, ": cp.async to shared byte ", dst, " of ", bytes, " bytes");
    const auto* s = reinterpret_cast<const unsigned char*>(src);
    if (bytes > 0) {
      TORCH_CHECK(reinterpret_cast<uintptr_t>(s) % 16 == 0, kOp, ": cp.async from an unaligned global address");
      TORCH_CHECK(a.holds(s, bytes) || b.holds(s, bytes), kOp, ": cp.async reads outside both operands");
    }
    copies.issued.push_back({dst, s, bytes});
  }

  void commit() { copies.commit(); }

  template <int N>
  void wait_pending() {
    copies.retire_beyond(N, [&](const Copy& c) {
      if (c.bytes > 0) std::memcpy(&smem[c.dst], c.src, c.bytes);
      std::memset(&smem[c.dst + c.bytes], 0, 16 - c.bytes);
    });
  }

  void sync() const {}

  uint16_t smem_u16(int byte) const {
    uint16_t v;
    std::memcpy(&v, &smem[byte], 2);
    return v;
  }

  template <typename F>
  void ldmatrix_x4(Frag& f, int stage_byte, bool trans, F&& offset) const {
    for (int w = 0; w < T::kWarps; ++w) {
      int row_addr[32];
      for (int l = 0; l < 32; ++l) {
        row_addr[l] = stage_byte + offset(w, l);
        TORCH_CHECK(row_addr[l] >= 0 && row_addr[l] % 16 == 0 && row_addr[l] + 16 <= T::kSmemBytes, kOp,
                    ": ldmatrix row address ", row_addr[l]);
      }
      for (int l = 0; l < 32; ++l) {
        for (int j = 0; j < 4; ++j) {
          // element (r, c) of matrix j: the c-th half of the row lane 8j + r addressed
          const auto at = [&](int r, int c) { return smem_u16(row_addr[8 * j + r] + 2 * c); };
          const int g = l / 4, t = l % 4;
          const uint16_t lo = trans ? at(2 * t, g) : at(g, 2 * t);
          const uint16_t hi = trans ? at(2 * t + 1, g) : at(g, 2 * t + 1);
          f[w][l][j] = static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16;
        }
      }
    }
  }

  float half_of(uint32_t reg, int h) const {
    return half_bits_value(static_cast<uint16_t>(h ? reg >> 16 : reg & 0xFFFF), bf16);
  }

  void mma(Acc& d, const Frag& fa, const Frag& fb, int b_half) const {
    for (int w = 0; w < T::kWarps; ++w) {
      float A[16][16], B[16][8], C[16][8];
      for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        for (int h = 0; h < 2; ++h) {
          // A (row): a0,a1 (g, 2t+h); a2,a3 (g+8, 2t+h); a4,a5 (g, 2t+8+h); a6,a7 (g+8, 2t+8+h)
          A[g][2 * t + h] = half_of(fa[w][l][0], h);
          A[g + 8][2 * t + h] = half_of(fa[w][l][1], h);
          A[g][2 * t + 8 + h] = half_of(fa[w][l][2], h);
          A[g + 8][2 * t + 8 + h] = half_of(fa[w][l][3], h);
          // B (col): b0,b1 (2t+h, g); b2,b3 (2t+8+h, g)
          B[2 * t + h][g] = half_of(fb[w][l][2 * b_half], h);
          B[2 * t + 8 + h][g] = half_of(fb[w][l][2 * b_half + 1], h);
          // C: c0,c1 (g, 2t+h); c2,c3 (g+8, 2t+h)
          C[g][2 * t + h] = d[w][l][h];
          C[g + 8][2 * t + h] = d[w][l][2 + h];
        }
      }
      for (int i = 0; i < 16; ++i) {
        for (int j = 0; j < 8; ++j) {
          double dot = 0;   // 16 products of 11-bit significands: exact in float64
          for (int kk = 0; kk < 16; ++kk) dot += static_cast<double>(A[i][kk]) * B[kk][j];
          C[i][j] = static_cast<float>(C[i][j] + dot);
        }
      }
      for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        for (int h = 0; h < 2; ++h) {
          d[w][l][h] = C[g][2 * t + h];
          d[w][l][2 + h] = C[g + 8][2 * t + h];
        }
      }
    }
  }
};

template <typename Out>
void run_blocks(const MmaGemmParams& p, bool bf16, Range ra, Range rb) {
  for_each_block_tile(p.m, p.n, T::kBM, T::kBN, [&](int64_t row0, int64_t col0) {
    auto x = std::make_unique<HostExec>();
    x->bf16 = bf16;
    x->a = ra;
    x->b = rb;
    mma_gemm_block<Out>(*x, p, row0, col0);
    TORCH_CHECK(x->copies.empty(), kOp, ": copies left in flight at the end of a block");
  });
}

at::Tensor cuda_mma_gemm(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& c, bool trans_a,
                         bool trans_b, double alpha, double beta, std::optional<at::ScalarType> out_dtype) {
  const auto run = [](auto out, const MmaGemmParams& p, bool bf16, Range ra, Range rb) {
    run_blocks<typename decltype(out)::type>(p, bf16, ra, rb);
  };
  return emulated_gemm(kOp, false, run, a, b, c, trans_a, trans_b, alpha, beta, out_dtype);
}

// The Backend of common/conv2d_tensor_cores.h on the emulation: im2col as the CUDA kernel's thread
// body over every element, each GEMM of the batch on the emulated tensor-core kernel, its reads
// confined to the filter copy (out_channels rows from the first group's) and to the columns this
// launch wrote (its images' rows).
struct HostConvLaunches {
  const Conv2dShape& s;
  bool bf16;

  void im2col(const uint16_t* x, int64_t images, int64_t p0, int64_t pc, int64_t pitch, uint16_t* cols) const {
    const int64_t total = images * s.in_channels * s.g.kh * s.g.kw * pc;
    for (int64_t e = 0; e < total; ++e) {
      const int64_t src = im2col_source<int64_t>(e, s.g, p0, pc);
      cols[im2col_pitched<int64_t>(e, pc, pitch)] = src >= 0 ? x[src] : uint16_t(0);
    }
  }

  void gemm(const MmaGemmParams& p, const GemmBatch& batch) const {
    const auto* w = static_cast<const unsigned char*>(p.a.p);
    const auto* c = static_cast<const unsigned char*>(p.b.p);
    const Range weights{w, w + s.out_channels * p.a.ld * 2}, cols{c, c + batch.count / batch.inner * batch.b.outer * 2};
    for (int64_t z = 0; z < batch.count; ++z) {
      if (bf16) {
        run_blocks<c10::BFloat16>(mma_batch_entry<c10::BFloat16>(p, batch, z), true, weights, cols);
      } else {
        run_blocks<c10::Half>(mma_batch_entry<c10::Half>(p, batch, z), false, weights, cols);
      }
    }
  }
};

at::Tensor cuda_conv2d_half(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            int64_t workspace_bytes) {
  constexpr const char* op = "cuda_conv2d_half";
  const Conv2dShape s = check_conv2d(input, weight, bias, stride, padding, dilation, groups, "im2col", op);
  TORCH_CHECK(is_half(input.scalar_type()) && input.device().is_cpu(), "fastconv_testing::", op,
              ": expected float16 or bfloat16 CPU tensors");
  HostConvLaunches be{s, input.scalar_type() == at::kBFloat16};
  return conv2d_tensor_cores(be, input, weight, bias, s, workspace_bytes);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastconv_testing, m) {
  m.def("cuda_mma_gemm(Tensor a, Tensor b, Tensor? c=None, bool trans_a=False, bool trans_b=False, float alpha=1.0, "
        "float beta=1.0, ScalarType? out_dtype=None) -> Tensor");
  m.def("cuda_conv2d_half(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, "
        "int groups, int workspace_bytes) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastconv_testing, CPU, m) {
  m.impl("cuda_mma_gemm", &cuda_mma_gemm);
  m.impl("cuda_conv2d_half", &cuda_conv2d_half);
}

}  // namespace fastconv::cpu
