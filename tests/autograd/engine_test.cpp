#include <gtest/gtest.h>

#include <cstring>
#include <map>

#include "autograd/engine.h"
#include "autograd/gradcheck.h"
#include "autograd/function.h"
#include "autograd/ops.h"
#include "kernels/matmul.h"
#include "tests/test_util.h"

using namespace natsl;
using natsl::testing::randn;

namespace {
Tensor leaf(const Shape& s, uint64_t seed, double lo = -1, double hi = 1) {
  return natsl::testing::rand_uniform(s, seed, lo, hi).set_requires_grad(true);
}
void expect_gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, const std::vector<Tensor>& in) {
  GradcheckResult r = gradcheck(f, in);
  EXPECT_TRUE(r.ok) << r.message;
}
}  // namespace

TEST(Autograd, BroadcastArithmeticGradcheck) {
  Tensor a = leaf({3, 1, 5}, 1), b = leaf({4, 1}, 2, 0.5, 2.0);
  expect_gradcheck([](auto& v) { return add(v[0], v[1]); }, {a, b});
  expect_gradcheck([](auto& v) { return sub(v[0], v[1]); }, {a, b});
  expect_gradcheck([](auto& v) { return mul(v[0], v[1]); }, {a, b});
  expect_gradcheck([](auto& v) { return div(v[0], v[1]); }, {a, b});
  expect_gradcheck([](auto& v) { return mul_scalar(add_scalar(v[0], 0.3), -1.7); }, {a});
}

TEST(Autograd, UnaryGradcheck) {
  Tensor x = leaf({7, 3}, 3, -3, 3);
  Tensor pos = leaf({5}, 4, 0.2, 3);
  for (auto fn : {&natsl::exp, &natsl::silu, &natsl::sigmoid, &natsl::softplus, &natsl::tanh, &natsl::square})
    expect_gradcheck([fn](auto& v) { return fn(v[0]); }, {x});
  expect_gradcheck([](auto& v) { return natsl::log(v[0]); }, {pos});
  expect_gradcheck([](auto& v) { return natsl::sqrt(v[0]); }, {pos});
}

TEST(Autograd, ReductionsAndShapesGradcheck) {
  Tensor x = leaf({2, 3, 5}, 5);
  expect_gradcheck([](auto& v) { return sum(v[0], {1}); }, {x});
  expect_gradcheck([](auto& v) { return sum(v[0], {0, 2}, true); }, {x});
  expect_gradcheck([](auto& v) { return mean(v[0], {-1}); }, {x});
  expect_gradcheck([](auto& v) { return mean(v[0]); }, {x});
  expect_gradcheck([](auto& v) { return reshape(v[0], {5, 6}); }, {x});
  expect_gradcheck([](auto& v) { return transpose(v[0], 0, 2); }, {x});
  expect_gradcheck([](auto& v) { return permute(v[0], {1, 2, 0}); }, {x});
  expect_gradcheck([](auto& v) { return slice(v[0], 2, 1, 4); }, {x});
  Tensor y = leaf({2, 1, 5}, 6);
  expect_gradcheck([](auto& v) { return concat({v[0], v[1], v[0]}, 1); }, {x, y});
}

TEST(Autograd, ForwardValuesMatchLoops) {
  Tensor a = randn({2, 3}, 7), b = randn({3}, 8);
  auto av = a.to_vector<double>(), bv = b.to_vector<double>();
  auto s = add(a, b).to_vector<double>();
  auto m = mul(a, b).to_vector<double>();
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) {
      EXPECT_DOUBLE_EQ(s[i * 3 + j], av[i * 3 + j] + bv[j]);
      EXPECT_DOUBLE_EQ(m[i * 3 + j], av[i * 3 + j] * bv[j]);
    }
  auto r = sum(a, {0}).to_vector<double>();
  for (int j = 0; j < 3; ++j) EXPECT_NEAR(r[j], av[j] + av[3 + j], 1e-15);
  auto sp = softplus(Tensor::from_vector(std::vector<double>{-30, 0, 25}, {3})).to_vector<double>();
  EXPECT_NEAR(sp[0], 9.357622968839e-14, 1e-20);
  EXPECT_NEAR(sp[1], std::log(2.0), 1e-15);
  EXPECT_EQ(sp[2], 25.0);
}

