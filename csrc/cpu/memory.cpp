#include "cpu/memory.h"

#include <atomic>
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

namespace {

// Whether any of n values has all its exponent bits set (an infinity or a NaN), on the bit patterns,
// so the loop vectorises.
template <typename Bits>
bool any_non_finite(const Bits* p, int64_t n, Bits exponent) {
  Bits bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= static_cast<Bits>((p[i] & exponent) == exponent);
  return bad != 0;
}

}  // namespace

bool all_finite(const at::Tensor& any) {
  const at::ScalarType dt = any.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
              "fastconv: all_finite takes a floating-point tensor, got ", dt);
  const at::Tensor t = any.is_non_overlapping_and_dense() ? any : any.contiguous();
  const void* data = t.data_ptr();
  std::atomic<bool> finite{true};
  at::parallel_for(0, t.numel(), int64_t(1) << 16, [&](int64_t b, int64_t e) {
    if (!finite.load(std::memory_order_relaxed)) return;
    bool bad = false;
    if (dt == at::kFloat) bad = any_non_finite(static_cast<const uint32_t*>(data) + b, e - b, uint32_t(0x7f800000));
    if (dt == at::kDouble) {
      bad = any_non_finite(static_cast<const uint64_t*>(data) + b, e - b, uint64_t(0x7ff0000000000000ULL));
    }
    if (dt == at::kHalf) bad = any_non_finite(static_cast<const uint16_t*>(data) + b, e - b, uint16_t(0x7c00));
    if (dt == at::kBFloat16) bad = any_non_finite(static_cast<const uint16_t*>(data) + b, e - b, uint16_t(0x7f80));
    if (bad) finite = false;
  });
  return finite.load();
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
