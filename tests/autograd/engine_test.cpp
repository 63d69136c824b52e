#include <gtest/gtest.h>

#include "autograd/gradcheck.h"
#include "autograd/function.h"
#include "autograd/ops.h"
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