TEST(Autograd, AccumulatesIntoLeavesAcrossUsesAndCalls) {
  Tensor x = Tensor::from_vector(std::vector<double>{1, 2, 3}, {3}).set_requires_grad(true);
  Tensor y = sum(add(mul(x, x), x));  // dy/dx = 2x + 1
  y.backward();
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{3, 5, 7}));
  sum(x).backward();  // accumulates: + 1
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{4, 6, 8}));
}

TEST(Autograd, NoGradGuardRecordsNothing) {
  Tensor x = randn({3}, 9).set_requires_grad(true);
  {
    NoGradGuard g;
    Tensor y = mul(x, x);
    EXPECT_FALSE(y.requires_grad());
    EXPECT_EQ(y.grad_fn(), nullptr);
  }
  EXPECT_NE(mul(x, x).grad_fn(), nullptr);
}

TEST(Autograd, SavedTensorsReleasedAfterBackward) {
  Tensor x = randn({4}, 10).set_requires_grad(true);
  Tensor y = sum(mul(x, x));
  y.backward();
  EXPECT_THROW(y.backward(), Error);  // the graph's saved tensors are gone
  Tensor z = sum(mul(x, x));
  z.backward(Tensor(), /*retain_graph=*/true);
  EXPECT_NO_THROW(z.backward());
}

TEST(Autograd, BackwardWithGivenGradient) {
  Tensor x = randn({2, 2}, 11).set_requires_grad(true);
  Tensor y = mul_scalar(x, 3.0);
  EXPECT_THROW(y.backward(), Error);  // not a scalar
  y.backward(Tensor::full({2, 2}, 2.0, DType::f64));
  for (double g : x.grad().to_vector<double>()) EXPECT_EQ(g, 6.0);
}

TEST(Autograd, GradcheckCatchesAWrongBackward) {
  // A deliberately wrong backward must be reported: gradcheck is not a test that cannot fail.
  Tensor x = leaf({3}, 12);
  auto wrong = [](const std::vector<Tensor>& v) {
    Tensor y = mul_scalar(v[0], 2.0).detach();
    record("wrong", {v[0]}, {&y}, [](std::vector<Tensor>& g) -> std::vector<Tensor> { return {g[0]}; });
    return y;
  };
  EXPECT_FALSE(gradcheck(wrong, {x}).ok);
}

// Gradient sinks (engine.h, grad_sink): linear adds its weight gradient straight into a preset .grad (a view into
// a flat buffer, as the parameter store sets it up), by the product's beta = 1.
namespace {

// A [rows, cols] view at element 3 of a buffer of `fill`, so writes outside the view can be seen.
Tensor view_in_buffer(Tensor& buffer, int64_t rows, int64_t cols, DType dt, double fill) {
  buffer = Tensor::full({rows * cols + 6}, fill, dt);
  return buffer.slice(0, 3, 3 + rows * cols).view({rows, cols});
}

}  // namespace

