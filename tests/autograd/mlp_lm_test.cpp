// Ops and AdamW end to end: a small MLP language model trained on the CPU, then the same model on the GPU
// against the CPU (CudaMlpLanguageModel, skipped without a GPU).
//
// End to end on the CPU: a 2-layer MLP language model (embedding -> linear -> silu -> linear -> logits ->
// cross-entropy), its parameters and gradients in flat buffers, trained with AdamW on one fixed batch.
#include <chrono>
#include <cmath>

#include "trainers/optim/adamw.h"
#include "autograd/ops.h"
#include "tests/cuda_test_util.h"
#include "tests/ops_test_util.h"

using namespace natsl;
using namespace natsl::testing;

namespace {

// The model's parameters (embedding [V, D], fc1 weight [H, D] and bias [H], fc2 weight [V, H]) in flat f32
// buffers on `dev`, parameter i drawn from N(0, init_std[i]) with seed 100 + i (the same on every device);
// backward accumulates straight into the flat gradient buffer.
struct MlpLm {
  enum { kEmb, kW1, kB1, kW2 };
  MlpLm(int64_t V, int64_t D, int64_t H, Device dev, const std::vector<double>& init_std)
      : params(layout_of(V, D, H), dev), grads(params.layout(), dev) {
    for (int i = 0; i < 4; ++i) {
      Tensor p = params.view(i);
      p.copy_(randn(p.shape(), 100 + uint64_t(i), DType::f32, init_std[size_t(i)]));
      p.set_requires_grad(true);
      p.set_grad(grads.view(i));
    }
  }
  static FlatLayout layout_of(int64_t V, int64_t D, int64_t H) {
    FlatLayout layout;
    layout.add("embedding", {V, D}, DType::f32);
    layout.add("fc1.weight", {H, D}, DType::f32);
    layout.add("fc1.bias", {H}, DType::f32);
    layout.add("fc2.weight", {V, H}, DType::f32);
    return layout;
  }
  // embedding -> linear -> silu -> linear -> cross-entropy against `targets`.
  Tensor loss(const Tensor& ids, const Tensor& targets) const {
    Tensor h = silu(linear(embedding(params.view(kEmb), ids), params.view(kW1), params.view(kB1)));
    return cross_entropy(linear(h, params.view(kW2)), targets);
  }
  // AdamW over the buffers, no weight decay on the bias.
  AdamW optimizer(const AdamWOptions& o) { return AdamW(params, grads, {true, true, false, true}, o); }

  FlatBuffer params, grads;
};

}  // namespace

TEST(MlpLanguageModel, AdamWDrivesFixedBatchLossBelowTenPercent) {
  const int64_t V = 32, D = 16, H = 32, N = 40;
  MlpLm model(V, D, H, kCPU, {1.0, 0.25, 0.0, 0.05});

  // A fixed batch: the next token is a fixed function of the current one; a few rows are padding.
  Tensor ids = random_ids({N}, V, 7);
  std::vector<int64_t> targets;
  for (double id : host(ids)) targets.push_back((int64_t(id) * 5 + 3) % V);
  for (size_t i : {3u, 17u, 30u}) targets[i] = -100;
  Tensor tgt = Tensor::from_vector(targets, {N}, DType::i64);

  auto loss_fn = [&] { return model.loss(ids, tgt); };

  AdamWOptions o;
  o.lr = 0.02;
  o.weight_decay = 0.01;
  AdamW opt = model.optimizer(o);
  const auto t0 = std::chrono::steady_clock::now();
  double first = 0, last = 0;
  for (int step = 0; step < 150; ++step) {
    model.grads.zero_();
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

// The MLP language model (embedding -> linear -> silu -> linear -> cross-entropy, AdamW over flat buffers)
// trained for 50 steps on the GPU follows the CPU's loss curve in f32.
// Tolerance: step 0 (same weights, forward only) within 1e-5 relative; every later step within 1e-3
// relative (f32 reductions differ in order between the devices; AdamW keeps the difference small but it
// compounds over steps); and the run must actually learn (last loss < half the first).
namespace {

std::vector<double> train_curve(Device dev, int steps) {
  const int64_t V = 64, D = 32, H = 96, N = 256;
  MlpLm model(V, D, H, dev, {1.0, 0.2, 0.0, 0.05});
  // Next token = a fixed function of the current one; a few padding rows.
  Tensor ids_cpu = random_token_ids({N}, V, 7, DType::i64);
  std::vector<int64_t> targets;
  for (int64_t id : ids_cpu.to_vector<int64_t>()) targets.push_back((id * 5 + 3) % V);
  for (size_t i = 0; i < targets.size(); i += 17) targets[i] = -100;
  Tensor ids = ids_cpu.to(dev);
  Tensor tgt = Tensor::from_vector(targets, {N}, DType::i64).to(dev);

  AdamWOptions o;
  o.lr = 0.01;
  o.weight_decay = 0.01;
  AdamW opt = model.optimizer(o);
  std::vector<double> curve;
  for (int step = 0; step < steps; ++step) {
    model.grads.zero_();
    Tensor loss = model.loss(ids, tgt);
    curve.push_back(loss.item());
    loss.backward();
    opt.step();
  }
  return curve;
}

}  // namespace

TEST(CudaMlpLanguageModel, GpuFollowsTheCpuLossCurveFor50Steps) {
  NATSL_REQUIRE_GPU();
  const std::vector<double> cpu = train_curve(kCPU, 50);
  const std::vector<double> gpu_curve = train_curve(gpu(), 50);
  ASSERT_EQ(cpu.size(), gpu_curve.size());
  EXPECT_NEAR(gpu_curve[0], cpu[0], 1e-5 * std::abs(cpu[0])) << "same weights, same batch: step 0 must agree";
  for (size_t i = 1; i < cpu.size(); ++i)
    // Relative to the loss, with a floor at 1e-5 of the starting loss: the run fits its batch and the
    // loss falls to ~1e-4, where f32 rounding of the updates dominates any relative comparison.
    EXPECT_NEAR(gpu_curve[i], cpu[i], 1e-3 * std::abs(cpu[i]) + 1e-5 * cpu[0]) << "step " << i << ": cpu " << cpu[i] << " gpu "
                                                               << gpu_curve[i];
  EXPECT_LT(cpu.back(), 0.5 * cpu.front()) << "the CPU run did not learn: " << cpu.front() << " -> " << cpu.back();
  EXPECT_LT(gpu_curve.back(), 0.5 * gpu_curve.front())
      << "the GPU run did not learn: " << gpu_curve.front() << " -> " << gpu_curve.back();
}
