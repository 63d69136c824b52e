#pragma once
// Helpers shared by the op tests: random leaves, gradcheck expectations, host access to values.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <vector>

#include "autograd/gradcheck.h"
#include "tests/test_util.h"

namespace natsl::testing {

// A contiguous f64 CPU leaf requiring grad, uniform in [lo, hi).
inline Tensor leaf(const Shape& s, uint64_t seed, double lo = -1, double hi = 1) {
  return rand_uniform(s, seed, lo, hi).set_requires_grad(true);
}

inline void expect_gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                             const std::vector<Tensor>& in, const char* what) {
  GradcheckResult r = gradcheck(f, in);
  EXPECT_TRUE(r.ok) << what << ": " << r.message;
}

// An empty tensor filled with NaN, for kernel outputs.
inline Tensor poisoned(const Shape& s, DType dt = DType::f64) {
  Tensor t = Tensor::empty(s, dt);
  poison(t);
  return t;
}

inline std::vector<double> host(const Tensor& t) { return t.to_vector<double>(); }

// Every element finite: a kernel wrote all of a poisoned output.
inline void expect_all_finite(const Tensor& t, const char* what) {
  auto v = host(t);
  for (size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(v[i])) {
      ADD_FAILURE() << what << ": element " << i << " is " << v[i];
      return;
    }
}

// Random token ids in [0, vocab).
inline Tensor random_ids(const Shape& s, int64_t vocab, uint64_t seed, DType dt = DType::i64) {
  Tensor u = rand_uniform(s, seed, 0.0, double(vocab));
  std::vector<int64_t> ids;
  for (double v : host(u)) ids.push_back(std::min<int64_t>(int64_t(v), vocab - 1));
  return Tensor::from_vector(ids, s, dt);
}

}  // namespace natsl::testing
