// The Hopper tensor-core GEMM (sm_90a): common/wgmma_gemm.h's block algorithm on the real instructions
// -- cp.async.bulk.tensor (TMA) box copies with the 128-byte swizzle completing on mbarriers,
// wgmma.mma_async.m64n128k16 with float32 accumulators reading both operands from shared memory
// through matrix descriptors. One thread block of two warpgroups (256 threads) per 128 x 128 tile of
// C, the tiles numbered with M fastest. The CPU emulation (cpu/cuda_wgmma_emulation.cpp) runs the same
// block algorithm on the PTX ISA's semantics of these instructions; what only this file holds is the
// instructions' syntax and the tensor maps' encoding.
//
// Built only into an sm_90a image (-gencode=arch=compute_90a,code=sm_90a, FASTCONV_CUDA_ARCHS with
// "9.0a"); elsewhere the kernel body is a trap. gemm_wgmma_available() asks, once per device, a probe
// kernel compiled alongside whether the image the driver picked for the device has the instructions,
// so a build without sm_90a (or a GPU other than compute capability 9.0) keeps the mma.sync kernel.
#include <cuda.h>   // CUtensorMap and its enums (the encoder is reached through the runtime)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <mutex>

#include "common/gemm_batch.h"
#include "common/wgmma_gemm.h"
#include "cuda/gemm.h"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FC_WGMMA 1
#endif

namespace fastconv::cuda {
namespace {

using T = WgmmaTiles;

#if defined(FC_WGMMA)
__device__ uint32_t shared_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

// The execution interface of wgmma_gemm_block for one CUDA thread.
template <bool kBf16>
struct HopperExec {
  using Acc = float[T::kAccs];
  uint32_t base;   // shared address of the (1024-byte aligned) stages
  int tid;
  const CUtensorMap* maps[2];

  __device__ void unset(Acc&) const {}
  __device__ bool leader() const { return tid == 0; }
  __device__ uint32_t smem_addr(int byte) const { return base + static_cast<uint32_t>(byte); }
  __device__ uint32_t barrier(int stage) const { return base + T::kBarrierOffset + 8 * stage; }

  __device__ void init_barriers() const {
    if (tid == 0) {
      for (int s = 0; s < T::kStages; ++s) {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(barrier(s)));
      }
      // the initialisations visible to the copy engine (the async proxy) before any copy completes
      asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    }
    __syncthreads();
  }

  __device__ void expect_tx(int stage, int bytes) const {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(barrier(stage)), "r"(bytes)
                 : "memory");
  }

  __device__ void tma(int operand, int byte, int64_t k0, int64_t x0, int stage) const {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
        "[%4];\n" ::"r"(smem_addr(byte)),
        "l"(reinterpret_cast<uint64_t>(maps[operand])), "r"(static_cast<int>(k0)), "r"(static_cast<int>(x0)),
        "r"(barrier(stage))
        : "memory");
  }

  __device__ void wait(int stage, int parity) const {
    uint32_t done;
    do {
      asm volatile(
          "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
          : "=r"(done)
          : "r"(barrier(stage)), "r"(parity)
          : "memory");
    } while (!done);
  }

  __device__ void fence() const { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
  __device__ void commit() const { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
  template <int N>
  __device__ void wait_group() const {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
  }
  __device__ void sync() const { __syncthreads(); }

  template <typename F>
  __device__ void wgmma(Acc& d, F&& desc_a, uint64_t db, bool accumulate) const {
    const uint64_t da = desc_a(tid / 128);
    const int scale_d = accumulate;
    // scale-d from `accumulate` (1: D += A B; 0: D = A B), scale-a/b 1, no transposes (both K-major)
#define FC_WGMMA_ASM(types)                                                                                   \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                               \
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32." types " {"                                    \
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                     \
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "           \
                 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "           \
                 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "          \
                 "%64, %65, p, 1, 1, 0, 0;\n}\n"                                                                 \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),        \
                   "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),    \
                   "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), \
                   "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), \
                   "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), \
                   "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), \
                   "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), \
                   "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
                   "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), \
                   "+f"(d[63])                                                                                \
                 : "l"(da), "l"(db), "r"(scale_d))
    if constexpr (kBf16) {
      FC_WGMMA_ASM("bf16.bf16");
    } else {
      FC_WGMMA_ASM("f16.f16");
    }
#undef FC_WGMMA_ASM
  }

  template <typename F>
  __device__ void threads(F&& f) const { f(tid / 128, tid % 128); }

  __device__ float acc_at(const Acc& a, int, int, int i) const { return a[i]; }
};
#endif

