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

// The per-core L2 cache size in bytes (sysconf, which glibc answers from cpuid; 1 MiB if unknown):
// cache blocking derives from it.
long l2_cache_bytes();

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
