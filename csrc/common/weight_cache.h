// The cache of prepared weights (CPU): Winograd's transformed filters U = G g G^T, for the forward pass
// and (flipped, transposed) for grad_input; im2col's packed filters; the RNN layers' packed weights;
// autocast's casts.
//
// A model in eval mode calls a convolution again and again with the same weight: its transform is
// computed once and kept (ResNet-18 at batch 1 runs ~2x faster with it on a 2-vCPU EPYC).
//
// An entry is used only while the weight's bytes are those it was made from: the entry keeps their
// digest (cpu/weight_digest.h: a universal hash under a per-process random key, for which two
// different weights agree with probability below 2^-124), and every lookup digests the weight again,
// reading its bytes once, in parallel. So every write is seen, however it was made: an optimizer step,
// load_state_dict, copy_ under no_grad, and writes through `.data` or a numpy view, which a version
// counter cannot see. The version counter is no part of the key for that reason; the storage, address,
// shape, strides, dtype and variant are. Until 2026-12-05 the entry kept a copy of the bytes and
// compared them with memcmp, reading twice as much: a converted ResNet-18's eval forward at batch 8
// spent 2.7 of its 27.4 ms comparing on an AMD EPYC Zen 4, and the digest saves 0.9-1.3 ms of that
// (batch 1: 9.0 -> 8.1 ms), and the copy's memory. That comparison is still there for whoever wants
// no chance at all of a missed change: FASTCONV_WEIGHT_CACHE_VERIFY=1, or set_verify(true) (entries
// then keep a copy and each lookup compares it with the weight, as ZFS's dedup "verify" does).
//
// What is cached: CPU weights that do not require grad, dense in memory (any strides without gaps or
// overlap). A weight that requires grad is being trained (it changes every step) or checked by
// gradcheck; such calls build the transform in scratch memory that the next call reuses. CUDA weights
// are never cached: a transform there costs little next to the convolution, and an entry made on one
// stream and read on another, or made during CUDA-graph capture, would need care that buys nothing.
//
// Size: entries count their bytes (the prepared form; the copy too in verify mode) against a budget,
// 2 GiB by default (FASTCONV_WEIGHT_CACHE_MB, or fastconv._C.weight_cache_set_limit(mb); 0 turns the
// cache off). An entry leaves when its weight's storage dies, when it has not been used for a while
// (4 lookups per entry plus 64) and room is needed, or on weight_cache_clear(). When no entry is idle
// enough to make room, the new transform is used uncached: a model too large for the budget keeps
// part of its weights cached instead of evicting them in a cycle (which an LRU does when a model's
// convolutions are called in the same order every forward and do not all fit).
//
// Threads: lookups share a reader lock; the digest and the transform run outside any lock, so
// concurrent inferences do not serialise on the cache.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/intrusive_ptr.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "cpu/weight_digest.h"

namespace fastconv {

struct WeightCacheStats {
  int64_t entries = 0, bytes = 0, limit_bytes = 0, hits = 0, misses = 0, uncached = 0;
  bool verify = false;   // exact comparison with a copy instead of the digest
};

class WeightCache {
 public:
  static WeightCache& instance() {
    static WeightCache cache;
    return cache;
  }

