#pragma once
// A sequential stream of random numbers for data generation, keyed by (seed, step, row): each key selects
// an independent Philox4x32-10 stream (key = a 64-bit mix of the three), read word by word from counter 0.
// So every example of every step and rank is reproducible on its own, in any order, on any machine.
#include <cstdint>

#include "core/philox.h"

namespace natsl {

// SplitMix64's finaliser: a bijective 64-bit mix (Steele, Lea, Flood, "Fast splittable pseudorandom
// number generators", OOPSLA'14).
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// `domain` separates generators that may share a seed (loader, MQAR, NIAH).
inline uint64_t example_key(uint64_t seed, uint64_t domain, int64_t step, int64_t row) {
  uint64_t k = mix64(seed ^ mix64(domain));
  k = mix64(k ^ uint64_t(step));
  return mix64(k ^ (uint64_t(row) * 0x9E3779B97F4A7C15ull));
}

class RandomStream {
 public:
  explicit RandomStream(uint64_t key) : key_(key) {}
  uint32_t next_u32() {
    if ((n_ & 3) == 0) block_ = philox4x32_10(key_, n_ >> 2);
    return block_.w[n_++ & 3];
  }
  uint64_t next_u64() {
    uint64_t hi = next_u32();
    return hi << 32 | next_u32();
  }
  // Uniform integer in [0, n), n > 0: Lemire's multiply-shift on 64 bits (bias below n / 2^64).
  uint64_t below(uint64_t n) { return uint64_t((unsigned __int128)next_u64() * n >> 64); }
  // Uniform in (0, 1) with 53 random bits, never 0 (safe for log).
  double uniform() { return (double(next_u64() >> 11) + 0.5) * 0x1.0p-53; }

 private:
  uint64_t key_;
  uint64_t n_ = 0;
  PhiloxWords block_{};
};

}  // namespace natsl
