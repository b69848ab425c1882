// The cache of prepared weights (torch side, shared by the CPU and CUDA glue): Winograd's transformed
// filters U = G g G^T and im2col's filters (and their transpose, for grad_input) in the GEMM engine's
// packed-A form.
//
// A model in eval mode calls a convolution again and again with the same weight: what the kernels
// make of it is computed once and kept. Only weights that do not require grad are cached
// (fastconv.functional.conv2d passes weight.detach() when grad mode is off, as under torch.no_grad()
// in eval): a weight that requires grad is either being trained, so it changes every step, or being
// checked by gradcheck, which perturbs it through `.data` behind its version counter. An entry is
// valid while its storage is alive, at the same address with the same shape and strides, and the
// version counter (shared by a parameter and its detach()) has not moved: every update through
// autograd-visible ops (an optimizer step, load_state_dict, copy_ under no_grad) bumps it and the
// next call recomputes. Writes through `.data` are not seen: call fastconv._C.weight_cache_clear()
// after those. Inference-mode tensors have no version counter and are never cached.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/intrusive_ptr.h>

#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

namespace fastconv {

struct WeightCacheStats {
  int64_t entries = 0, hits = 0, misses = 0;
};

class WeightCache {
 public:
  static WeightCache& instance() {
    static WeightCache cache;
    return cache;
  }

  // Variants: what an entry holds for its weight (the weight's device keeps CPU and CUDA forms apart).
  static constexpr int kIm2colPacked = 16;             // im2col's packed-A filters (Winograd's are below)
  static constexpr int kIm2colPackedTransposed = 17;   // the same of W^T, for grad_input
  static int winograd(int m, bool transposed) { return m * 2 + (transposed ? 1 : 0); }   // 4, 5, 8, 9
  // A CPU variant made for one instruction set (the GEMM's packed layout depends on its micro-tile).
  static int for_isa(int variant, int isa) { return variant * 8 + isa; }

  // Whether a transform of `weight` is kept (see the top of this file); when not, compute() may
  // build it in scratch memory that the next call reuses.
  static bool cacheable(const at::Tensor& weight) { return !weight.requires_grad() && !weight.is_inference(); }

  // The prepared form of `weight` in variant `variant`, from the cache or from compute().
  at::Tensor get(const at::Tensor& weight, int variant, const std::function<at::Tensor()>& compute) {
    if (!cacheable(weight)) return compute();
    const int64_t version = weight._version();
    std::lock_guard<std::mutex> lock(mu_);
    ++clock_;
    std::vector<Entry> live;
    for (auto& e : entries_) {   // drop entries whose weight has died
      if (!e.storage.expired()) live.push_back(std::move(e));
    }
    entries_ = std::move(live);
    for (auto& e : entries_) {
      if (e.storage._unsafe_get_target() == weight.storage().unsafeGetStorageImpl() && e.variant == variant &&
          e.data == weight.data_ptr() && e.sizes == weight.sizes().vec() && e.strides == weight.strides().vec()) {
        if (e.version == version) {
          ++stats_.hits;
          e.used = clock_;
          return e.u;
        }
        e.u = compute();   // the weight was updated in place
        e.version = version;
        e.used = clock_;
        ++stats_.misses;
        return e.u;
      }
    }
    ++stats_.misses;
    if (static_cast<int64_t>(entries_.size()) >= kMaxEntries) {   // evict the least recently used
      size_t oldest = 0;
      for (size_t i = 1; i < entries_.size(); ++i) {
        if (entries_[i].used < entries_[oldest].used) oldest = i;
      }
      entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(oldest));
    }
    Entry e{weight.storage().getWeakStorageImpl(), variant, version,
            weight.data_ptr(),
            weight.sizes().vec(), weight.strides().vec(), compute(), clock_};
    entries_.push_back(e);
    return e.u;
  }

  WeightCacheStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    WeightCacheStats s = stats_;
    s.entries = static_cast<int64_t>(entries_.size());
    return s;
  }

  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    entries_.clear();
    stats_ = WeightCacheStats{};
  }

 private:
  static constexpr int64_t kMaxEntries = 128;   // a ResNet-50 has 53 convolutions, 3x3 ones cached two ways
  struct Entry {
    c10::weak_intrusive_ptr<c10::StorageImpl> storage;
    int variant;
    int64_t version;
    const void* data;
    std::vector<int64_t> sizes, strides;
    at::Tensor u;
    uint64_t used;
  };
  std::mutex mu_;
  std::vector<Entry> entries_;
  WeightCacheStats stats_;
  uint64_t clock_ = 0;
};

}  // namespace fastconv