  // Variants: what an entry holds for its weight (every one a distinct number).
  static int64_t winograd(int m, bool transposed) { return m * 2 + (transposed ? 1 : 0); }   // 4, 5, 8, 9
  // The channels-last Winograd passes' U^T in packed-B form (cpu/conv2d_winograd.cpp): 20, 21, 24, 25.
  static int64_t winograd_nhwc(int m, bool transposed) { return 16 + winograd(m, transposed); }
  // im2col's packed filters (cpu/conv2d.cpp), for the forward pass or (transposed) grad_input. The
  // layout depends on the group count as well as the weight's shape (an 8 x 2 x 3 x 3 weight is one
  // 8-row group at groups=1, two 4-row groups at groups=2), so the count is part of the variant.
  static int64_t im2col_filters(bool transposed, int64_t groups) { return 2048 + groups * 2 + (transposed ? 1 : 0); }
  // The channels-last convolution's packed filters (cpu/conv2d_nhwc.cpp): the GEMM's packed-B form of
  // W_g^T (forward) or W_g (grad_input), per group as above; numbered apart from im2col's.
  static int64_t nhwc_filters(bool transposed, int64_t groups) {
    return (int64_t(1) << 40) + groups * 2 + (transposed ? 1 : 0);
  }
  // The bfloat16 direct convolution's filter panels (cpu/conv2d_bf16_direct.cpp): one layout on every
  // ISA, so no for_isa.
  static int64_t bf16_direct_filters() { return 3; }
  // An RNN weight's column-sliced packed-B form (cpu/rnn.cpp): which of W_ih^T, W_hh^T, W_hh, W_hr^T,
  // W_hr (0-4) and the number of slices (one per thread when packed).
  static int64_t rnn_packed(int which, int64_t slices) { return (int64_t(1) << 41) + slices * 8 + which; }
  // The weight cast to another dtype (autocast.cpp): one tensor for as long as the weight's bytes
  // stay the same, so that what is prepared from the cast (a Winograd transform) is cached in turn.
  static int64_t cast_to(at::ScalarType dtype) { return 1000 + static_cast<int64_t>(dtype); }
  // A CPU variant made for one instruction set (the GEMM's packed layout depends on its micro-tile).
  static int64_t for_isa(int64_t variant, int isa) { return variant * 8 + isa; }

  // Whether a transform of `weight` may be kept (see the top of this file); when not, compute() may
  // build it in scratch memory that the next call reuses.
  static bool cacheable(const at::Tensor& weight) {
    return weight.device().is_cpu() && !weight.requires_grad() && weight.is_non_overlapping_and_dense() &&
           weight.numel() > 0;
  }

  // Whether get() may keep a transform of `weight`: cacheable, and the cache not turned off (a
  // compute() that sees false builds in scratch memory, as for a trained weight).
  bool may_keep(const at::Tensor& weight) const { return cacheable(weight) && limit_bytes_.load() > 0; }

  // Whether `weight` in `variant` was asked about before while its storage lived (it has an entry, or
  // an earlier call of this function noted a sighting, as this one does when not). A prepared form is
  // worth keeping when the next call asks for it again; a weight made for one call (the float32 copy
  // of a half-precision RNN weight, fastconv/functional.py) dies first, and keeping its packed form
  // would cost an allocation and a digest per call for nothing. cpu/rnn.cpp asks before get(); the
  // convolutions, whose weights are a module's parameters or casts kept by this cache, do not.
  bool seen_before(const at::Tensor& weight, int64_t variant) {
    std::unique_lock<std::shared_mutex> lock(mu_);
    for (const auto& e : entries_) {
      if (e->matches(weight, variant) && !e->storage.expired()) return true;
    }
    std::vector<Key> keep;
    for (auto& k : sightings_) {
      if (k.storage.expired()) continue;
      if (k.matches(weight, variant)) return true;
      keep.push_back(std::move(k));
    }
    sightings_ = std::move(keep);
    if (sightings_.size() >= kMaxSightings) sightings_.erase(sightings_.begin());
    sightings_.emplace_back(weight, variant);
    return false;
  }

  // Exact comparison (a copy per entry) instead of the digest; changing it empties the cache. Returns
  // the previous setting.
  bool set_verify(bool on) {
    std::unique_lock<std::shared_mutex> lock(mu_);
    const bool before = verify_.exchange(on);
    if (before != on) entries_.clear();
    return before;
  }

