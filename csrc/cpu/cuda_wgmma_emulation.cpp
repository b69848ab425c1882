// A CPU emulation of the Hopper tensor-core GEMM (cuda/gemm_wgmma.cu), for tests on machines without
// a GPU: common/wgmma_gemm.h's block algorithm -- the same stage ring, barrier phases, descriptors and
// epilogue -- run over every block, warpgroup and thread on an execution interface that implements
// the PTX ISA's semantics of the instructions:
//   mbarrier (count 1, tx)      a phase completes when its one arrival (arrive.expect_tx) has come
//                               and the copies completing on it brought exactly the bytes it expected;
//                               try_wait.parity P succeeds once the current phase's parity is not P.
//                               Waiting on a phase nothing can complete is reported (a hang on a GPU);
//   cp.async.bulk.tensor.2d     a box of 64 (K) x 128 rows lands only when its barrier's phase
//     (tile, 128-byte swizzle)  completes (shared memory holds NaN bytes until then): box element
//                               (r, c) at byte dst + swizzle128(128 r + 2 c), dst 1024-byte aligned,
//                               zeros past the tensor's extents, the whole box's bytes counted;
//   wgmma.mma_async m64n128k16  D = A B, + D with scale-d (the accumulators start as NaN, so a first
//     .f32.{bf16,f16} (K-major  wgmma that read them shows); operands read when its commit group is
//     descriptors)              waited for, and a box copy issued to rows a wgmma in flight still reads
//                               is refused; element (r, k) of A (64 x 16) or B (128 x 16) at
//                               swizzle128(start + 128 (r % 8) + SBO (r / 8) + 2 k), start and SBO
//                               decoded from the descriptor, whose other fields must be the ones the
//                               layout needs; D by the PTX ISA's accumulator layout; a k group's 16
//                               products summed exactly and added with one float32 rounding.
// Every global read is checked to lie inside its operand and every shared access inside the stages.
// Not emulated: the instructions' syntax, the tensor-map encoding (cuTensorMapEncodeTiled's arguments
// are built from the same extents, pitch and box in gemm_wgmma.cu), the warpgroups' concurrency
// (they run one after the other) and the tensor cores' internal sum order.
//
//   torch.ops.fastconv_testing.cuda_wgmma_gemm(a, b, c, trans_a, trans_b, alpha, beta, out_dtype)
// takes CPU float16/bfloat16 tensors, fastconv::gemm's semantics.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "common/gemm_batch.h"
#include "common/mma_gemm_args.h"
#include "common/wgmma_gemm.h"
#include "cpu/cuda_emulation.h"

namespace fastconv::cpu {
namespace {

constexpr const char* kOp = "cuda_wgmma_gemm";
using T = WgmmaTiles;

struct HostExec {
  using Acc = float[T::kWarpgroups][128][T::kAccs];

  bool bf16;
  MmaOperand ops[2];
  int64_t k;
  Range ranges[2];
  std::vector<unsigned char> smem = std::vector<unsigned char>(T::kSmemBytes, 0xFF);   // NaN halves

  struct Write {   // one element a box copy lands
    int dst;
    uint16_t bits;
  };
  struct Barrier {
    bool initialised = false, armed = false;
    int phase = 0;               // phases completed
    int64_t expected = 0, brought = 0;
    std::vector<Write> landing;  // the current phase's copies
  };
  std::array<Barrier, T::kStages> barriers;

  struct Mma {
    int wg;
    uint64_t desc_a, desc_b;
    bool accumulate;   // scale-d
    Acc* acc;
  };
  CommitGroups<Mma> mmas;

  // Accumulators not yet written hold NaN: a first wgmma that read them instead of overwriting shows.
  void unset(Acc& acc) const { std::fill_n(&acc[0][0][0], sizeof(Acc) / sizeof(float), NAN); }
  bool leader() const { return true; }
  uint32_t smem_addr(int byte) const { return static_cast<uint32_t>(byte); }   // the stages' base: address 0

  void init_barriers() {
    for (Barrier& b : barriers) b = Barrier{true};
  }

  Barrier& barrier(int stage) {
    TORCH_CHECK(stage >= 0 && stage < T::kStages && barriers[stage].initialised, kOp, ": mbarrier ", stage,
                " used before mbarrier.init");
    return barriers[stage];
  }

