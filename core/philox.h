#pragma once
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), counter based:
// the numbers depend only on (seed, offset), so the CPU and any CUDA thread produce the same stream.
//
// The stream of a seed is the sequence of 32-bit words w_j = philox(key = seed, counter = (j / 4, 0))[j % 4].
// A draw "at offset o" reads words o, o+1, ... Uniforms are (w >> 8) * 2^-24 + 2^-25 in (0, 1); normals come
// from Box-Muller on word pairs (2m, 2m+1), evaluated in double so CPU and GPU round to the same float.
#include <cmath>
#include <cstdint>

#include "core/dtype.h"

namespace natsl {

struct PhiloxWords {
  uint32_t w[4];
};

NATSL_HD uint32_t philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  uint64_t p = uint64_t(a) * uint64_t(b);
  *hi = uint32_t(p >> 32);
  return uint32_t(p);
}

// The full block function: 4 counter words, 2 key words (Random123's philox4x32_10).
NATSL_HD PhiloxWords philox4x32_10_block(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                         uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, hi1;
    uint32_t lo0 = philox_mulhilo(0xD2511F53u, c0, &hi0);
    uint32_t lo1 = philox_mulhilo(0xCD9E8D57u, c2, &hi1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return PhiloxWords{{c0, c1, c2, c3}};
}

// natsl's use: key = seed, counter = (block index, 0).
NATSL_HD PhiloxWords philox4x32_10(uint64_t seed, uint64_t counter) {
  return philox4x32_10_block(uint32_t(counter), uint32_t(counter >> 32), 0, 0, uint32_t(seed), uint32_t(seed >> 32));
}

NATSL_HD uint32_t philox_word(uint64_t seed, uint64_t j) { return philox4x32_10(seed, j >> 2).w[j & 3]; }

NATSL_HD float philox_uniform(uint64_t seed, uint64_t j) {
  return float(philox_word(seed, j) >> 8) * 5.9604644775390625e-08f + 2.98023223876953125e-08f;
}

// The k-th normal of the stream starting at `offset`: pair m = k / 2 uses words offset + 2m, offset + 2m + 1.
NATSL_HD float philox_normal(uint64_t seed, uint64_t offset, uint64_t k) {
  uint64_t m = k >> 1;
  double u1 = double(philox_uniform(seed, offset + 2 * m));
  double u2 = double(philox_uniform(seed, offset + 2 * m + 1));
  double r = ::sqrt(-2.0 * ::log(u1));
  double a = 6.283185307179586 * u2;
  return float((k & 1) ? r * ::sin(a) : r * ::cos(a));
}

// A generator: a seed and the next unused word. Each draw of n values advances the offset by a whole
// number of 4-word blocks, so different draws never share a Philox block.
struct Generator {
  uint64_t seed = 0;
  uint64_t offset = 0;
  explicit Generator(uint64_t s = 0, uint64_t o = 0) : seed(s), offset(o) {}
  // Reserves `words` words and returns the offset of the first one.
  uint64_t reserve(uint64_t words) {
    uint64_t o = offset;
    offset += (words + 3) / 4 * 4;
    return o;
  }
};

class Tensor;
// Fill a floating tensor (contiguous) from the generator, on its device. Advances the generator.
void uniform_(Tensor& t, Generator& g, double lo = 0.0, double hi = 1.0);
void normal_(Tensor& t, Generator& g, double mean = 0.0, double std = 1.0);
// Raw words (u32 stored in an i32/i64/u8 tensor is not offered: keep it simple) - i32 tensor of raw bits.
void random_bits_(Tensor& t, Generator& g);

}  // namespace natsl
