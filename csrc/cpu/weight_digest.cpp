// weight_digest.h: the key, the portable NH sums, the polynomials modulo 2^61 - 1 and the parallel
// driver.
#include "cpu/weight_digest.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/isa.h"

namespace fastconv::cpu {
namespace {

// Chunks per segment (1 MiB): the unit of parallel work, whose polynomials are joined in order.
constexpr int64_t kSegmentChunks = 256;

uint64_t add_mod(uint64_t a, uint64_t b) {   // a, b < p
  const uint64_t s = a + b;
  return s >= kDigestPrime ? s - kDigestPrime : s;
}

uint64_t mul_mod(uint64_t a, uint64_t b) {   // a, b < p: 2^61 = 1 (mod p), so fold the bits above 61 down
  const unsigned __int128 x = static_cast<unsigned __int128>(a) * b;
  return add_mod(static_cast<uint64_t>(x) & kDigestPrime, static_cast<uint64_t>(x >> 61));
}

uint64_t pow_mod(uint64_t r, int64_t e) {
  uint64_t result = 1;
  for (; e > 0; e >>= 1, r = mul_mod(r, r)) {
    if (e & 1) result = mul_mod(result, r);
  }
  return result;
}

// Horner's step for one chunk's NH sums: y = (y r + low half) r + high half, per stream.
void absorb(WeightDigest& d, const uint64_t* nh, const DigestKey& key) {
  for (int s = 0; s < kDigestStreams; ++s) {
    d.y[s] = add_mod(mul_mod(d.y[s], key.r[s]), nh[s] & 0xffffffffu);
    d.y[s] = add_mod(mul_mod(d.y[s], key.r[s]), nh[s] >> 32);
  }
}

// NH of one chunk of `bytes` <= kDigestChunkBytes bytes, pair by pair (any length: the last word padded
// with zero bytes, a lone last word paired with a zero word). The pairs whose 8 bytes are all there
// are read in place; only a last, incomplete one goes through a zeroed pair.
void nh_portable(const unsigned char* data, int64_t bytes, const uint32_t* key, uint64_t* out) {
  const int64_t whole = bytes / 8, pairs = (bytes + 7) / 8;
  uint32_t last[2] = {0, 0};
  std::memcpy(last, data + 8 * whole, static_cast<size_t>(bytes - 8 * whole));
  for (int s = 0; s < kDigestStreams; ++s) {
    uint64_t sum = 0;
    for (int64_t i = 0; i < pairs; ++i) {
      uint32_t m[2];
      if (i < whole) {
        std::memcpy(m, data + 8 * i, 8);
      } else {
        m[0] = last[0];
        m[1] = last[1];
      }
      const uint32_t a = m[0] + key[2 * s + 2 * i], b = m[1] + key[2 * s + 2 * i + 1];
      sum += static_cast<uint64_t>(a) * b;
    }
    out[s] = sum;
  }
}

void nh_chunks_portable(const unsigned char* data, int64_t chunks, const uint32_t* key, uint64_t* out) {
  for (int64_t c = 0; c < chunks; ++c) {
    nh_portable(data + c * kDigestChunkBytes, kDigestChunkBytes, key, out + c * kDigestStreams);
  }
}

const DigestFns digest_portable{nh_chunks_portable};

}  // namespace

const DigestKey& digest_key() {
  static const DigestKey key = [] {
    DigestKey k{};
    std::random_device rd;
    for (uint32_t& w : k.k) w = static_cast<uint32_t>(rd());
    for (uint64_t& r : k.r) {
      do {
        r = ((static_cast<uint64_t>(rd()) << 32) | rd()) & kDigestPrime;
      } while (r == 0 || r == kDigestPrime);
    }
    return k;
  }();
  return key;
}

WeightDigest weight_digest(const void* data, int64_t bytes) {
  const DigestKey& key = digest_key();
  const DigestFns& fns = for_active_isa(digest_avx512, digest_avx2, digest_portable);
  const auto* p = static_cast<const unsigned char*>(data);
  const int64_t whole = bytes / kDigestChunkBytes, segments = (whole + kSegmentChunks - 1) / kSegmentChunks;
  std::vector<WeightDigest> part(static_cast<size_t>(segments));   // each segment's polynomials from y = 0
  const auto run = [&](int64_t s0, int64_t s1) {
    std::vector<uint64_t> nh(static_cast<size_t>(kSegmentChunks * kDigestStreams));
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t c0 = s * kSegmentChunks, n = std::min(kSegmentChunks, whole - c0);
      fns.nh_chunks(p + c0 * kDigestChunkBytes, n, key.k, nh.data());
      for (int64_t c = 0; c < n; ++c) absorb(part[s], nh.data() + c * kDigestStreams, key);
    }
  };
  if (segments > 1 && !at::in_parallel_region()) {
    at::parallel_for(0, segments, 1, run);
  } else {
    run(0, segments);
  }
  // Joined in order: a segment of n chunks adds 2n elements, so what came before is multiplied by r^2n.
  WeightDigest d;
  for (int64_t s = 0; s < segments; ++s) {
    const int64_t n = std::min(kSegmentChunks, whole - s * kSegmentChunks);
    for (int t = 0; t < kDigestStreams; ++t) {
      d.y[t] = add_mod(mul_mod(d.y[t], pow_mod(key.r[t], 2 * n)), part[s].y[t]);
    }
  }
  if (const int64_t rest = bytes - whole * kDigestChunkBytes; rest > 0) {   // the shorter last chunk
    uint64_t nh[kDigestStreams];
    nh_portable(p + whole * kDigestChunkBytes, rest, key.k, nh);
    absorb(d, nh, key);
  }
  for (int t = 0; t < kDigestStreams; ++t) {   // the length last
    d.y[t] = add_mod(mul_mod(d.y[t], key.r[t]), static_cast<uint64_t>(bytes) % kDigestPrime);
  }
  return d;
}

}  // namespace fastconv::cpu
