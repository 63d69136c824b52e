#pragma once
// gradcheck: compares the analytic backward of f with central finite differences, in f64 on the CPU.
#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace natsl {

struct GradcheckOptions {
  double eps = 1e-6;   // finite-difference step
  double atol = 1e-7;  // |analytic - numeric| <= atol + rtol * |numeric|
  double rtol = 1e-5;
  uint64_t seed = 1234;  // for the random projection of non-scalar outputs
};

struct GradcheckResult {
  bool ok = true;
  double max_abs_err = 0;
  std::string message;  // first failing element, when !ok
};

// f maps the inputs to one tensor. Its output is reduced to a scalar L = sum(out * R) with a fixed random R,
// so every output element matters. Each input that requires grad (f64, CPU) is checked element by element.
GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                          const std::vector<Tensor>& inputs, const GradcheckOptions& opt = {});

}  // namespace natsl