TEST(GradSink, UsesAndCallsAccumulateAndTheHookRunsOnceAfterTheLastUse) {
  // w is used by two linears (sinks) and by a product with itself (an ordinary gradient): its .grad must be
  // the preset value plus all three, the hook must run once, after all of them, and the buffer around the
  // view must stay as it was.
  Tensor x1 = randn({5, 7}, 1), x2 = randn({3, 7}, 2), c = randn({5, 4}, 3);
  Tensor w = randn({4, 7}, 4).set_requires_grad(true);
  Tensor buffer;
  Tensor g = view_in_buffer(buffer, 4, 7, DType::f64, 0.25);
  w.set_grad(g);
  auto loss_of = [&](const Tensor& wt) {
    return add(add(sum(mul(linear(x1, wt), c)), sum(linear(x2, wt))), sum(mul(wt, wt)));
  };
  // The reference: the same gradient through gradients_of (no sinks: nothing is written into .grad).
  const std::vector<double> preset = g.to_vector<double>();
  Tensor want = gradients_of({loss_of(w)}, {Tensor::full({}, 1.0, DType::f64)}, {w})[0];
  EXPECT_EQ(g.to_vector<double>(), preset) << "gradients_of must not touch .grad";
  int calls = 0;
  std::vector<double> at_hook;
  {
    GradReadyHookGuard hook([&](const Tensor& leaf) {
      if (leaf.same(w)) ++calls, at_hook = leaf.grad().to_vector<double>();
    });
    loss_of(w).backward();
  }
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(w.grad().same(g)) << "the preset gradient view must stay the leaf's .grad";
  const std::vector<double> got = w.grad().to_vector<double>(), wv = want.to_vector<double>();
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], preset[i] + wv[i], 1e-12) << i;
  EXPECT_EQ(at_hook, got);
  const std::vector<double> all = buffer.to_vector<double>();
  for (size_t i : {size_t(0), size_t(1), size_t(2), all.size() - 3, all.size() - 2, all.size() - 1})
    EXPECT_EQ(all[i], 0.25) << "buffer element " << i << " outside the gradient view changed";
  // A second backward adds again.
  loss_of(w).backward();
  const std::vector<double> twice = w.grad().to_vector<double>();
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(twice[i], preset[i] + 2 * wv[i], 1e-12) << i;
}

TEST(GradSink, Bf16WeightGradientGoesIntoTheF32GradWithoutABf16Rounding) {
  // bf16 weights with an f32 .grad (a bf16 run's parameters): the weight gradient is the f32 product of the
  // bf16 values added into .grad (the same bits as the mixed product itself), not the product rounded to bf16
  // and then widened, which is what a leaf without a preset .grad still gets.
  const int64_t N = 33, in = 20, out = 12;
  Tensor x = randn({N, in}, 5).to(DType::bf16), dy = randn({N, out}, 6).to(DType::bf16);
  Tensor w = randn({out, in}, 7).to(DType::bf16).set_requires_grad(true);
  Tensor buffer;
  w.set_grad(view_in_buffer(buffer, out, in, DType::f32, 0.0));
  linear(x, w).backward(dy);
  Tensor want = Tensor::zeros({out, in}, DType::f32);
  kernels::matmul(dy, x, want, true, false, 1.0, 1.0);
  const std::vector<float> got = w.grad().to_vector<float>(), wv = want.to_vector<float>();
  ASSERT_EQ(got.size(), wv.size());
  EXPECT_EQ(std::memcmp(got.data(), wv.data(), got.size() * sizeof(float)), 0);
  // Without a preset .grad: the bf16 product, widened (so the sink path above really was taken).
  Tensor w2 = w.detach().set_requires_grad(true);
  linear(x, w2).backward(dy);
  ASSERT_EQ(w2.grad().dtype(), DType::bf16);
  const std::vector<float> rounded = w2.grad().to(DType::f32).to_vector<float>();
  int differ = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    differ += got[i] != rounded[i];
    EXPECT_NEAR(got[i], rounded[i], 1e-2 * (1 + std::abs(got[i])));
  }
  EXPECT_GT(differ, 0);
}

