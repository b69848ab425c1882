#include "cpu/isa.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <string>

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
    if (env != nullptr && parse_isa(env, &requested) && isa_runs_here(requested)) isa = requested;
    return static_cast<int>(isa);
  }()};
  return slot;
}

Isa active_isa() { return static_cast<Isa>(active_slot().load(std::memory_order_relaxed)); }

bool isa_runs_here(Isa isa) {
  const Isa best = best_supported_isa();
  return isa == Isa::avx512_emulated ? best >= Isa::avx2 : isa <= best;
}

bool set_active_isa(Isa isa) {
  if (!isa_runs_here(isa)) return false;
  active_slot().store(static_cast<int>(isa), std::memory_order_relaxed);
  return true;
}

namespace {

// "32K", "1024K", "2M", "123456" -> bytes; 0 if it does not parse.
long parse_bytes(const char* text) {
  char* end = nullptr;
  const long v = std::strtol(text, &end, 10);
  if (end == text || v <= 0) return 0;
  if (*end == 'K' || *end == 'k') return v << 10;
  if (*end == 'M' || *end == 'm') return v << 20;
  return *end == '\0' || *end == '\n' || *end == ',' ? v : 0;
}

// CPU 0's data or unified cache of a level from sysfs, 0 if not described there.
long sysfs_cache_bytes(int level) {
  for (int index = 0; index < 8; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
    std::ifstream lv(dir + "level"), ty(dir + "type"), sz(dir + "size");
    int l = 0;
    std::string type, size;
    if (!(lv >> l) || !(ty >> type) || !(sz >> size)) continue;
    if (l == level && type != "Instruction") return parse_bytes(size.c_str());
  }
  return 0;
}

long cache_bytes(int level, int sysconf_name, long fallback) {
  long v = sysfs_cache_bytes(level);
  if (v <= 0) v = sysconf(sysconf_name);
  return v > 0 ? v : fallback;
}

}  // namespace

const CacheSizes& cache_sizes() {
  static const CacheSizes sizes = [] {
    CacheSizes c{cache_bytes(1, _SC_LEVEL1_DCACHE_SIZE, 32L << 10), cache_bytes(2, _SC_LEVEL2_CACHE_SIZE, 1L << 20),
                 cache_bytes(3, _SC_LEVEL3_CACHE_SIZE, 32L << 20)};
    if (const char* env = std::getenv("FASTCONV_CPU_CACHES"); env != nullptr && *env != '\0') {
      long v[3] = {0, 0, 0};
      const char* p = env;
      for (int i = 0; i < 3 && p != nullptr; ++i) {
        v[i] = parse_bytes(p);
        p = std::strchr(p, ',');
        if (p != nullptr) ++p;
      }
      if (v[0] > 0 && v[1] > 0 && v[2] > 0) {
        c = CacheSizes{v[0], v[1], v[2]};
      } else {   // said, not ignored silently: the blocking would not be the one asked for
        std::fprintf(stderr, "fastconv: FASTCONV_CPU_CACHES='%s' is not 'l1d,l2,l3' (bytes, K or M suffixes); "
                             "using this CPU's caches\n", env);
      }
    }
    return c;
  }();
  return sizes;
}

long l2_cache_bytes() { return cache_sizes().l2; }

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512_emulated: return "avx512_emulated";
    case Isa::amx: return "amx";
    case Isa::avx512_bf16: return "avx512_bf16";
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "scalar";
  }
}

bool parse_isa(const char* name, Isa* out) {
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512, Isa::avx512_bf16, Isa::amx, Isa::avx512_emulated}) {
    if (std::strcmp(name, isa_name(isa)) == 0) {
      *out = isa;
      return true;
    }
  }
  return false;
}

}  // namespace fastconv::cpu
