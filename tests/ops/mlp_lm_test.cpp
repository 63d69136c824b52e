// End to end on the CPU: a 2-layer MLP language model (embedding -> linear -> silu -> linear -> logits ->
// cross-entropy), its parameters and gradients in flat buffers, trained with AdamW on one fixed batch.
#include <chrono>

#include "autograd/adamw.h"
#include "autograd/ops.h"
#include "tests/ops/ops_test_util.h"

using namespace natsl;
using namespace natsl::testing;

TEST(MlpLanguageModel, AdamWDrivesFixedBatchLossBelowTenPercent) {
  const int64_t V = 32, D = 16, H = 32, N = 40;
  FlatLayout layout;
  const int emb = layout.add("embedding", {V, D}, DType::f32);
  const int w1 = layout.add("fc1.weight", {H, D}, DType::f32);
  const int b1 = layout.add("fc1.bias", {H}, DType::f32);
  const int w2 = layout.add("fc2.weight", {V, H}, DType::f32);
  FlatBuffer params(layout, kCPU), grads(layout, kCPU);
  const std::vector<double> init_std{1.0, 0.25, 0.0, 0.05};
  for (int i = 0; i < 4; ++i) {
    Tensor p = params.view(i);
    p.copy_(randn(p.shape(), 100 + uint64_t(i), DType::f32, init_std[size_t(i)]));
    p.set_requires_grad(true);
    p.set_grad(grads.view(i));  // backward accumulates straight into the flat gradient buffer
  }

  // A fixed batch: the next token is a fixed function of the current one; a few rows are padding.
  Tensor ids = random_ids({N}, V, 7);
  std::vector<int64_t> targets;
  for (double id : host(ids)) targets.push_back((int64_t(id) * 5 + 3) % V);
  for (size_t i : {3u, 17u, 30u}) targets[i] = -100;
  Tensor tgt = Tensor::from_vector(targets, {N}, DType::i64);

  auto loss_fn = [&] {
    Tensor h = silu(linear(embedding(params.view(emb), ids), params.view(w1), params.view(b1)));
    return cross_entropy(linear(h, params.view(w2)), tgt);
  };

  AdamWOptions o;
  o.lr = 0.02;
  o.weight_decay = 0.01;
  AdamW opt(params, grads, {true, true, false, true}, o);
  const auto t0 = std::chrono::steady_clock::now();
  double first = 0, last = 0;
  for (int step = 0; step < 150; ++step) {
    grads.zero_();
    Tensor loss = loss_fn();
    if (step == 0) first = loss.item();
    loss.backward();
    opt.step();
  }
  {
    NoGradGuard ng;
    last = loss_fn().item();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NEAR(first, std::log(double(V)), 0.5) << "an untrained model should be near uniform";
  EXPECT_LT(last, 0.1 * first) << "loss went from " << first << " to " << last;
  EXPECT_LT(seconds, 5.0);
}
