// The AdamW optimizer (trainers/optim/adamw.h) over its kernel (kernels/adamw.h; the kernel's own tests are
// tests/kernels/adamw_test.cpp): a two-step example worked out by hand from the formula in kernels/adamw.h,
// the restored step count, bad settings.
#include <cmath>

#include "trainers/optim/adamw.h"
#include "tests/ops_test_util.h"

using namespace natsl;
using namespace natsl::testing;

namespace {

// lr 0.1, beta1 0.5, beta2 0.75, eps 0.5, weight decay 0.1; "w" [2] decays, "b" [1] does not.
//
// Step 1, raw grads w (0.5, -1), b (0.25), grad_scale 2  ->  g = (1, -2), (0.5)
//   m = 0.5 g = (0.5, -1), (0.25);  v = 0.25 g^2 = (0.25, 1), (0.0625)
//   bias corrections 1 - 0.5 = 0.5 and 1 - 0.75 = 0.25: m^ = (1, -2), (0.5);  sqrt(v^) = (1, 2), (0.5)
//   w = (1, -2) (1 - 0.1 * 0.1) - 0.1 (1 / 1.5, -2 / 2.5) = (0.99 - 0.1 / 1.5, -1.9)
//   b = 0.5 - 0.1 * 0.5 / (0.5 + 0.5) = 0.45
// Step 2, grads already scaled: g = (0.5, 1), (-1)
//   m = 0.5 m + 0.5 g = (0.5, 0), (-0.375);  v = 0.75 v + 0.25 g^2 = (0.25, 1), (0.296875)
//   bias corrections 1 - 0.25 = 0.75 and 1 - 0.5625 = 0.4375
const double kW0 = (0.99 - 0.1 / 1.5) * 0.99 - 0.1 * (0.5 / 0.75) / (std::sqrt(0.25 / 0.4375) + 0.5);
const double kW1 = -1.9 * 0.99;  // m = 0: only the decay moves it
const double kB = 0.45 - 0.1 * (-0.375 / 0.75) / (std::sqrt(0.296875 / 0.4375) + 0.5);

AdamWOptions example_options() {
  AdamWOptions o;
  o.lr = 0.1;
  o.beta1 = 0.5;
  o.beta2 = 0.75;
  o.eps = 0.5;
  o.weight_decay = 0.1;
  return o;
}

void set(const Tensor& view, std::vector<double> v) { view.copy_(Tensor::from_vector(v, view.shape())); }

void run_example(DType param_dtype, DType grad_dtype, double tol) {
  FlatLayout layout;
  layout.add("w", {2}, param_dtype);
  layout.add("b", {1}, param_dtype);
  FlatBuffer params(layout, kCPU), grads(layout, kCPU, grad_dtype);
  set(params.view(0), {1, -2});
  set(params.view(1), {0.5});
  // Alignment padding between the two tensors must stay untouched.
  Tensor pad_p = params.flat(param_dtype).slice(0, 2, 3), pad_g = grads.flat(param_dtype).slice(0, 2, 3);
  pad_p.fill_(7);
  pad_g.fill_(3);

  AdamW opt(params, grads, {true, false}, example_options());
  set(grads.view(0), {0.5, -1});
  set(grads.view(1), {0.25});
  opt.step(Tensor::full({1}, 2.0, DType::f32));
  EXPECT_NEAR(host(params.view(0))[0], 0.99 - 0.1 / 1.5, tol);
  EXPECT_NEAR(host(params.view(0))[1], -1.9, tol);
  EXPECT_NEAR(host(params.view(1))[0], 0.45, tol);

  set(grads.view(0), {0.5, 1});
  set(grads.view(1), {-1});
  opt.step();
  auto w = host(params.view(0)), b = host(params.view(1));
  EXPECT_NEAR(w[0], kW0, tol);
  EXPECT_NEAR(w[1], kW1, tol);
  EXPECT_NEAR(b[0], kB, tol);
  EXPECT_EQ(opt.step_count(), 2);
  auto m_w = host(opt.exp_avg().view(0)), v_w = host(opt.exp_avg_sq().view(0));
  EXPECT_NEAR(m_w[0], 0.5, tol);
  EXPECT_NEAR(m_w[1], 0.0, tol);
  EXPECT_NEAR(v_w[0], 0.25, tol);
  EXPECT_NEAR(v_w[1], 1.0, tol);
  EXPECT_NEAR(host(opt.exp_avg().view(1))[0], -0.375, tol);
  EXPECT_NEAR(host(opt.exp_avg_sq().view(1))[0], 0.296875, tol);
  EXPECT_EQ(pad_p.item(), 7.0);
}

}  // namespace

TEST(AdamW, HandComputedTwoStepsF64) { run_example(DType::f64, DType::f64, 1e-15); }

TEST(AdamW, HandComputedTwoStepsF32MasterBf16Grads) {
  // Every gradient in the example is exact in bf16; the f32 moments and weights round at ~1e-7.
  run_example(DType::f32, DType::bf16, 1e-6);
}

TEST(AdamW, MomentsAreF32ForF32Parameters) {
  FlatLayout layout;
  layout.add("w", {3}, DType::f32);
  FlatBuffer p(layout, kCPU), g(layout, kCPU);
  AdamW opt(p, g, {true});
  EXPECT_EQ(opt.exp_avg().flat(DType::f32).dtype(), DType::f32);
  EXPECT_EQ(opt.exp_avg_sq().view(0).shape(), (Shape{3}));
}