TEST(GradSink, OnlyInAPlainBackwardAndOnlyForAUsableGrad) {
  Tensor w = randn({3, 4}, 8).set_requires_grad(true);
  EXPECT_FALSE(grad_sink(w).defined());  // outside a backward
  w.set_grad(Tensor::zeros({3, 4}, DType::f64));
  EXPECT_FALSE(grad_sink(w).defined());
  bool seen = false, seen_fresh = true, seen_in_gradients_of = true;
  auto probe = [&](const Tensor& wt, bool* out) {
    Tensor y = mul_scalar(wt, 1.0).detach();
    record("probe", {wt}, {&y}, [wt, out](std::vector<Tensor>& g) -> std::vector<Tensor> {
      *out = grad_sink(wt).defined();
      return {g[0]};
    });
    return sum(y);
  };
  probe(w, &seen).backward();
  EXPECT_TRUE(seen);
  gradients_of({probe(w, &seen_in_gradients_of)}, {Tensor::full({}, 1.0, DType::f64)}, {w});
  EXPECT_FALSE(seen_in_gradients_of);
  Tensor fresh = randn({3, 4}, 10).set_requires_grad(true);  // no .grad yet: the op makes its own gradient
  probe(fresh, &seen_fresh).backward();
  EXPECT_FALSE(seen_fresh);
}

// Input gradient sinks (engine.h, input_grad_sink): an op adds its input's gradient into what the input's other
// uses already sent back, in place, when nothing else holds that pending gradient.
namespace {

// sum(y) where y = 2u and y's backward asks for u's sink (with u's shape and dtype, or a wrong dtype when
// `wrong_dtype`), records whether it got one, and when it did adds 2 g into it and returns it.
Tensor sink_probe(const Tensor& u, bool* offered, bool wrong_dtype = false) {
  Tensor y = mul_scalar(u, 2.0).detach();
  const Shape sh = u.shape();
  const DType dt = wrong_dtype ? DType::f32 : u.dtype();
  const Device dev = u.device();
  record("sink_probe", {u}, {&y}, [=](std::vector<Tensor>& g) -> std::vector<Tensor> {
    const Tensor sink = input_grad_sink(0, sh, dt, dev);
    *offered = sink.defined();
    if (!sink.defined()) return {mul_scalar(g[0], 2.0)};
    sink.copy_(add(sink, mul_scalar(g[0], 2.0)));
    return {sink};
  });
  return y;
}

}  // namespace

TEST(InputGradSink, OfferedForAPendingGradientThatNothingElseHolds) {
  // u = 3x feeds the probe and z = 5u; z's backward runs first (the engine's order for add(p, z)), so the probe
  // finds u's pending gradient 5 and adds its 2 into it: dx = 3 (2 + 5).
  Tensor x = randn({4, 6}, 20).set_requires_grad(true);
  bool offered = false;
  {
    Tensor u = mul_scalar(x, 3.0);
    sum(add(sink_probe(u, &offered), mul_scalar(u, 5.0))).backward();
  }
  EXPECT_TRUE(offered);
  for (double v : x.grad().to_vector<double>()) EXPECT_EQ(v, 21.0);
  // Outside a backward, for a leaf input (the leaf's .grad is grad_sink's business), or with another dtype: none.
  EXPECT_FALSE(input_grad_sink(0, {4, 6}, DType::f64, x.device()).defined());
  Tensor w = randn({4, 6}, 21).set_requires_grad(true);
  bool leaf_offered = true;
  sum(add(sink_probe(w, &leaf_offered), mul_scalar(w, 5.0))).backward();
  EXPECT_FALSE(leaf_offered);
  bool wrong_offered = true;
  {
    Tensor u = mul_scalar(x, 3.0);
    sum(add(sink_probe(u, &wrong_offered, /*wrong_dtype=*/true), mul_scalar(u, 5.0))).backward();
  }
  EXPECT_FALSE(wrong_offered);
  // Inside gradients_of too (a checkpoint's recomputation): the pending gradients are the engine's own.
  bool in_gradients_of = false;
  Tensor u = mul_scalar(x, 3.0);
  const Tensor dx = gradients_of({sum(add(sink_probe(u, &in_gradients_of), mul_scalar(u, 5.0)))},
                                 {Tensor::full({}, 1.0, DType::f64)}, {x})[0];
  EXPECT_TRUE(in_gradients_of);
  for (double v : dx.to_vector<double>()) EXPECT_EQ(v, 21.0);
}