  void expect_tx(int stage, int bytes) {
    Barrier& b = barrier(stage);
    TORCH_CHECK(!b.armed, kOp, ": a second arrival on mbarrier ", stage, " in one phase (its count is 1)");
    b.armed = true;
    b.expected = bytes;
  }

  void tma(int operand, int dst, int64_t k0, int64_t x0, int stage) {
    const MmaOperand& op = ops[operand];
    const int rows = operand == 0 ? T::kBM : T::kBN;
    TORCH_CHECK(dst >= 0 && dst % T::kAtomBytes == 0 && dst + rows * T::kRowBytes <= T::kBarrierOffset, kOp,
                ": a 128-byte swizzled box copy to shared byte ", dst);
    TORCH_CHECK(op.k_contiguous && op.ld % 8 == 0 && reinterpret_cast<uintptr_t>(op.p) % 16 == 0, kOp,
                ": a TMA operand must be K-contiguous with a 16-byte aligned base and pitch");
    for (const auto& group : mmas.groups) {
      for (const Mma& m : group) {
        TORCH_CHECK(!reads(m.desc_a, 64, dst, rows) && !reads(m.desc_b, T::kBN, dst, rows), kOp,
                    ": a box copy to shared byte ", dst, " overwrites what a wgmma in flight still reads");
      }
    }
    Barrier& b = barrier(stage);
    const auto* base = static_cast<const uint16_t*>(op.p);
    for (int r = 0; r < rows; ++r) {
      for (int c = 0; c < T::kBK; ++c) {
        const int64_t x = x0 + r, kk = k0 + c;
        uint16_t bits = 0;
        if (x < op.extent && kk < k) {
          const uint16_t* src = base + x * op.ld + kk;
          TORCH_CHECK(ranges[operand].holds(src, 2), kOp, ": a box copy reads outside its operand");
          bits = *src;
        }
        b.landing.push_back({dst + static_cast<int>(wgmma_swizzle128(static_cast<uint32_t>(r * T::kRowBytes + 2 * c))),
                             bits});
      }
    }
    b.brought += static_cast<int64_t>(rows) * T::kRowBytes;   // out-of-bounds zeros count too
  }

  void wait(int stage, int parity) {
    Barrier& b = barrier(stage);
    if ((b.phase & 1) == parity) {   // the phase of that parity is the current one: it must complete
      TORCH_CHECK(b.armed && b.brought == b.expected, kOp, ": waiting on mbarrier ", stage, " phase ", b.phase,
                  " that nothing completes (armed ", b.armed, ", ", b.brought, " of ", b.expected, " bytes)");
      for (const Write& w : b.landing) std::memcpy(&smem[w.dst], &w.bits, 2);
      b.landing.clear();
      b.armed = false;
      b.expected = b.brought = 0;
      ++b.phase;
    }
  }

  void fence() const {}
  void sync() const {}

  template <typename F>
  void wgmma(Acc& acc, F&& desc_a, uint64_t desc_b, bool accumulate) {
    for (int wg = 0; wg < T::kWarpgroups; ++wg) mmas.issued.push_back({wg, desc_a(wg), desc_b, accumulate, &acc});
  }

  void commit() { mmas.commit(); }

  template <int N>
  void wait_group() {
    mmas.retire_beyond(N, [&](const Mma& op) { execute(op); });
  }

  // Whether the rows x 16 matrix of a descriptor lies in the rows of 128 bytes from shared byte dst on.
  static bool reads(uint64_t desc, int rows, int dst, int dst_rows) {
    const int start = static_cast<int>(desc & 0x3FFF) << 4 & ~(T::kRowBytes - 1);
    return start < dst + dst_rows * T::kRowBytes && dst < start + rows * T::kRowBytes;
  }

