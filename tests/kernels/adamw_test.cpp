// The AdamW family (kernels/adamw.h, and the optimizer of autograd/adamw.h over it): the CPU update, then the
// CUDA multi-tensor kernel against the CPU reference (CudaAdamW, skipped without a GPU).
//
// AdamW against a two-step example worked out by hand from the formula in kernels/adamw.h.
#include <cmath>

#include "autograd/adamw.h"
#include "kernels/adamw.h"
#include "tests/cuda_test_util.h"
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

TEST(AdamW, KernelRejectsBf16MasterWeights) {
  Tensor p = Tensor::zeros({4}, DType::bf16), g = Tensor::zeros({4}, DType::bf16);
  EXPECT_THROW(kernels::adamw_step(p, g, Tensor::zeros({4}), Tensor::zeros({4}), {{0, 4, true}}, {}, Tensor()),
               Error);
  Tensor p32 = Tensor::zeros({4});
  EXPECT_THROW(kernels::adamw_step(p32, Tensor::zeros({4}), Tensor::zeros({4}), Tensor::zeros({4}), {{2, 4, true}},
                                   {}, Tensor()),
               Error);  // segment past the end
}

// CUDA multi-tensor AdamW against the CPU reference (which evaluates the update in double) over several
// steps on flat buffers with segments, gaps between segments (left untouched), decay on/off, f32 and bf16
// gradients, with and without a device grad_scale.
// Tolerances: params, m, v are f32 on both sides; the GPU evaluates in f32: kF32 (rel RMS 1e-5, max 1e-4).
using namespace natsl;
using namespace natsl::testing;
using kernels::AdamWHyper;
using kernels::AdamWSegment;

namespace {

void run_adamw(const std::vector<AdamWSegment>& segs, int64_t total, DType grad_dt, bool with_scale, uint64_t seed) {
  const std::string what = "adamw grads " + dtype_str(grad_dt) + (with_scale ? " scaled" : "") + " segments " +
                           std::to_string(segs.size()) + " (first offset " + std::to_string(segs[0].offset) + ")";
  Tensor p_cpu = q(randn({total}, seed), DType::f32);
  Tensor m_cpu = Tensor::zeros({total}), v_cpu = Tensor::zeros({total});
  Tensor p_gpu = to_gpu(p_cpu), m_gpu = to_gpu(m_cpu), v_gpu = to_gpu(v_cpu);
  const std::vector<float> p0 = p_cpu.to_vector<float>();
  Tensor scale_cpu = with_scale ? Tensor::full({1}, 0.5, DType::f32) : Tensor();
  Tensor scale_gpu = with_scale ? to_gpu(scale_cpu) : Tensor();
  AdamWHyper h;
  h.lr = 1e-2;
  h.weight_decay = 0.1;
  for (int64_t step = 1; step <= 3; ++step) {
    h.step = step;
    Tensor g = q(randn({total}, seed + 10 * uint64_t(step), DType::f64, 0.1), grad_dt);
    kernels::adamw_step(p_cpu, g, m_cpu, v_cpu, segs, h, scale_cpu);
    kernels::adamw_step(p_gpu, to_gpu(g), m_gpu, v_gpu, segs, h, scale_gpu);
  }
  expect_match(p_gpu, p_cpu, kF32, what + " param");
  expect_match(m_gpu, m_cpu, kF32, what + " m");
  expect_match(v_gpu, v_cpu, kF32, what + " v");
  // Elements outside every segment are not touched.
  std::vector<bool> covered(size_t(total), false);
  for (const auto& s : segs)
    for (int64_t i = s.offset; i < s.offset + s.numel; ++i) covered[size_t(i)] = true;
  const std::vector<float> p1 = p_gpu.to_vector<float>();
  int changed = 0;
  for (size_t i = 0; i < p1.size(); ++i)
    if (!covered[i] && p1[i] != p0[i]) ++changed;
  EXPECT_EQ(changed, 0) << what << ": elements outside the segments changed";
}

}  // namespace

TEST(CudaAdamW, MatchesCpuOverSegmentsWithGaps) {
  NATSL_REQUIRE_GPU();
  // FlatLayout-style offsets (multiples of 64) with gaps, a one-element segment, a segment spanning
  // several chunks, decay on and off.
  const std::vector<AdamWSegment> aligned = {
      {0, 1000, true}, {1024, 1, false}, {1088, 77777, true}, {78912, 5, false}, {78976, 40000, false}};
  // Odd offsets: the scalar path.
  const std::vector<AdamWSegment> odd = {{3, 1001, true}, {1007, 13, false}, {1021, 50000, true}};
  uint64_t seed = 1;
  for (DType gd : {DType::f32, DType::bf16})
    for (bool scaled : {false, true}) {
      run_adamw(aligned, 119000, gd, scaled, seed += 100);
      run_adamw(odd, 51100, gd, scaled, seed += 100);
    }
}

TEST(CudaAdamW, EmptySegmentListIsANoOp) {
  NATSL_REQUIRE_GPU();
  Tensor p = to_gpu(q(randn({100}, 3), DType::f32));
  Tensor before = p.to(kCPU);
  Tensor g = Tensor::zeros({100}, DType::f32, gpu()), m = Tensor::zeros({100}, DType::f32, gpu()),
         v = Tensor::zeros({100}, DType::f32, gpu());
  kernels::adamw_step(p, g, m, v, {}, AdamWHyper{}, Tensor());
  expect_same_bits(p, before, "adamw with no segments");
}
