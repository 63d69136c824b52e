#pragma once
// Shared helpers for the test suites.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "core/philox.h"
#include "core/tensor.h"

namespace natsl::testing {

// Skips the current test when no GPU is present (the CPU-only CI machine), saying so.
#define NATSL_REQUIRE_GPU()                                                          \
  do {                                                                               \
    if (!::natsl::cuda_available()) GTEST_SKIP() << "no CUDA GPU on this machine";   \
  } while (0)

// A tensor of the given shape filled with N(0, std) (or U(lo, hi)) from a fixed seed, on the CPU.
inline Tensor randn(const Shape& s, uint64_t seed, DType dt = DType::f64, double std = 1.0) {
  Tensor t = Tensor::empty(s, dt);
  Generator g(seed);
  normal_(t, g, 0.0, std);
  return t;
}
inline Tensor rand_uniform(const Shape& s, uint64_t seed, double lo, double hi, DType dt = DType::f64) {
  Tensor t = Tensor::empty(s, dt);
  Generator g(seed);
  uniform_(t, g, lo, hi);
  return t;
}

// Fills a tensor with NaN so that any element a kernel forgets to write fails the comparison.
inline void poison(Tensor& t) { t.fill_(std::numeric_limits<double>::quiet_NaN()); }

// max |a - b| and relative RMS error ||a - b|| / ||b|| over all elements (computed in double on host).
struct ErrorStats {
  double max_abs = 0, rel_rms = 0;
  bool finite = true;
};
inline ErrorStats compare(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  auto va = a.to_vector<double>();
  auto vb = b.to_vector<double>();
  ErrorStats s;
  double num = 0, den = 0;
  for (size_t i = 0; i < va.size() && i < vb.size(); ++i) {
    if (!std::isfinite(va[i]) || !std::isfinite(vb[i])) s.finite = false;
    double d = va[i] - vb[i];
    s.max_abs = std::max(s.max_abs, std::abs(d));
    num += d * d;
    den += vb[i] * vb[i];
  }
  s.rel_rms = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  return s;
}

#define EXPECT_CLOSE(a, b, rtol_rms, atol_max)                                                       \
  do {                                                                                               \
    auto natsl_s_ = ::natsl::testing::compare((a), (b));                                              \
    EXPECT_TRUE(natsl_s_.finite) << "non-finite values (unwritten output?)";                         \
    EXPECT_LE(natsl_s_.rel_rms, (rtol_rms)) << "relative RMS error";                                 \
    EXPECT_LE(natsl_s_.max_abs, (atol_max)) << "max abs error";                                      \
  } while (0)

}  // namespace natsl::testing