  // The prepared form of `weight` in variant `variant`, from the cache or from compute().
  at::Tensor get(const at::Tensor& weight, int64_t variant, const std::function<at::Tensor()>& compute) {
    if (!may_keep(weight)) return compute();
    const uint64_t now = ++clock_;
    std::shared_ptr<Entry> found;
    {
      std::shared_lock<std::shared_mutex> lock(mu_);
      for (const auto& e : entries_) {
        if (e->matches(weight, variant)) {
          found = e;
          break;
        }
      }
    }
    // The weight's bytes are digested (or copied) before compute() reads them, so that an entry never
    // claims newer bytes than those its prepared form was made from. (An entry made in the other mode
    // has neither the copy nor the digest this mode asks for: it misses.)
    const bool exact = verify_.load();
    const cpu::WeightDigest digest = exact ? cpu::WeightDigest{} : digest_of(weight);
    if (found && found->exact == exact && (exact ? same_bytes(found->copy, weight) : found->digest == digest)) {
      found->used.store(now);
      ++hits_;
      return found->u;
    }
    ++misses_;
    at::Tensor copy = exact ? bytes_of(weight) : at::Tensor();
    at::Tensor u = compute();
    auto e = std::make_shared<Entry>(weight, variant, digest, std::move(copy), u, now);
    std::unique_lock<std::shared_mutex> lock(mu_);
    std::vector<std::shared_ptr<Entry>> keep;   // drop entries whose weight died, and the outdated one
    for (auto& old : entries_) {
      if (!old->storage.expired() && !old->matches(weight, variant)) keep.push_back(std::move(old));
    }
    entries_ = std::move(keep);
    if (make_room(e->bytes, now)) {
      entries_.push_back(std::move(e));
    } else {
      ++uncached_;
    }
    return u;
  }

  WeightCacheStats stats() {
    std::shared_lock<std::shared_mutex> lock(mu_);
    WeightCacheStats s;
    s.entries = static_cast<int64_t>(entries_.size());
    for (const auto& e : entries_) s.bytes += e->bytes;
    s.limit_bytes = limit_bytes_.load();
    s.hits = hits_.load();
    s.misses = misses_.load();
    s.uncached = uncached_.load();
    s.verify = verify_.load();
    return s;
  }

  void clear() {
    std::unique_lock<std::shared_mutex> lock(mu_);
    entries_.clear();
    sightings_.clear();
    hits_ = misses_ = uncached_ = 0;
  }

  // The budget in bytes (0: cache nothing); entries beyond it leave now, least recently used first.
  void set_limit(int64_t bytes) {
    std::unique_lock<std::shared_mutex> lock(mu_);
    limit_bytes_ = bytes < 0 ? 0 : bytes;
    while (total_bytes() > limit_bytes_.load()) entries_.erase(entries_.begin() + lru());
  }

 private:
  // What identifies a weight and variant: its storage (weakly held), address, dtype, shape and strides.
  struct Key {
    Key(const at::Tensor& w, int64_t variant_)
        : storage(w.storage().getWeakStorageImpl()),
          variant(variant_),
          data(w.data_ptr()),
          dtype(w.scalar_type()),
          sizes(w.sizes().vec()),
          strides(w.strides().vec()) {}
    bool matches(const at::Tensor& w, int64_t v) const {
      return variant == v && data == w.data_ptr() && dtype == w.scalar_type() &&
             storage._unsafe_get_target() == w.storage().unsafeGetStorageImpl() && sizes == w.sizes() &&
             strides == w.strides();
    }
    c10::weak_intrusive_ptr<c10::StorageImpl> storage;
    int64_t variant;
    const void* data;
    c10::ScalarType dtype;
    std::vector<int64_t> sizes, strides;
  };

