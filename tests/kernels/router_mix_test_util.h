#pragma once
// Helpers shared by the CUDA cases of the router and the output-mixing kernel tests (router_test.cpp,
// mix_norm_gate_test.cpp): poisoned outputs, random inputs rounded to a dtype with their f64 copy, and the
// relative-RMS comparison against the f64 CPU reference.
#include <gtest/gtest.h>

#include <string>

#include "core/tensor.h"
#include "tests/test_util.h"

namespace natsl::testing::router_mix {

inline const Device kGpu = Device::cuda(0);

inline Tensor poisoned(const Shape& s, DType dt, Device d) {
  Tensor t = Tensor::empty(s, dt, d);
  poison(t);
  return t;
}
// Random data rounded to dt (CPU), and the same values in f64 for the reference.
struct Data {
  Tensor low, f64;
};
inline Data make(const Shape& s, uint64_t seed, DType dt, double std = 1.0, double shift = 0.0) {
  Tensor r = randn(s, seed, DType::f64, std);
  if (shift != 0) {
    double* p = r.data<double>();
    for (int64_t i = 0; i < r.numel(); ++i) p[i] += shift;
  }
  Tensor low = r.to(dt);
  return {low, low.to(DType::f64)};
}

inline double tol_for(DType dt) { return dt == DType::bf16 ? 1e-2 : 2e-6; }

inline void expect_close(const Tensor& gpu, const Tensor& ref, double rel, const std::string& what) {
  SCOPED_TRACE(what);
  const ErrorStats e = compare(gpu.to(kCPU).to(DType::f64), ref);
  EXPECT_TRUE(e.finite) << "non-finite values (unwritten output?)";
  EXPECT_LE(e.rel_rms, rel);
}

inline const char* name(DType dt) { return dt == DType::bf16 ? "bf16" : "f32"; }

}  // namespace natsl::testing::router_mix
