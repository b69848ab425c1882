#include "cpu/memory.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastconv::cpu {

static bool huge_pages_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("FASTCONV_HUGE_PAGES");
    return env == nullptr || std::strcmp(env, "0") != 0;
  }();
  return enabled;
}

void advise_huge_pages(const at::Tensor& fresh) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (!huge_pages_enabled()) return;
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const size_t nbytes = fresh.nbytes();
  if (nbytes < 2 * kHuge) return;
  const auto begin = reinterpret_cast<uintptr_t>(fresh.data_ptr());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t last = (begin + nbytes) & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)fresh;
#endif
}

void* scratch_bytes(Scratch slot, size_t bytes) {
  struct Buffer {
    void* data = nullptr;
    size_t size = 0;
    ~Buffer() { std::free(data); }
  };
  thread_local Buffer buffers[static_cast<int>(Scratch::count)];
  Buffer& b = buffers[static_cast<int>(slot)];
  if (b.size < bytes) {
    std::free(b.data);
    const size_t rounded = (bytes + 63) / 64 * 64;
    b.data = std::aligned_alloc(64, rounded);
    TORCH_CHECK(b.data != nullptr, "fastconv: out of memory for a ", rounded, "-byte scratch buffer");
    b.size = rounded;
  }
  return b.data;
}

}  // namespace fastconv::cpu
