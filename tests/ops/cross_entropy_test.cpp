// Fused cross-entropy: equals log_softmax + gather + mean over valid rows, ignores ignore_index rows,
// backward by gradcheck, and keeps the mean on the device.
#include <cmath>

#include "autograd/ops.h"
#include "kernels/nn.h"
#include "tests/ops/ops_test_util.h"

using namespace natsl;
using namespace natsl::testing;

namespace {
constexpr int64_t kIgnore = -100;

// mean over rows with target != ignore of -log_softmax(logits)[row, target], from the log_softmax op.
double log_softmax_gather_mean(const Tensor& logits, const std::vector<int64_t>& targets) {
  NoGradGuard ng;
  auto lp = host(log_softmax(logits));
  const int64_t V = logits.size(1);
  double s = 0;
  int n = 0;
  for (size_t i = 0; i < targets.size(); ++i)
    if (targets[i] != kIgnore) {
      s -= lp[i * size_t(V) + size_t(targets[i])];
      ++n;
    }
  return n ? s / n : 0.0;
}
}  // namespace

TEST(CrossEntropy, EqualsLogSoftmaxGatherMeanWithIgnoredRows) {
  const int64_t N = 7, V = 11;
  Tensor logits = randn({N, V}, 1, DType::f64, 2.0);
  std::vector<int64_t> t{3, kIgnore, 0, 10, kIgnore, 3, 5};
  Tensor targets = Tensor::from_vector(t, {N}, DType::i64);
  EXPECT_NEAR(cross_entropy(logits, targets).item(), log_softmax_gather_mean(logits, t), 1e-13);
  // i32 targets and a custom ignore index
  std::vector<int32_t> t32{3, 7, 0, 10, 7, 3, 5};
  std::vector<int64_t> t_as64{3, kIgnore, 0, 10, kIgnore, 3, 5};
  Tensor targets32 = Tensor::from_vector(t32, {N}, DType::i32);
  EXPECT_NEAR(cross_entropy(logits, targets32, 7).item(), log_softmax_gather_mean(logits, t_as64), 1e-13);
}

TEST(CrossEntropy, KernelWritesLossesLseAndValidity) {
  const int64_t N = 4, V = 5;
  Tensor logits = randn({N, V}, 2);
  std::vector<int64_t> t{1, kIgnore, 4, 0};
  Tensor losses = poisoned({N}), lse = poisoned({N}), valid = poisoned({N});
  kernels::cross_entropy_fwd(logits, Tensor::from_vector(t, {N}, DType::i64), kIgnore, losses, lse, valid);
  auto x = host(logits), lv = host(losses), sv = host(lse), vv = host(valid);
  for (int i = 0; i < N; ++i) {
    double s = 0;
    for (int j = 0; j < V; ++j) s += std::exp(x[size_t(i * V + j)]);
    EXPECT_NEAR(sv[size_t(i)], std::log(s), 1e-14);
    bool ok = t[size_t(i)] != kIgnore;
    EXPECT_EQ(vv[size_t(i)], ok ? 1.0 : 0.0);
    EXPECT_NEAR(lv[size_t(i)], ok ? std::log(s) - x[size_t(i * V + t[size_t(i)])] : 0.0, 1e-14);
  }
}

TEST(CrossEntropy, Gradcheck) {
  Tensor targets = Tensor::from_vector(std::vector<int64_t>{2, kIgnore, 0, 5, 5, kIgnore}, {6}, DType::i64);
  expect_gradcheck([targets](auto& v) { return cross_entropy(v[0], targets); }, {leaf({6, 6}, 1, -2, 2)},
                   "cross_entropy with ignored rows");
  Tensor one = Tensor::from_vector(std::vector<int32_t>{0}, {1}, DType::i32);
  expect_gradcheck([one](auto& v) { return cross_entropy(v[0], one); }, {leaf({1, 3}, 2)}, "one row");
  // Composed with a scale, so dL/dmean != 1 reaches the node.
  expect_gradcheck([targets](auto& v) { return mul_scalar(cross_entropy(v[0], targets), -2.5); },
                   {leaf({6, 6}, 3, -2, 2)}, "scaled");
}

TEST(CrossEntropy, AllRowsIgnoredGivesZeroLossAndGradient) {
  Tensor logits = leaf({3, 4}, 1);
  Tensor targets = Tensor::from_vector(std::vector<int64_t>{kIgnore, kIgnore, kIgnore}, {3}, DType::i64);
  Tensor loss = cross_entropy(logits, targets);
  EXPECT_EQ(loss.item(), 0.0);
  loss.backward();
  for (double g : host(logits.grad())) EXPECT_EQ(g, 0.0);
}

TEST(CrossEntropy, BackwardMayOverwriteTheLogits) {
  const int64_t N = 3, V = 6;
  Tensor logits = randn({N, V}, 4);
  Tensor targets = Tensor::from_vector(std::vector<int64_t>{5, kIgnore, 2}, {N}, DType::i64);
  Tensor losses = poisoned({N}), lse = poisoned({N}), valid = poisoned({N});
  kernels::cross_entropy_fwd(logits, targets, kIgnore, losses, lse, valid);
  Tensor scale = Tensor::full({1}, 0.25, DType::f64);
  Tensor separate = poisoned({N, V});
  kernels::cross_entropy_bwd(logits, targets, lse, scale, kIgnore, separate);
  Tensor in_place = logits.clone();
  kernels::cross_entropy_bwd(in_place, targets, lse, scale, kIgnore, in_place);
  EXPECT_CLOSE(in_place, separate, 0, 0);
  // Check against (softmax - onehot) * scale directly.
  auto x = host(logits), d = host(separate);
  std::vector<int64_t> t{5, kIgnore, 2};
  for (int i = 0; i < N; ++i) {
    double s = 0;
    for (int j = 0; j < V; ++j) s += std::exp(x[size_t(i * V + j)]);
    for (int j = 0; j < V; ++j) {
      double want = t[size_t(i)] == kIgnore ? 0.0 : (std::exp(x[size_t(i * V + j)]) / s - (j == t[size_t(i)])) * 0.25;
      EXPECT_NEAR(d[size_t(i * V + j)], want, 1e-15);
    }
  }
}

TEST(CrossEntropy, F32LogitsGiveF32LossMatchingF64) {
  Tensor logits = randn({5, 9}, 5, DType::f64, 3.0);
  Tensor targets = Tensor::from_vector(std::vector<int64_t>{0, 8, kIgnore, 4, 4}, {5}, DType::i64);
  Tensor l32 = cross_entropy(logits.to(DType::f32), targets);
  EXPECT_EQ(l32.dtype(), DType::f32);
  EXPECT_NEAR(l32.item(), cross_entropy(logits, targets).item(), 1e-5);
}

TEST(CrossEntropy, BadTargetsAreRejected) {
  Tensor logits = randn({2, 4}, 6);
  EXPECT_THROW(cross_entropy(logits, Tensor::from_vector(std::vector<int64_t>{0, 4}, {2}, DType::i64)), InputError);
  EXPECT_THROW(cross_entropy(logits, Tensor::from_vector(std::vector<int64_t>{-1, 0}, {2}, DType::i64)), InputError);
  EXPECT_THROW(cross_entropy(logits, Tensor::from_vector(std::vector<int64_t>{0, 0, 0}, {3}, DType::i64)), Error);
  EXPECT_THROW(cross_entropy(logits, Tensor::from_vector(std::vector<double>{0, 0}, {2})), Error);
}
