#pragma once
// Helpers for the CUDA kernel tests. The pattern of every test:
//   1. draw random inputs in f64 on the CPU and round them to the tested dtype (f32 or bf16): `q`;
//   2. the oracle is the CPU reference (kernels::cpu::*) run in f64 on those rounded values, so the
//      rounding of the inputs is not counted as kernel error;
//   3. the GPU kernel runs on device copies of the rounded values, into outputs poisoned with NaN;
//   4. expect_match compares the GPU output with the oracle and, on failure, says which element is
//      worst, its value and the oracle's, and the first non-finite element (an unwritten output).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "core/philox.h"
#include "core/tensor.h"
#include "tests/test_util.h"

namespace natsl::testing {

inline Device gpu() { return Device::cuda(0); }

// Rounds an f64 CPU tensor to dt (still on the CPU).
inline Tensor q(const Tensor& t, DType dt) { return t.to(dt); }
// f64 CPU copy of any tensor (the oracle's input).
inline Tensor f64(const Tensor& t) { return t.to(kCPU).to(DType::f64); }
inline Tensor to_gpu(const Tensor& t) { return t.to(gpu()); }

inline Tensor gpu_poisoned(const Shape& s, DType dt) {
  Tensor t = Tensor::empty(s, dt, gpu());
  poison(t);
  return t;
}
inline Tensor cpu_poisoned(const Shape& s, DType dt = DType::f64) {
  Tensor t = Tensor::empty(s, dt);
  poison(t);
  return t;
}

// Tolerances of a comparison: relative RMS error ||got - ref|| / ||ref||, and the largest error relative
// to the largest |ref| (so one bad element in a large tensor still fails).
struct Tol {
  double rms, max;
};
// f32 kernels against the f64 oracle: f32 arithmetic (sums of up to ~1e5 terms) lands near 1e-6; a
// wrong index, a missed element or TF32 arithmetic (~1e-3) lands far above 1e-5.
inline constexpr Tol kF32{1e-5, 1e-4};
// bf16 outputs: one bf16 rounding (2^-9 relative) of each stored value on top of f32 arithmetic.
inline constexpr Tol kBf16{6e-3, 1.2e-2};
inline Tol tol_for(DType dt) { return dt == DType::bf16 ? kBf16 : kF32; }

inline std::string dtype_str(DType dt) { return std::string(dtype_name(dt)); }

// Compares got (any device/dtype) with ref (the f64 oracle); `what` names the op, dtype and shape.
// `term_scale` (optional) is the magnitude of the terms the result is a difference of: where the exact result
// cancels to far below them (a backward through a norm or softmax), f32 rounding of those terms is measured
// against term_scale rather than against the tiny result.
inline void expect_match(const Tensor& got, const Tensor& ref, Tol tol, const std::string& what,
                         double term_scale = 0.0) {
  ASSERT_EQ(got.numel(), ref.numel()) << what << ": sizes differ";
  const std::vector<double> g = got.contiguous().to(kCPU).to_vector<double>();
  const std::vector<double> r = ref.contiguous().to_vector<double>();
  double num = 0, den = 0, ref_max = 0, worst = 0;
  bool worst_nan = false;
  size_t worst_i = 0, first_bad = g.size();
  for (size_t i = 0; i < g.size(); ++i) {
    if (!std::isfinite(g[i]) && std::isfinite(r[i]) && first_bad == g.size()) first_bad = i;
    const double d = std::abs(g[i] - r[i]);
    num += d * d;
    den += r[i] * r[i];
    ref_max = std::max(ref_max, std::abs(r[i]));
    if (std::isnan(d)) {
      if (!worst_nan) worst_i = i;
      worst_nan = true;
    } else if (!worst_nan && d > worst) {
      worst = d;
      worst_i = i;
    }
  }
  if (worst_nan) worst = std::numeric_limits<double>::quiet_NaN();
  den = std::max(den, double(g.size()) * term_scale * term_scale);
  ref_max = std::max(ref_max, term_scale);
  const double rms = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  const double max_rel = ref_max > 0 ? worst / ref_max : worst;
  std::ostringstream os;
  os << what << " [" << shape_str(got.shape()) << ", " << g.size() << " elements]: rel RMS " << rms << " (tol "
     << tol.rms << "), max err " << worst << " at " << worst_i << " = " << max_rel << " of max|ref| " << ref_max
     << " (tol " << tol.max << "); got " << (g.empty() ? 0.0 : g[worst_i]) << " want "
     << (r.empty() ? 0.0 : r[worst_i]);
  if (first_bad < g.size()) os << "; first non-finite output at " << first_bad << " (unwritten?)";
  EXPECT_TRUE(first_bad == g.size()) << os.str();
  EXPECT_LE(rms, tol.rms) << os.str();
  EXPECT_LE(max_rel, tol.max) << os.str();
}

// max |t| over all elements (host copy).
inline double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.contiguous().to(kCPU).to_vector<double>()) m = std::max(m, std::abs(v));
  return m;
}

// Bitwise equality of two tensors' bytes (determinism checks).
inline void expect_same_bits(const Tensor& a, const Tensor& b, const std::string& what) {
  ASSERT_EQ(a.nbytes(), b.nbytes()) << what;
  const Tensor ha = a.to(kCPU), hb = b.to(kCPU);
  const auto* pa = static_cast<const unsigned char*>(ha.data_ptr());
  const auto* pb = static_cast<const unsigned char*>(hb.data_ptr());
  size_t diff = 0, first = 0;
  for (size_t i = 0; i < a.nbytes(); ++i)
    if (pa[i] != pb[i] && diff++ == 0) first = i;
  EXPECT_EQ(diff, 0u) << what << ": " << diff << " bytes differ between two runs, first at byte " << first;
}

inline std::string case_name(const char* op, DType dt, const Shape& s) {
  return std::string(op) + " " + dtype_str(dt) + " " + shape_str(s);
}

// Random ids in [0, vocab) as an i32 or i64 CPU tensor.
inline Tensor random_token_ids(const Shape& s, int64_t vocab, uint64_t seed, DType dt) {
  Tensor u = rand_uniform(s, seed, 0.0, double(vocab));
  std::vector<int64_t> ids;
  for (double v : u.to_vector<double>()) ids.push_back(std::min<int64_t>(int64_t(v), vocab - 1));
  return Tensor::from_vector(ids, s, dt);
}

}  // namespace natsl::testing