  struct Entry : Key {
    Entry(const at::Tensor& w, int64_t variant_, const cpu::WeightDigest& digest_, at::Tensor copy_, at::Tensor u_,
          uint64_t now)
        : Key(w, variant_),
          digest(digest_),
          exact(copy_.defined()),
          copy(std::move(copy_)),
          u(std::move(u_)),
          bytes(static_cast<int64_t>(u.nbytes() + (exact ? copy.nbytes() : 0))),
          used(now) {}
    cpu::WeightDigest digest;   // of the weight's bytes when u was made
    bool exact;                 // made in verify mode: `copy` holds those bytes instead
    at::Tensor copy;
    at::Tensor u;
    int64_t bytes;
    std::atomic<uint64_t> used;
  };

  WeightCache() {
    const char* verify = std::getenv("FASTCONV_WEIGHT_CACHE_VERIFY");
    verify_ = verify != nullptr && verify[0] == '1';
    const char* mb = std::getenv("FASTCONV_WEIGHT_CACHE_MB");
    limit_bytes_ = (mb != nullptr ? std::atoll(mb) : int64_t(2048)) << 20;
  }

  // A dense tensor's elements are the bytes [data, data + nbytes) in some order, the same order for
  // the same strides: the digest of those bytes is one of the values (NaN payloads included).
  static int64_t span(const at::Tensor& w) { return w.numel() * static_cast<int64_t>(w.element_size()); }
  static cpu::WeightDigest digest_of(const at::Tensor& w) { return cpu::weight_digest(w.data_ptr(), span(w)); }
  static at::Tensor bytes_of(const at::Tensor& w) {
    at::Tensor copy = at::empty({span(w)}, at::TensorOptions().dtype(at::kByte));
    std::memcpy(copy.data_ptr(), w.data_ptr(), static_cast<size_t>(span(w)));
    return copy;
  }
  static bool same_bytes(const at::Tensor& copy, const at::Tensor& w) {   // a parallel memcmp
    const int64_t n = span(w);
    if (copy.numel() != n) return false;
    const char* a = static_cast<const char*>(copy.data_ptr());
    const char* b = static_cast<const char*>(w.data_ptr());
    std::atomic<bool> same{true};
    at::parallel_for(0, n, int64_t(1) << 20, [&](int64_t i0, int64_t i1) {
      if (same.load(std::memory_order_relaxed) && std::memcmp(a + i0, b + i0, static_cast<size_t>(i1 - i0)) != 0) {
        same = false;
      }
    });
    return same.load();
  }

  int64_t total_bytes() const {
    int64_t b = 0;
    for (const auto& e : entries_) b += e->bytes;
    return b;
  }
  std::ptrdiff_t lru() const {
    size_t oldest = 0;
    for (size_t i = 1; i < entries_.size(); ++i) {
      if (entries_[i]->used.load() < entries_[oldest]->used.load()) oldest = i;
    }
    return static_cast<std::ptrdiff_t>(oldest);
  }
  // Evicts idle entries, least recently used first, until `bytes` more fit; false when they cannot.
  bool make_room(int64_t bytes, uint64_t now) {
    const int64_t limit = limit_bytes_.load();
    if (bytes > limit) return false;
    int64_t total = total_bytes();
    while (total + bytes > limit && !entries_.empty()) {
      const std::ptrdiff_t i = lru();
      const uint64_t idle_after = 4 * entries_.size() + 64;
      if (now - entries_[static_cast<size_t>(i)]->used.load() <= idle_after) return false;
      total -= entries_[static_cast<size_t>(i)]->bytes;
      entries_.erase(entries_.begin() + i);
    }
    return total + bytes <= limit;
  }

  std::shared_mutex mu_;
  std::vector<std::shared_ptr<Entry>> entries_;
  static constexpr size_t kMaxSightings = 256;   // the oldest sighting goes first beyond this
  std::vector<Key> sightings_;                  // seen_before's notes, weights without an entry yet
  std::atomic<int64_t> limit_bytes_{0};
  std::atomic<bool> verify_{false};
  std::atomic<int64_t> hits_{0}, misses_{0}, uncached_{0};
  std::atomic<uint64_t> clock_{0};
};

}  // namespace fastconv
