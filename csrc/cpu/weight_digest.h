// A digest of a weight's bytes, by which the weight cache (common/weight_cache.h) tells whether a weight
// changed since its prepared form was made: reading the weight once, where comparing it with a kept copy
// read twice its bytes (and kept a copy).
//
// The digest is a Carter-Wegman universal hash under a key drawn once per process (std::random_device),
// so that no weight can be made to collide except by chance: for two different byte strings of the
// same length, the chance over the key that their digests agree is below 2^-120.
//
//   1. The bytes, as little-endian 32-bit words (the last one padded with zero bytes), in chunks of
//      kDigestChunkWords words (4 KiB; the last chunk may be shorter). A chunk's words m_0, m_1, ...
//      go in pairs (a lone last word paired with a zero word).
//   2. Per chunk, four NH sums (UMAC's inner hash; Black et al., 1999), stream s = 0..3 keyed by
//      K shifted 2s words ("Toeplitz"):
//        NH_s = sum over pairs i of ((m_2i + K_{2s+2i}) mod 2^32) * ((m_2i+1 + K_{2s+2i+1}) mod 2^32)  mod 2^64.
//      NH with 32-bit words is 2^-32-almost-universal, four Toeplitz streams 2^-128.
//   3. Per stream, a polynomial over GF(p), p = 2^61 - 1, at a random point r_s: Horner's y = y r_s + e
//      over each chunk's NH_s split into its low and high 32-bit halves (low first), from y = 0, then
//      once more with e = the byte count. Two different sequences of E elements agree with
//      probability at most (E + 1) / p over r_s.
//   So for digests of different strings to agree, each stream must either collide on NH in every
//   differing chunk (for any k of the streams together < 2^-32k: Toeplitz NH) or, its NH sequence
//   differing, agree by chance in its polynomial (<= (E + 1) / p, under 2^-32 for strings of up to
//   2^40 bytes, r_s drawn independently of K): summed over the 16 ways to split the streams between
//   the two, under 16 * 2^-128 = 2^-124.
//
// The NH sums are the work (a multiply of two 32-bit halves per 8 bytes and stream, vectorised per ISA:
// weight_digest_avx2.cpp, weight_digest_avx512.cpp); the polynomials take 8 products modulo p per 4 KiB.
// The result depends neither on the ISA nor on the thread count: the chunks are summed in segments of a
// fixed size, and the segments' polynomials joined in order.
#pragma once

#include <cstdint>

namespace fastconv::cpu {

constexpr int64_t kDigestChunkWords = 1024;
constexpr int64_t kDigestChunkBytes = kDigestChunkWords * 4;
constexpr int kDigestStreams = 4;
constexpr uint64_t kDigestPrime = (uint64_t(1) << 61) - 1;

struct WeightDigest {
  uint64_t y[kDigestStreams] = {0, 0, 0, 0};
  bool operator==(const WeightDigest& o) const {
    return y[0] == o.y[0] && y[1] == o.y[1] && y[2] == o.y[2] && y[3] == o.y[3];
  }
  bool operator!=(const WeightDigest& o) const { return !(*this == o); }
};

// The digest of the `bytes` bytes at `data`, on torch's threads (in parallel outside a parallel region).
WeightDigest weight_digest(const void* data, int64_t bytes);

// The process's key: the NH key words K (kDigestChunkWords + 2 (kDigestStreams - 1) of them) and the
// polynomials' points r_s (in [1, p - 1]); for the tests' reference implementation.
struct DigestKey {
  uint32_t k[kDigestChunkWords + 2 * (kDigestStreams - 1)];
  uint64_t r[kDigestStreams];
};
const DigestKey& digest_key();

// The per-ISA kernel: out[kDigestStreams c + s] = NH_s of the c-th whole chunk at `data`, for c < chunks.
struct DigestFns {
  void (*nh_chunks)(const unsigned char* data, int64_t chunks, const uint32_t* key, uint64_t* out);
};
extern const DigestFns digest_avx512, digest_avx2;

}  // namespace fastconv::cpu
