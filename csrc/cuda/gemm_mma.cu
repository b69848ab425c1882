// The tensor-core GEMM for sm_80 and later: common/mma_gemm.h's block algorithm on the real
// instructions -- cp.async.cg (16-byte global -> shared copies, zero-filled at the edges, in commit
// groups), ldmatrix.sync.aligned.m8n8.x4(.trans) and mma.sync.aligned.m16n8k16 with float32
// accumulators. One thread block of 256 threads per 128 x 128 tile of C, the tiles numbered with M
// fastest on grid.x, the GEMMs of a strided batch on grid.y. The CPU emulation
// (cpu/cuda_mma_emulation.cpp) runs the same block algorithm on the PTX ISA's semantics of these
// instructions; what only this file holds is the instructions' syntax.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "common/gemm_batch.h"
#include "common/mma_gemm.h"
#include "cuda/gemm.h"

namespace fastconv::cuda {
namespace {

using T = MmaTiles;

// The execution interface of mma_gemm_block for one CUDA thread.
template <bool kBf16>
struct DeviceExec {
  using Frag = uint32_t[4];
  using Acc = float[4];
  unsigned char* smem;
  int tid, warp, lane;

  __device__ void zero(Acc& a) const { a[0] = a[1] = a[2] = a[3] = 0.0f; }

  template <typename F>
  __device__ void threads(F&& f) const { f(tid); }

  template <typename F>
  __device__ void lanes(F&& f) const { f(warp, lane); }

  __device__ float acc_at(const Acc& a, int, int, int i) const { return a[i]; }

  __device__ void cp_async(int dst, const uint16_t* src, int bytes) const {
#if __CUDA_ARCH__ >= 800
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem + dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(bytes));
#endif
  }

  __device__ void commit() const {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
  }

  template <int N>
  __device__ void wait_pending() const {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
  }

  __device__ void sync() const { __syncthreads(); }

  template <typename F>
  __device__ void ldmatrix_x4(Frag& f, int stage_byte, bool trans, F&& offset) const {
#if __CUDA_ARCH__ >= 800
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem + stage_byte + offset(warp, lane)));
    if (trans) {
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(f[0]), "=r"(f[1]), "=r"(f[2]), "=r"(f[3]) : "r"(s));
    } else {
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(f[0]), "=r"(f[1]), "=r"(f[2]), "=r"(f[3]) : "r"(s));
    }
#endif
  }

  __device__ void mma(Acc& d, const Frag& a, const Frag& b, int b_half) const {
#if __CUDA_ARCH__ >= 800
    const uint32_t b0 = b[2 * b_half], b1 = b[2 * b_half + 1];
    if constexpr (kBf16) {
      asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                   "{%8, %9}, {%0, %1, %2, %3};\n"
                   : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
      asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                   "{%8, %9}, {%0, %1, %2, %3};\n"
                   : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
#endif
  }
};

// Block (x, y): tile x of GEMM z0 + y of the batch.
template <bool kBf16, typename Out>
__global__ void __launch_bounds__(T::kThreads) gemm_mma_kernel(MmaGemmParams p, GemmBatch batch, int64_t z0) {
#if __CUDA_ARCH__ >= 800
  extern __shared__ __align__(128) unsigned char smem[];
  DeviceExec<kBf16> x{smem, static_cast<int>(threadIdx.x), static_cast<int>(threadIdx.x / 32),
                      static_cast<int>(threadIdx.x % 32)};
  int64_t row0, col0;
  gemm_block_tile(blockIdx.x, (p.m + T::kBM - 1) / T::kBM, T::kBM, T::kBN, &row0, &col0);
  mma_gemm_block<Out>(x, mma_batch_entry<Out>(p, batch, z0 + blockIdx.y), row0, col0);
#else
  __trap();   // the glue launches this kernel only on compute capability 8.0 and later
#endif
}

template <bool kBf16, typename Out>
cudaError_t launch(const MmaGemmParams& p, const GemmBatch& batch, cudaStream_t stream) {
  const int64_t tiles = (p.m + T::kBM - 1) / T::kBM * ((p.n + T::kBN - 1) / T::kBN);
  if (tiles > INT32_MAX) return cudaErrorInvalidConfiguration;
  if (T::kSmemBytes > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(gemm_mma_kernel<kBf16, Out>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, T::kSmemBytes);
    if (e != cudaSuccess) return e;
  }
  constexpr int64_t kMaxGridY = 65535;
  for (int64_t z0 = 0; z0 < batch.count; z0 += kMaxGridY) {
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(std::min(kMaxGridY, batch.count - z0)));
    gemm_mma_kernel<kBf16, Out><<<grid, T::kThreads, T::kSmemBytes, stream>>>(p, batch, z0);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

template <bool kBf16>
cudaError_t launch_out(DType out, const MmaGemmParams& p, const GemmBatch& batch, cudaStream_t stream) {
  switch (out) {
    case DType::f32: return launch<kBf16, float>(p, batch, stream);
    case DType::bf16: return launch<kBf16, __nv_bfloat16>(p, batch, stream);
    case DType::f16: return launch<kBf16, __half>(p, batch, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t gemm_mma_batched(DType in, DType out, const MmaGemmParams& p, const GemmBatch& batch,
                             cudaStream_t stream) {
  if (p.m == 0 || p.n == 0 || batch.count == 0) return cudaSuccess;
  if (batch.reduce != 1) return cudaErrorInvalidValue;
  if (in == DType::bf16) return launch_out<true>(out, p, batch, stream);
  if (in == DType::f16) return launch_out<false>(out, p, batch, stream);
  return cudaErrorInvalidValue;
}

cudaError_t gemm_mma(DType in, DType out, const MmaGemmParams& p, cudaStream_t stream) {
  return gemm_mma_batched(in, out, p, GemmBatch{}, stream);
}

}  // namespace fastconv::cuda