TEST(InputGradSink, RefusedWhenThePendingGradientIsSharedWithAnotherInput) {
  // s = u + v: add's backward sends the same gradient tensor to u and to v. Were it offered to the probe (which
  // runs after add's backward) and written in place, v's gradient would change with it: dy must stay 1.
  Tensor x = randn({3, 5}, 22).set_requires_grad(true), y = randn({3, 5}, 23).set_requires_grad(true);
  bool offered = true;
  Tensor u = mul_scalar(x, 1.0), v = mul_scalar(y, 1.0);
  sum(add(sink_probe(u, &offered), add(u, v))).backward();
  EXPECT_FALSE(offered);
  for (double g : x.grad().to_vector<double>()) EXPECT_EQ(g, 3.0);
  for (double g : y.grad().to_vector<double>()) EXPECT_EQ(g, 1.0);
}

TEST(InputGradSink, LinearAndMatmulIntoASharedInputGiveTheSumOfTheirGradients) {
  // One normed input feeding several projections (q/k/v/gate): their dx go into one buffer by beta = 1. The
  // reference gives each use its own copy of the input (the sum is then formed at the leaf).
  Tensor x = randn({2, 5, 8}, 24).set_requires_grad(true);
  Tensor w1 = randn({6, 8}, 25).set_requires_grad(true), w2 = randn({3, 8}, 26).set_requires_grad(true);
  Tensor m = randn({8, 4}, 27), c1 = randn({2, 5, 6}, 28), c2 = randn({2, 5, 3}, 29), c3 = randn({2, 5, 4}, 30);
  auto loss_of = [&](const Tensor& u1, const Tensor& u2, const Tensor& u3) {
    return add(add(sum(mul(linear(u1, w1), c1)), sum(mul(linear(u2, w2), c2))), sum(mul(matmul(u3, m), c3)));
  };
  {
    Tensor u = mul_scalar(x, 1.5);
    loss_of(u, u, u).backward();
  }
  const std::vector<double> shared = x.grad().to_vector<double>();
  Tensor x2 = x.detach().set_requires_grad(true);
  loss_of(mul_scalar(x2, 1.5), mul_scalar(x2, 1.5), mul_scalar(x2, 1.5)).backward();
  const std::vector<double> separate = x2.grad().to_vector<double>();
  ASSERT_EQ(shared.size(), separate.size());
  for (size_t i = 0; i < shared.size(); ++i) EXPECT_NEAR(shared[i], separate[i], 1e-12) << i;
}

TEST(InputGradSink, OneGradientSentTwiceToOneInputIsAddedTwice) {
  // add(u, u) sends the same gradient tensor to both of its inputs, which are one: it must count twice, for a
  // leaf and for a non-leaf input (an engine that took "the same tensor as pending" for "already added in"
  // would give 1 instead of 2).
  Tensor x = randn({2, 3}, 31).set_requires_grad(true);
  sum(add(x, x)).backward();
  for (double g : x.grad().to_vector<double>()) EXPECT_EQ(g, 2.0);
  Tensor y = randn({2, 3}, 32).set_requires_grad(true);
  {
    Tensor u = mul_scalar(y, 1.0);
    sum(add(u, u)).backward();
  }
  for (double g : y.grad().to_vector<double>()) EXPECT_EQ(g, 2.0);
  // And through an identity backward that hands its incoming gradient on (to_dtype to the same dtype).
  Tensor z = randn({2, 3}, 33).set_requires_grad(true);
  {
    Tensor u = mul_scalar(z, 1.0);
    sum(add(u, to_dtype(u, u.dtype()))).backward();
  }
  for (double g : z.grad().to_vector<double>()) EXPECT_EQ(g, 2.0);
}