  // The rows x 16 K-major matrix a descriptor names, as floats.
  void read_matrix(uint64_t desc, int rows, float (*out)[16]) const {
    const uint32_t start = static_cast<uint32_t>(desc & 0x3FFF) << 4;
    const uint32_t sbo = static_cast<uint32_t>((desc >> 32) & 0x3FFF) << 4;
    const uint64_t known = 0x3FFFull | 0x3FFFull << 16 | 0x3FFFull << 32 | 7ull << 49 | 3ull << 62;
    TORCH_CHECK((desc & ~known) == 0 && ((desc >> 49) & 7) == 0 && (desc >> 62) == WgmmaDesc::kSwizzle128 &&
                    sbo == WgmmaDesc::kStrideBytes,
                kOp, ": a matrix descriptor other than K-major, 128-byte swizzle, 1024-byte row groups");
    for (int r = 0; r < rows; ++r) {
      for (int kk = 0; kk < 16; ++kk) {
        const uint32_t addr = wgmma_swizzle128(start + 128 * (r % 8) + sbo * (r / 8) + 2 * kk);
        TORCH_CHECK(addr + 2 <= static_cast<uint32_t>(T::kBarrierOffset), kOp, ": wgmma reads shared byte ", addr,
                    " past the stages");
        uint16_t bits;
        std::memcpy(&bits, &smem[addr], 2);
        out[r][kk] = half_bits_value(bits, bf16);
      }
    }
  }

  void execute(const Mma& op) const {
    float a[64][16], b[T::kBN][16];
    read_matrix(op.desc_a, 64, a);
    read_matrix(op.desc_b, T::kBN, b);
    for (int t = 0; t < 128; ++t) {
      for (int i = 0; i < T::kAccs; ++i) {
        int r, c;
        wgmma_c_element(t, i, &r, &c);
        double dot = 0;   // 16 products of 11-bit significands: exact in float64
        for (int kk = 0; kk < 16; ++kk) dot += static_cast<double>(a[r][kk]) * b[c][kk];
        float& d = (*op.acc)[op.wg][t][i];
        d = op.accumulate ? static_cast<float>(d + dot) : static_cast<float>(dot);
      }
    }
  }

  template <typename F>
  void threads(F&& f) const {
    for (int wg = 0; wg < T::kWarpgroups; ++wg) {
      for (int t = 0; t < 128; ++t) f(wg, t);
    }
  }

  float acc_at(const Acc& acc, int wg, int t, int i) const { return acc[wg][t][i]; }
};

template <typename Out>
void run_blocks(const MmaGemmParams& p, bool bf16, Range ra, Range rb) {
  for_each_block_tile(p.m, p.n, T::kBM, T::kBN, [&](int64_t row0, int64_t col0) {
    auto x = std::make_unique<HostExec>();
    x->bf16 = bf16;
    x->ops[0] = p.a;
    x->ops[1] = p.b;
    x->k = p.k;
    x->ranges[0] = ra;
    x->ranges[1] = rb;
    wgmma_gemm_block<Out>(*x, p, row0, col0);
    TORCH_CHECK(x->mmas.empty(), kOp, ": wgmmas left in flight at the end of a block");
    for (const HostExec::Barrier& b : x->barriers) {
      TORCH_CHECK(!b.armed && b.landing.empty(), kOp, ": box copies left in flight at the end of a block");
    }
  });
}

at::Tensor cuda_wgmma_gemm(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& c, bool trans_a,
                           bool trans_b, double alpha, double beta, std::optional<at::ScalarType> out_dtype) {
  const auto run = [](auto out, const MmaGemmParams& p, bool bf16, Range ra, Range rb) {
    // as gemm_wgmma: the first wgmma defines the accumulators (fastconv::gemm runs alpha = 0 and
    // k = 0 on the mma.sync kernel's epilogue instead)
    TORCH_CHECK(p.k >= 1, "fastconv_testing::", kOp, ": the Hopper kernel needs k >= 1 and alpha != 0");
    run_blocks<typename decltype(out)::type>(p, bf16, ra, rb);
  };
  return emulated_gemm(kOp, true, run, a, b, c, trans_a, trans_b, alpha, beta, out_dtype);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastconv_testing, m) {
  m.def("cuda_wgmma_gemm(Tensor a, Tensor b, Tensor? c=None, bool trans_a=False, bool trans_b=False, float alpha=1.0, "
        "float beta=1.0, ScalarType? out_dtype=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastconv_testing, CPU, m) { m.impl("cuda_wgmma_gemm", &cuda_wgmma_gemm); }

}  // namespace fastconv::cpu