TEST(AdamW, RestoredStepCountDrivesBiasCorrection) {
  // After set_step_count(1) and restored moments, step 2 of the example reproduces the uninterrupted run.
  FlatLayout layout;
  layout.add("w", {2}, DType::f64);
  layout.add("b", {1}, DType::f64);
  FlatBuffer params(layout, kCPU), grads(layout, kCPU);
  set(params.view(0), {0.99 - 0.1 / 1.5, -1.9});
  set(params.view(1), {0.45});
  AdamW opt(params, grads, {true, false}, example_options());
  set(opt.exp_avg().view(0), {0.5, -1});
  set(opt.exp_avg().view(1), {0.25});
  set(opt.exp_avg_sq().view(0), {0.25, 1});
  set(opt.exp_avg_sq().view(1), {0.0625});
  opt.set_step_count(1);
  set(grads.view(0), {0.5, 1});
  set(grads.view(1), {-1});
  opt.step();
  EXPECT_NEAR(host(params.view(0))[0], kW0, 1e-15);
  EXPECT_NEAR(host(params.view(0))[1], kW1, 1e-15);
  EXPECT_NEAR(host(params.view(1))[0], kB, 1e-15);
}

TEST(AdamW, BadSettingsAreInputErrors) {
  FlatLayout layout;
  layout.add("w", {2}, DType::f32);
  FlatBuffer p(layout, kCPU), g(layout, kCPU);
  auto with = [](auto edit) {
    AdamWOptions o;
    edit(o);
    return o;
  };
  EXPECT_THROW(AdamW(p, g, {true}, with([](AdamWOptions& o) { o.lr = -1; })), InputError);
  EXPECT_THROW(AdamW(p, g, {true}, with([](AdamWOptions& o) { o.beta1 = 1.0; })), InputError);
  EXPECT_THROW(AdamW(p, g, {true}, with([](AdamWOptions& o) { o.beta2 = -0.1; })), InputError);
  EXPECT_THROW(AdamW(p, g, {true}, with([](AdamWOptions& o) { o.eps = -1e-8; })), InputError);
  EXPECT_THROW(AdamW(p, g, {true}, with([](AdamWOptions& o) { o.weight_decay = NAN; })), InputError);
  AdamW opt(p, g, {true});
  EXPECT_THROW(opt.set_lr(-0.5), InputError);
  EXPECT_THROW(opt.set_step_count(-1), InputError);
  EXPECT_THROW(AdamW(p, g, {true, false}), Error);  // one flag per parameter
  FlatLayout other;
  other.add("v", {2}, DType::f32);
  EXPECT_THROW(AdamW(p, FlatBuffer(other, kCPU), {true}), Error);  // grads laid out differently
}

// write_compute_copy: each step also writes the forward's weights, the same bits as a cast of the master
// weights after the step (what ParameterStore::sync_compute_from_master did after every step before).
TEST(AdamW, ComputeCopyHoldsTheCastOfTheMasterWeightsAfterEveryStep) {
  FlatLayout layout;
  layout.add("w", {37}, DType::f32);
  layout.add("b", {5}, DType::f32);
  FlatBuffer params(layout, kCPU), grads(layout, kCPU), compute(layout, kCPU, DType::bf16);
  params.flat(DType::f32).copy_(randn({layout.total(DType::f32)}, 5).to(DType::f32));
  AdamW opt(params, grads, {true, false}, example_options());
  opt.write_compute_copy(compute);
  for (int step = 1; step <= 3; ++step) {
    grads.flat(DType::f32).copy_(randn({layout.total(DType::f32)}, 50 + uint64_t(step)).to(DType::f32));
    opt.step();
    for (int i : {0, 1})
      EXPECT_EQ(compute.view(i).to(DType::f32).to_vector<float>(),
                params.view(i).to(DType::bf16).to(DType::f32).to_vector<float>())
          << "step " << step << " entry " << i;
  }
  EXPECT_THROW(opt.write_compute_copy(FlatBuffer(FlatLayout(), kCPU)), Error);  // no buffer for the f32 entries
}

// ZeRO-1: the optimizer holds a shard of the master weights; the compute copy is the whole buffer, of which a
// step writes the shard's range only (the rest comes from the other ranks' all-gather).
TEST(AdamW, ShardedComputeCopyWritesTheShardsRangeOnly) {
  FlatLayout layout;
  layout.add("w", {100}, DType::f32);
  layout.add("b", {30}, DType::f32);
  layout.pad_totals(2);
  const int64_t total = layout.total(DType::f32), begin = total / 2;
  Tensor master = randn({total - begin}, 6).to(DType::f32), grads = randn({total - begin}, 7).to(DType::f32);
  FlatBuffer compute(layout, kCPU, DType::bf16);
  compute.flat(DType::f32).fill_(7.0);
  AdamW opt(layout, master, grads, {true, false}, example_options(), begin);
  opt.write_compute_copy(compute);
  opt.step();
  const std::vector<float> c = compute.flat(DType::f32).to(DType::f32).to_vector<float>();
  const std::vector<float> cast = master.to(DType::bf16).to(DType::f32).to_vector<float>();
  auto in_entry = [&](int64_t i) {
    for (const FlatEntry& e : layout.entries())
      if (i >= e.offset && i < e.offset + e.numel()) return true;
    return false;
  };
  int outside = 0, wrong = 0, covered = 0;
  for (int64_t i = 0; i < total; ++i) {
    const float got = c[size_t(i)];
    if (i < begin || !in_entry(i)) {
      outside += got != 7.0f;  // before the shard, or alignment padding: untouched
    } else {
      ++covered;
      wrong += got != cast[size_t(i - begin)];
    }
  }
  EXPECT_GT(covered, 30);  // the shard holds part of w and all of b
  EXPECT_EQ(outside, 0) << "elements outside the shard's entries changed";
  EXPECT_EQ(wrong, 0) << "elements of the shard that are not the cast of the updated master weights";
}
