// Private helpers of src/data: fully specified, platform-independent pseudo-random numbers
// (SplitMix64, Steele et al. 2014) and a 64-bit FNV-1a hash. The standard library's
// distributions and std::shuffle are implementation-defined, so the data pipeline never uses
// them where a result must be reproducible.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace xmoe::data_detail {

/// One SplitMix64 output for state `x` (a bijective 64-bit mixer).
inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

/// Derives an independent seed from a seed and a tag/counter: mix(mix(s, a), b) chains.
inline uint64_t mix_seed(uint64_t seed, uint64_t value) {
  return splitmix64(seed ^ splitmix64(value + 0x632BE59BD9B4E019ULL));
}

/// A uniform double in [0, 1) from the top 53 bits of `bits`.
inline double unit_double(uint64_t bits) {
  return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);  // 2^-53
}

/// A SplitMix64 stream.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}

  uint64_t next() {
    state_ += 0x9E3779B97F4A7C15ULL;
    uint64_t z = state_;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }

  /// Uniform integer in [0, n), n >= 1, without modulo bias (rejection sampling).
  uint64_t below(uint64_t n) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;  // a multiple of n
    uint64_t x = next();
    while (x >= limit) x = next();
    return x % n;
  }

 private:
  uint64_t state_;
};

/// A uniformly random permutation of 0..n-1 (Fisher-Yates driven by SplitMix64(seed)).
inline std::vector<int64_t> seeded_permutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  SplitMix64 rng(seed);
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(i) + 1));
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
  }
  return order;
}

/// 64-bit FNV-1a, continuing from `hash` (start with kFnvOffset).
constexpr uint64_t kFnvOffset = 0xCBF29CE484222325ULL;
inline uint64_t fnv1a(const void* data, size_t size, uint64_t hash = kFnvOffset) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size; ++i) {
    hash ^= bytes[i];
    hash *= 0x100000001B3ULL;
  }
  return hash;
}
inline uint64_t fnv1a(const std::string& s, uint64_t hash = kFnvOffset) {
  return fnv1a(s.data(), s.size(), hash);
}

}  // namespace xmoe::data_detail
