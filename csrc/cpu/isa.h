// Run-time choice of the CPU instruction set for fastconv's vectorised kernels.
//
// Each vectorised kernel exists in an AVX-512 and an AVX2 variant (files *_avx512.cpp, *_avx2.cpp,
// compiled for that ISA with `#pragma GCC target`) beside a portable scalar version. The widest
// variant the CPU supports is used, unless FASTCONV_CPU_ISA (scalar|avx2|avx512|avx512_bf16|amx) asks for
// a narrower one, or fastconv._C.set_cpu_isa() is called (the tests use it to run every variant).
// avx512_bf16 is AVX-512 plus the bfloat16 dot product (vdpbf16ps, AMD Zen 4 and Intel Cooper Lake /
// Sapphire Rapids on): the bfloat16 GEMM's micro-kernel uses it, every other family runs its avx512
// variant there. amx is that plus Intel AMX's bfloat16 tiles (AMX-TILE and AMX-BF16, Sapphire Rapids
// on), usable only once Linux has granted the process the tile data state
// (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), asked for once when the level is probed):
// the bfloat16 GEMM runs on tdpbf16ps there.
#pragma once

namespace fastconv::cpu {

enum class Isa { scalar = 0, avx2 = 1, avx512 = 2, avx512_bf16 = 3, amx = 4 };

Isa best_supported_isa();     // what this CPU can run
Isa active_isa();             // what kernels use now
bool set_active_isa(Isa isa); // false (and no change) when the CPU cannot run `isa`
const char* isa_name(Isa isa);
bool parse_isa(const char* name, Isa* out);

// The data caches a core sees, in bytes: read once from Linux's sysfs description of CPU 0's caches
// (/sys/devices/system/cpu/cpu0/cache/index*/{level,type,size}, which the kernel fills from cpuid),
// else from sysconf (glibc's cpuid reading), else 32 KiB / 1 MiB / 32 MiB. FASTCONV_CPU_CACHES
// ("l1d,l2,l3" in bytes, K or M suffixes allowed, e.g. "48K,2M,105M") replaces them, so that the
// blocking another CPU would get can be run and tested here. Cache blocking derives from these.
struct CacheSizes {
  long l1d, l2, l3;
};
const CacheSizes& cache_sizes();
long l2_cache_bytes();   // cache_sizes().l2

// The kernel table for the active ISA among a family's three builds.
template <typename Table>
const Table& for_active_isa(const Table& avx512, const Table& avx2, const Table& baseline) {
  switch (active_isa()) {
    case Isa::amx:
    case Isa::avx512_bf16:
    case Isa::avx512: return avx512;
    case Isa::avx2: return avx2;
    default: return baseline;
  }
}

}  // namespace fastconv::cpu
