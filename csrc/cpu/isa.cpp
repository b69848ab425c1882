#include "cpu/isa.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

#include <cpuid.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/syscall.h>
#endif

namespace fastconv::cpu {
namespace {

// AMX: the CPU has AMX-TILE and AMX-BF16 (cpuid leaf 7, EDX bits 24 and 22), and Linux lets this
// process use the tile data state: the first request (arch_prctl ARCH_REQ_XCOMP_PERM = 0x1023 for
// XFEATURE_XTILEDATA = 18) grants it for every thread, and fails where the kernel or the OS's
// XSAVE setup does not support it.
bool amx_usable() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d) == 0) return false;
  if (((d >> 24) & 1u) == 0 || ((d >> 22) & 1u) == 0) return false;
#ifdef __linux__
  return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
  return false;
#endif
}

}  // namespace

Isa best_supported_isa() {
  static const Isa best = [] {
    __builtin_cpu_init();
    // F16C (cpuid leaf 1, ECX bit 29; every CPU with AVX2) converts float16 in the half-run helpers.
    unsigned a = 0, b = 0, c = 0, d = 0;
    const bool f16c = __get_cpuid(1, &a, &b, &c, &d) != 0 && (c >> 29 & 1u) != 0;
    // The AVX-512 kernels use F, BW, VL and DQ instructions (every AVX-512 server CPU since Skylake-SP).
    if (f16c && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
      if (!__builtin_cpu_supports("avx512bf16")) return Isa::avx512;
      return amx_usable() ? Isa::amx : Isa::avx512_bf16;
    }
    if (f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
    return Isa::scalar;
  }();
  return best;
}

static std::atomic<int>& active_slot() {
  static std::atomic<int> slot{[] {
    Isa isa = best_supported_isa();
    Isa requested;
    const char* env = std::getenv("FASTCONV_CPU_ISA");
    if (env != nullptr && parse_isa(env, &requested) && requested < isa) isa = requested;
    return static_cast<int>(isa);
  }()};
  return slot;
}

Isa active_isa() { return static_cast<Isa>(active_slot().load(std::memory_order_relaxed)); }

bool set_active_isa(Isa isa) {
  if (isa > best_supported_isa()) return false;
  active_slot().store(static_cast<int>(isa), std::memory_order_relaxed);
  return true;
}

long l2_cache_bytes() {
  static const long bytes = [] {
    const long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return v > 0 ? v : 1L << 20;
  }();
  return bytes;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::amx: return "amx";
    case Isa::avx512_bf16: return "avx512_bf16";
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "scalar";
  }
}

bool parse_isa(const char* name, Isa* out) {
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512, Isa::avx512_bf16, Isa::amx}) {
    if (std::strcmp(name, isa_name(isa)) == 0) {
      *out = isa;
      return true;
    }
  }
  return false;
}

}  // namespace fastconv::cpu
