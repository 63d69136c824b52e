#pragma once
// Helpers for the gradient-sink tests (autograd/engine.h grad_sink / input_grad_sink, autograd/function.h
// weight_grad_sink): a parameter whose .grad is preset to a view into a buffer (as the parameter store sets it up),
// the reference bits of the plain path (a fresh gradient, then AccumulateGrad's add into the preset values), and a
// check that an op's node really handed the sink back (a check that the bits alone cannot make: the sink is meant to
// give the plain path's bits).
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "autograd/function.h"
#include "kernels/elementwise.h"
#include "tests/test_util.h"

namespace natsl::testing {

// A parameter (a leaf that requires grad) of `value`'s values and dtype, whose .grad is a [value's shape] view at
// element 3 of a buffer in `grad_dtype`: the view holds random values (the gradient of earlier micro-batches), the
// three elements either side hold `kSentinel`.
struct PresetGrad {
  static constexpr double kSentinel = 0.25;
  Tensor param, buffer, grad;
  Tensor prior;  // a copy of the preset values
};

inline PresetGrad with_preset_grad(const Tensor& value, DType grad_dtype, uint64_t seed) {
  PresetGrad p;
  const int64_t n = value.numel();
  p.buffer = Tensor::full({n + 6}, PresetGrad::kSentinel, grad_dtype);
  p.grad = p.buffer.slice(0, 3, 3 + n).view(value.shape());
  p.grad.copy_(randn(value.shape(), seed, DType::f64, 0.5).to(grad_dtype));
  p.prior = p.grad.clone();
  p.param = value.detach().clone().set_requires_grad(true);
  p.param.set_grad(p.grad);
  return p;
}

// The bits of AccumulateGrad's add of a fresh gradient g into a copy of `prior` (g widened to prior's dtype first).
inline Tensor accumulated(const Tensor& prior, const Tensor& g) {
  Tensor out = prior.clone();
  kernels::binary_fwd(kernels::BinaryOp::Add, out, g.dtype() == out.dtype() ? g : g.to(out.dtype()), out);
  return out;
}

inline void expect_bits(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  const Tensor a = got.contiguous(), b = want.contiguous();
  EXPECT_EQ(0, std::memcmp(a.data_ptr(), b.data_ptr(), size_t(a.nbytes()))) << what << ": bits differ";
}

// After the backward: .grad is still the preset view (nothing replaced it), it holds `want`'s bits, and the buffer
// around it was not written.
inline void expect_preset_grad(const PresetGrad& p, const Tensor& want, const std::string& what) {
  EXPECT_TRUE(p.param.grad().same(p.grad)) << what << ": .grad is no longer the preset view";
  expect_bits(p.grad, want, what + " .grad");
  const std::vector<double> all = p.buffer.to_vector<double>();
  for (size_t i : {size_t(0), size_t(1), size_t(2), all.size() - 3, all.size() - 2, all.size() - 1})
    EXPECT_EQ(all[i], PresetGrad::kSentinel) << what << ": buffer element " << i << " outside the view changed";
}

// Runs the backward of the node that made `out` (with dL/dout = `dout`) inside a plain backward, where the engine
// hands out sinks, and returns the node's input gradients: input k's is the parameter's .grad itself exactly when
// the op added its gradient there (engine.h, grad_sink). The node's backward runs for real (the sink's values
// change); use a forward of its own.
inline std::vector<Tensor> node_gradients_in_backward(const Tensor& out, const Tensor& dout) {
  std::shared_ptr<Node> node = out.grad_fn();
  EXPECT_TRUE(node != nullptr) << "the output has no node";
  std::vector<Tensor> result;
  if (!node) return result;
  // A scalar leaf and a node over it whose backward applies `node`: its backward runs inside run_backward.
  Tensor t = Tensor::zeros({}, DType::f64).set_requires_grad(true);
  Tensor y = t.detach().clone();
  record("apply_probe", {t}, {&y}, [&](std::vector<Tensor>& g) -> std::vector<Tensor> {
    std::vector<Tensor> grads{dout};
    result = node->apply(grads);
    return {g[0]};
  });
  y.backward();
  return result;
}

}  // namespace natsl::testing