template <bool kBf16, typename Out>
__global__ void __launch_bounds__(T::kThreads, 1)
    gemm_wgmma_kernel(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                      MmaGemmParams p) {
#if defined(FC_WGMMA)
  extern __shared__ unsigned char smem_raw[];
  // the 128-byte swizzle is anchored at 1024-byte boundaries: align the stages (the launch adds slack)
  const uint32_t raw = shared_addr(smem_raw);
  const uint32_t base = (raw + T::kAtomBytes - 1) / T::kAtomBytes * T::kAtomBytes;
  HopperExec<kBf16> x{base, static_cast<int>(threadIdx.x), {&map_a, &map_b}};
  int64_t row0, col0;
  gemm_block_tile(blockIdx.x, (p.m + T::kBM - 1) / T::kBM, T::kBM, T::kBN, &row0, &col0);
  wgmma_gemm_block<Out>(x, p, row0, col0);
#else
  __trap();   // launched only where gemm_wgmma_available() found the sm_90a image
#endif
}

__global__ void wgmma_probe_kernel(int* has) {
#if defined(FC_WGMMA)
  *has = 1;
#else
  *has = 0;
#endif
}

// cuTensorMapEncodeTiled from the driver, through the runtime (no link against libcuda).
using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

EncodeTiled encoder() {
  static const EncodeTiled fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      return static_cast<EncodeTiled>(nullptr);
    }
    return reinterpret_cast<EncodeTiled>(f);
  }();
  return fn;
}

// The tensor map of a K-contiguous operand: dimensions (k, extent), pitch ld elements, boxes of
// kBK x rows landing with the 128-byte swizzle, zeros outside (what the emulation's tma() does).
cudaError_t make_map(CUtensorMap* map, const MmaOperand& op, int64_t k, bool bf16, int rows) {
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(op.extent)};
  const cuuint64_t pitch[1] = {static_cast<cuuint64_t>(op.ld) * 2};
  const cuuint32_t box[2] = {T::kBK, static_cast<cuuint32_t>(rows)};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult r = encoder()(map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2,
                               const_cast<void*>(op.p), dims, pitch, box, element_strides,
                               CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                               CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

template <bool kBf16, typename Out>
cudaError_t launch(const MmaGemmParams& p, cudaStream_t stream) {
  const int64_t tiles = (p.m + T::kBM - 1) / T::kBM * ((p.n + T::kBN - 1) / T::kBN);
  // TMA box coordinates are 32-bit
  if (tiles > INT32_MAX || p.k > INT32_MAX || p.m > INT32_MAX || p.n > INT32_MAX) {
    return cudaErrorInvalidConfiguration;
  }
  CUtensorMap map_a, map_b;
  cudaError_t e = make_map(&map_a, p.a, p.k, kBf16, T::kBM);
  if (e == cudaSuccess) e = make_map(&map_b, p.b, p.k, kBf16, T::kBN);
  if (e != cudaSuccess) return e;
  constexpr int smem = T::kSmemBytes + T::kAtomBytes;   // slack for aligning the stages
  e = cudaFuncSetAttribute(gemm_wgmma_kernel<kBf16, Out>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return e;
  gemm_wgmma_kernel<kBf16, Out><<<static_cast<unsigned>(tiles), T::kThreads, smem, stream>>>(map_a, map_b, p);
  return cudaGetLastError();
}

template <bool kBf16>
cudaError_t launch_out(DType out, const MmaGemmParams& p, cudaStream_t stream) {
  switch (out) {
    case DType::f32: return launch<kBf16, float>(p, stream);
    case DType::bf16: return launch<kBf16, __nv_bfloat16>(p, stream);
    case DType::f16: return launch<kBf16, __half>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

bool gemm_wgmma_available(int device) {
  constexpr int kMaxDevices = 64;
  static std::mutex mutex;
  static int known[kMaxDevices] = {};   // 0 unknown, 1 yes, 2 no
  if (device < 0 || device >= kMaxDevices) return false;
  const std::lock_guard<std::mutex> lock(mutex);
  if (known[device] == 0) {
    int major = 0, minor = 0, has = 0;
    bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
              cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess &&
              major == 9 && minor == 0 && encoder() != nullptr;
    if (ok) {
      int previous = 0, *flag = nullptr;
      ok = cudaGetDevice(&previous) == cudaSuccess && cudaSetDevice(device) == cudaSuccess &&
           cudaMalloc(&flag, sizeof(int)) == cudaSuccess;
      if (ok) {
        wgmma_probe_kernel<<<1, 1>>>(flag);
        ok = cudaGetLastError() == cudaSuccess &&
             cudaMemcpy(&has, flag, sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess;
        cudaFree(flag);
      }
      cudaSetDevice(previous);
    }
    known[device] = ok && has == 1 ? 1 : 2;
  }
  return known[device] == 1;
}

cudaError_t gemm_wgmma(DType in, DType out, const MmaGemmParams& p, cudaStream_t stream) {
  if (p.m == 0 || p.n == 0) return cudaSuccess;
  if (p.k < 1 || !p.a.k_contiguous || !p.b.k_contiguous) return cudaErrorInvalidValue;
  if (in == DType::bf16) return launch_out<true>(out, p, stream);
  if (in == DType::f16) return launch_out<false>(out, p, stream);
  return cudaErrorInvalidValue;
}

}  // namespace fastconv::cuda
