// Run-time choice of the CPU instruction set for fastconv's vectorised kernels.
//
// Each vectorised kernel exists in an AVX-512 and an AVX2 variant (files *_avx512.cpp, *_avx2.cpp,
// compiled for that ISA with `#pragma GCC target`) beside a portable scalar version. The widest
// variant the CPU supports is used, unless FASTCONV_CPU_ISA (scalar|avx2|avx512|avx512_bf16|amx, or
// avx512_emulated below) asks for a narrower one, or fastconv._C.set_cpu_isa() is called (the tests
// use it to run every variant).
// avx512_bf16 is AVX-512 plus the bfloat16 dot product (vdpbf16ps, AMD Zen 4 and Intel Cooper Lake /
// Sapphire Rapids on): the bfloat16 GEMM's micro-kernel uses it, every other family runs its avx512
// variant there. amx is that plus Intel AMX's bfloat16 tiles (AMX-TILE and AMX-BF16, Sapphire Rapids
// on), usable only once Linux has granted the process the tile data state
// (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), asked for once when the level is probed):
// the bfloat16 GEMM runs on tdpbf16ps there.
//
// avx512_emulated is for testing, never chosen by itself: the AVX-512 builds' source (64-byte GCC
// vectors: the 8 x 32 GEMM tile, 16-lane transposes, packing layouts, edges) compiled for AVX2, where
// each 64-byte operation becomes two 32-byte ones with the same per-lane arithmetic. It runs wherever
// avx2 does, so a CPU without AVX-512 still runs that code (DESIGN.md: a path the machine cannot
// execute is tested through an emulation of its instructions' semantics). Left out: the inline
// assembly and intrinsics that need AVX-512 encodings, for which the builds' portable branches
// stand in (the GEMM's assembly main loop is step for step its vector loop, so the sums agree), and
// the families written on intrinsics or the auto-vectoriser (max-pool, batch-norm, the half-precision
// runs, the bfloat16 kernels), which run their AVX2 builds under it.
#pragma once

namespace fastconv::cpu {

// Ordered by capability but for avx512_emulated, which needs avx2 only (isa_runs_here).
enum class Isa { scalar = 0, avx2 = 1, avx512 = 2, avx512_bf16 = 3, amx = 4, avx512_emulated = 5 };

Isa best_supported_isa();     // what this CPU can run
Isa active_isa();             // what kernels use now
bool isa_runs_here(Isa isa);  // whether this CPU can run `isa`'s kernels
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

// The kernel table for the active ISA among a family's builds: with an emulated AVX-512 build among
// them, or (three builds) without, when avx512_emulated runs the AVX2 one.
template <typename Table>
const Table& for_active_isa(const Table& avx512, const Table& avx512_emulated, const Table& avx2,
                            const Table& baseline) {
  switch (active_isa()) {
    case Isa::amx:
    case Isa::avx512_bf16:
    case Isa::avx512: return avx512;
    case Isa::avx512_emulated: return avx512_emulated;
    case Isa::avx2: return avx2;
    default: return baseline;
  }
}
template <typename Table>
const Table& for_active_isa(const Table& avx512, const Table& avx2, const Table& baseline) {
  return for_active_isa(avx512, avx2, avx2, baseline);
}

}  // namespace fastconv::cpu
