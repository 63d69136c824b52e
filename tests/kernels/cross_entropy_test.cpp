// The cross-entropy family (kernels/nn.h, kernels/cpu/cross_entropy.cpp, kernels/cuda/cross_entropy.cu): the
// CPU kernel and op, then the CUDA kernels against the CPU reference (CudaCrossEntropy, skipped without a GPU).
//
// Fused cross-entropy: equals log_softmax + gather + mean over valid rows, ignores ignore_index rows,
// backward by gradcheck, and keeps the mean on the device.
#include <cmath>
#include <cstdlib>

#include "autograd/ops.h"
#include "kernels/elementwise.h"
#include "kernels/nn.h"
#include "tests/cuda_test_util.h"
#include "tests/ops_test_util.h"
#ifdef NATSL_WITH_CUDA
#include "kernels/cuda/cross_entropy_fused.h"
#endif

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

// CUDA fused cross-entropy (forward, backward, in-place backward, one-kernel forward+backward) against the
// CPU reference in f64 on the same rounded logits.
// Tolerances: losses/lse are f32 statistics: rel RMS 1e-5, max 1e-4 (f32 logits; same for bf16 logits,
// whose values are exact in f32); dlogits kF32 / kBf16.
using namespace natsl;
using namespace natsl::testing;

namespace {

constexpr Tol kStats{1e-5, 1e-4};

struct CeCase {
  int64_t N, V;
  int64_t ignore_index;
};

// Targets in [0, V) with every 5th row (and row 1) set to ignore_index.
Tensor make_targets(const CeCase& c, uint64_t seed, DType it) {
  Tensor t = random_token_ids({c.N}, c.V, seed, DType::i64);
  std::vector<int64_t> v = t.to_vector<int64_t>();
  for (size_t i = 0; i < v.size(); ++i)
    if (i % 5 == 3 || i == 1) v[i] = c.ignore_index;
  return Tensor::from_vector(v, {c.N}, it);
}

const CeCase kCases[] = {{1, 1, -100}, {5, 7, -100}, {33, 1000, -100}, {3, 50001, -100}, {64, 32000, -100},
                         {17, 129, 3} /* an ignore index that is also a class id */, {9, 4104, 3}};

}  // namespace

TEST(CudaCrossEntropy, ForwardBackwardAndInPlace) {
  NATSL_REQUIRE_GPU();
  uint64_t seed = 1;
  const double grad_scale = 0.37;
  for (DType dt : {DType::f32, DType::bf16})
    for (DType it : {DType::i32, DType::i64})
      for (const CeCase& c : kCases) {
        const std::string what = case_name("cross_entropy", dt, {c.N, c.V}) + " targets " + dtype_str(it) +
                                 " ignore " + std::to_string(c.ignore_index);
        Tensor xq = q(randn({c.N, c.V}, seed++, DType::f64, 4.0), dt);
        Tensor tg = make_targets(c, seed++, it);
        Tensor ref_loss = cpu_poisoned({c.N}), ref_lse = cpu_poisoned({c.N}), ref_valid = cpu_poisoned({c.N});
        kernels::cpu::cross_entropy_fwd(f64(xq), tg, c.ignore_index, ref_loss, ref_lse, ref_valid);
        Tensor xg = to_gpu(xq), tgg = to_gpu(tg);
        Tensor loss = gpu_poisoned({c.N}, DType::f32), lse = gpu_poisoned({c.N}, DType::f32),
               valid = gpu_poisoned({c.N}, DType::f32);
        kernels::cross_entropy_fwd(xg, tgg, c.ignore_index, loss, lse, valid);
        expect_match(loss, ref_loss, kStats, what + " losses");
        expect_match(lse, ref_lse, kStats, what + " lse");
        expect_match(valid, ref_valid, Tol{0, 0}, what + " valid");

        Tensor lse32 = ref_lse.to(DType::f32);
        Tensor scale = Tensor::full({1}, grad_scale, DType::f32);
        Tensor ref_d = cpu_poisoned({c.N, c.V});
        kernels::cpu::cross_entropy_bwd(f64(xq), tg, f64(lse32), scale.to(DType::f64), c.ignore_index, ref_d);
        Tensor d = gpu_poisoned({c.N, c.V}, dt);
        kernels::cross_entropy_bwd(xg, tgg, to_gpu(lse32), to_gpu(scale), c.ignore_index, d);
        expect_match(d, ref_d, tol_for(dt), what + " dlogits");
        // In place: the gradient overwrites the logits buffer.
        Tensor inplace = to_gpu(xq);
        kernels::cross_entropy_bwd(inplace, tgg, to_gpu(lse32), to_gpu(scale), c.ignore_index, inplace);
        expect_match(inplace, ref_d, tol_for(dt), what + " dlogits in place");
#ifdef NATSL_WITH_CUDA
        // One kernel for both, out of place and in place, each fused kernel (the ring kernel takes rows of
        // a multiple of 16 bytes; other rows fall back to the register-row kernel).
        for (bool ring : {false, true})
        for (bool in_place : {false, true}) {
          Tensor x2 = to_gpu(xq);
          Tensor l2 = gpu_poisoned({c.N}, DType::f32), s2 = gpu_poisoned({c.N}, DType::f32),
                 v2 = gpu_poisoned({c.N}, DType::f32);
          Tensor d2 = in_place ? x2 : gpu_poisoned({c.N, c.V}, dt);
          kernels::cuda::cross_entropy_fwd_bwd(x2, tgg, c.ignore_index, to_gpu(scale), l2, s2, v2, d2,
                                               kernels::cuda::CrossEntropyFusedPlan{ring});
          const std::string w2 = what + (in_place ? " fused in place" : " fused") + (ring ? " ring" : " rows");
          expect_match(l2, ref_loss, kStats, w2 + " losses");
          expect_match(s2, ref_lse, kStats, w2 + " lse");
          expect_match(v2, ref_valid, Tol{0, 0}, w2 + " valid");
          expect_match(d2, ref_d, tol_for(dt), w2 + " dlogits");
        }
#endif
      }
}

TEST(CudaCrossEntropy, AllRowsIgnoredGivesZeroLossAndGradient) {
  NATSL_REQUIRE_GPU();
  const CeCase c{9, 100, -100};
  Tensor xq = q(randn({c.N, c.V}, 5), DType::f32);
  Tensor tg = Tensor::full({c.N}, -100.0, DType::i64);
  Tensor loss = gpu_poisoned({c.N}, DType::f32), lse = gpu_poisoned({c.N}, DType::f32),
         valid = gpu_poisoned({c.N}, DType::f32);
  kernels::cross_entropy_fwd(to_gpu(xq), to_gpu(tg), -100, loss, lse, valid);
  for (double v : loss.to_vector<double>()) EXPECT_EQ(v, 0.0);
  for (double v : valid.to_vector<double>()) EXPECT_EQ(v, 0.0);
  Tensor d = gpu_poisoned({c.N, c.V}, DType::f32);
  kernels::cross_entropy_bwd(to_gpu(xq), to_gpu(tg), lse, to_gpu(Tensor::full({1}, 1.0)), -100, d);
  for (double v : d.to_vector<double>()) ASSERT_EQ(v, 0.0);
}

#ifdef NATSL_WITH_CUDA
// The autograd op on CUDA with grad takes the fused path (gradient computed in the forward, count of valid
// targets on the device). Loss and gradient against the CPU op in f64 on the same rounded logits, for a
// loss that is the root of the backward (incoming gradient 1) and one scaled afterwards (gradient -2.5).
TEST(CudaCrossEntropy, AutogradFusedPathMatchesCpu) {
  NATSL_REQUIRE_GPU();
  uint64_t seed = 400;
  for (DType dt : {DType::f32, DType::bf16})
    for (const CeCase& c : {CeCase{33, 1000, -100}, CeCase{17, 129, 3}, CeCase{8, 32000, -100}})
      for (double outer : {1.0, -2.5}) {
        const std::string what = case_name("autograd cross_entropy", dt, {c.N, c.V}) + " outer " +
                                 std::to_string(outer);
        Tensor xq = q(randn({c.N, c.V}, seed++, DType::f64, 4.0), dt);
        Tensor tg = make_targets(c, seed++, DType::i64);
        Tensor xc = f64(xq).detach();
        xc.set_requires_grad(true);
        Tensor ref = mul_scalar(cross_entropy(xc, tg, c.ignore_index), outer);
        ref.backward(Tensor(), false);
        Tensor xg = to_gpu(xq).detach();
        xg.set_requires_grad(true);
        Tensor loss = mul_scalar(cross_entropy(xg, to_gpu(tg), c.ignore_index), outer);
        loss.backward(Tensor(), false);
        expect_match(loss.reshape({1}).to(Device::cpu()), ref.reshape({1}), kStats, what + " loss");
        expect_match(xg.grad(), xc.grad(), tol_for(dt), what + " dlogits");
      }
}

// Both fused kernels on many rows per block: the ring kernel refills each of its 2-3 stages
// several times (600 rows of 64 KB at one block per SM; 1200 rows of 8008), out of place and in place.
TEST(CudaCrossEntropy, FusedVariantsOnManyRows) {
  NATSL_REQUIRE_GPU();
  uint64_t seed = 700;
  struct Big {
    DType dt;
    CeCase c;
  };
  for (const Big& b : {Big{DType::bf16, {600, 32000, -100}}, Big{DType::f32, {1200, 8008, -100}},
                       Big{DType::bf16, {1200, 8008, -100}}})
    for (bool ring : {false, true})
      for (bool in_place : {false, true}) {
        const CeCase& c = b.c;
        const std::string what = case_name("fused cross_entropy", b.dt, {c.N, c.V}) + (ring ? " ring" : " rows") +
                                 (in_place ? " in place" : "");
        Tensor xq = q(randn({c.N, c.V}, seed++, DType::f64, 4.0), b.dt);
        Tensor tg = make_targets(c, seed++, DType::i32);
        Tensor ref_loss = cpu_poisoned({c.N}), ref_lse = cpu_poisoned({c.N}), ref_valid = cpu_poisoned({c.N});
        kernels::cpu::cross_entropy_fwd(f64(xq), tg, c.ignore_index, ref_loss, ref_lse, ref_valid);
        Tensor scale = Tensor::full({1}, 0.37, DType::f32);
        Tensor ref_d = cpu_poisoned({c.N, c.V});
        kernels::cpu::cross_entropy_bwd(f64(xq), tg, f64(ref_lse.to(DType::f32)), scale.to(DType::f64),
                                        c.ignore_index, ref_d);
        Tensor x = to_gpu(xq);
        Tensor l = gpu_poisoned({c.N}, DType::f32), s = gpu_poisoned({c.N}, DType::f32),
               v = gpu_poisoned({c.N}, DType::f32);
        Tensor d = in_place ? x : gpu_poisoned({c.N, c.V}, b.dt);
        kernels::cuda::cross_entropy_fwd_bwd(x, to_gpu(tg), c.ignore_index, to_gpu(scale), l, s, v, d,
                                             kernels::cuda::CrossEntropyFusedPlan{ring});
        expect_match(l, ref_loss, kStats, what + " losses");
        expect_match(s, ref_lse, kStats, what + " lse");
        expect_match(v, ref_valid, Tol{0, 0}, what + " valid");
        expect_match(d, ref_d, tol_for(b.dt), what + " dlogits");
      }
}

TEST(CudaCrossEntropy, ValidCountAndScaleUnlessOne) {
  NATSL_REQUIRE_GPU();
  const CeCase c{1000, 10, -100};
  Tensor tg = make_targets(c, 7, DType::i32);  // rows 1 and i % 5 == 3 ignored: 1000 - 200 - 1
  Tensor count = gpu_poisoned({1}, DType::f32), inv = gpu_poisoned({1}, DType::f32);
  kernels::cuda::cross_entropy_valid_count(to_gpu(tg), c.ignore_index, count, inv);
  EXPECT_EQ(count.to_vector<double>()[0], 799.0);
  EXPECT_NEAR(inv.to_vector<double>()[0], 1.0 / 799.0, 1e-7 / 799.0);
  kernels::cuda::cross_entropy_valid_count(to_gpu(Tensor::full({5}, -100.0, DType::i64)), -100, count, inv);
  EXPECT_EQ(count.to_vector<double>()[0], 0.0);
  EXPECT_EQ(inv.to_vector<double>()[0], 1.0);
  for (DType dt : {DType::f32, DType::bf16})
    for (double a : {1.0, 0.5, -3.0}) {
      Tensor xq = q(randn({1001}, 9), dt);
      Tensor x = to_gpu(xq);
      kernels::cuda::scale_unless_one(x, to_gpu(Tensor::full({1}, a, DType::f32)));
      Tensor ref = f64(xq);
      kernels::scale(ref, a, ref);
      ref = f64(q(ref, dt));  // the device rounds the exact f32 product once to dt
      expect_match(x, ref, Tol{0, 0}, case_name("scale_unless_one", dt, {1001}) + " by " + std::to_string(a));
    }
}
#endif

// linear_cross_entropy (autograd/ops.h): cross_entropy(linear(h, w)) in row chunks, without the [N, V] logits.
// Loss, dh and dw against the composed ops (linear, then cross_entropy) for every chunking (one row, chunks that
// do not divide N, one chunk), ignored rows, an ignore index that is a class id, an incoming gradient of 1 and
// -2.5; then the dtypes, no-grad evaluation, all rows ignored, a second backward and bad shapes. On CUDA it takes
// the fused kernel and the device count (CudaLinearCrossEntropy).
namespace {

struct LceResult {
  Tensor loss, dh, dw;  // on the CPU, f64
};

// The loss (times outer) and the gradients of h and w, by linear_cross_entropy (chunk >= 0) or by the composed
// ops (chunk < 0), on fresh leaves of h and w as given (device, dtype).
LceResult lce_run(const Tensor& h, const Tensor& w, const Tensor& tg, int64_t ignore, double outer, int64_t chunk) {
  Tensor hl = h.detach(), wl = w.detach();
  hl.set_requires_grad(true);
  wl.set_requires_grad(true);
  const Tensor t = tg.to(h.device());
  Tensor loss = chunk >= 0 ? linear_cross_entropy(hl, wl, t, ignore, chunk) : cross_entropy(linear(hl, wl), t, ignore);
  loss = mul_scalar(loss, outer);
  loss.backward(Tensor(), false);
  auto cpu64 = [](const Tensor& x) { return x.to(kCPU).to(DType::f64); };
  return {cpu64(loss.reshape({1})), cpu64(hl.grad()), cpu64(wl.grad())};
}

}  // namespace

TEST(LinearCrossEntropy, MatchesTheComposedOpsForEveryChunking) {
  uint64_t seed = 900;
  for (const CeCase& c : {CeCase{1, 1, -100}, CeCase{13, 37, -100}, CeCase{40, 300, 3}})
    for (int64_t chunk : {0, 1, 3, 7, 64})
      for (double outer : {1.0, -2.5}) {
        const std::string what = "linear_cross_entropy N" + std::to_string(c.N) + " V" + std::to_string(c.V) +
                                 " chunk " + std::to_string(chunk) + " outer " + std::to_string(outer);
        const Tensor h = randn({c.N, 9}, seed++, DType::f64, 1.5), w = randn({c.V, 9}, seed++, DType::f64);
        const Tensor tg = make_targets(c, seed++, DType::i64);
        const LceResult ref = lce_run(h, w, tg, c.ignore_index, outer, -1);
        const LceResult got = lce_run(h, w, tg, c.ignore_index, outer, chunk);
        expect_match(got.loss, ref.loss, Tol{1e-13, 1e-13}, what + " loss");
        expect_match(got.dh, ref.dh, Tol{1e-12, 1e-12}, what + " dh");
        expect_match(got.dw, ref.dw, Tol{1e-12, 1e-12}, what + " dw");
      }
}

// The weight's gradient where training puts it: added into a .grad that already holds one (the engine's gradient
// sink, as the flat buffers of training always are) and shared with an embedding that reads the same weight (tied
// embeddings), against the composed ops on the same graph; incoming gradient 1 and 0.25.
TEST(LinearCrossEntropy, AddsIntoAnExistingGradAndSharesATiedWeight) {
  const CeCase c{23, 40, -100};
  const Tensor w0 = randn({c.V, 8}, 960, DType::f64, 0.7), tg = make_targets(c, 961, DType::i64);
  const Tensor ids = random_token_ids({c.N}, c.V, 962, DType::i64);
  for (double outer : {1.0, 0.25}) {
    Tensor grads[2];
    for (int fused = 0; fused < 2; ++fused) {
      Tensor w = w0.detach();
      w.set_requires_grad(true);
      for (int pass = 0; pass < 2; ++pass) {  // the second backward adds into the first one's .grad
        const Tensor h = mul_scalar(embedding(w, ids), 0.7);
        Tensor loss = fused ? linear_cross_entropy(h, w, tg, c.ignore_index, 4)
                            : cross_entropy(linear(h, w), tg, c.ignore_index);
        mul_scalar(loss, outer).backward();
      }
      grads[fused] = w.grad().to(DType::f64);
    }
    expect_match(grads[1], grads[0], Tol{1e-12, 1e-12}, "tied weight, two backwards, outer " + std::to_string(outer));
  }
}

TEST(LinearCrossEntropy, LowPrecisionCloseToF64AndI32Targets) {
  const CeCase c{29, 211, -100};
  const Tensor h = randn({c.N, 16}, 910, DType::f64), w = randn({c.V, 16}, 911, DType::f64, 0.5);
  const Tensor tg = make_targets(c, 912, DType::i32);
  for (DType dt : {DType::f32, DType::bf16}) {
    // The same rounded inputs for the reference: bf16 h and w are exact in f64.
    const Tensor hq = h.to(dt), wq = w.to(dt);
    const LceResult r = lce_run(hq.to(DType::f64), wq.to(DType::f64), tg, c.ignore_index, 1.0, -1);
    const LceResult got = lce_run(hq, wq, tg, c.ignore_index, 1.0, 5);
    const std::string what = "linear_cross_entropy " + dtype_str(dt);
    // bf16: the logits are rounded to bf16 before the loss (as linear's output is), so the loss moves by that.
    expect_match(got.loss, r.loss, dt == DType::bf16 ? Tol{5e-3, 5e-3} : kF32, what + " loss");
    expect_match(got.dh, r.dh, dt == DType::bf16 ? Tol{3e-2, 6e-2} : kF32, what + " dh");
    expect_match(got.dw, r.dw, dt == DType::bf16 ? Tol{3e-2, 6e-2} : kF32, what + " dw");
  }
}

TEST(LinearCrossEntropy, WithoutGradItIsTheLossAlone) {
  const CeCase c{21, 50, -100};
  const Tensor h = randn({c.N, 8}, 920, DType::f64), w = randn({c.V, 8}, 921, DType::f64);
  const Tensor tg = make_targets(c, 922, DType::i64);
  const double ref = cross_entropy(linear(h, w), tg, c.ignore_index).item();
  Tensor hl = h.detach(), wl = w.detach();
  hl.set_requires_grad(true);
  wl.set_requires_grad(true);
  NoGradGuard ng;
  const Tensor loss = linear_cross_entropy(hl, wl, tg, c.ignore_index, 4);
  EXPECT_NEAR(loss.item(), ref, 1e-13);
  EXPECT_FALSE(loss.requires_grad());
}

TEST(LinearCrossEntropy, AllRowsIgnoredGivesZeroLossAndGradients) {
  const Tensor tg = Tensor::from_vector(std::vector<int64_t>{kIgnore, kIgnore, kIgnore}, {3}, DType::i64);
  const LceResult got = lce_run(randn({3, 4}, 930, DType::f64), randn({6, 4}, 931, DType::f64), tg, kIgnore, 1.0, 2);
  EXPECT_EQ(got.loss.item(), 0.0);
  for (double g : host(got.dh)) EXPECT_EQ(g, 0.0);
  for (double g : host(got.dw)) EXPECT_EQ(g, 0.0);
}

TEST(LinearCrossEntropy, ASecondBackwardAndBadShapesAreRefused) {
  Tensor h = randn({4, 3}, 940, DType::f64).detach(), w = randn({5, 3}, 941, DType::f64).detach();
  h.set_requires_grad(true);
  w.set_requires_grad(true);
  const Tensor tg = Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 4}, {4}, DType::i64);
  Tensor loss = linear_cross_entropy(h, w, tg);
  loss.backward(Tensor(), true);
  EXPECT_THROW(loss.backward(Tensor(), false), Error);
  EXPECT_THROW(linear_cross_entropy(h, randn({5, 4}, 942, DType::f64), tg), Error);  // D differs
  EXPECT_THROW(linear_cross_entropy(h, w, tg.slice(0, 0, 3)), Error);               // N differs
  EXPECT_THROW(linear_cross_entropy(h, w.to(DType::f32), tg), Error);               // dtypes differ
  EXPECT_THROW(linear_cross_entropy(h, w, tg, kIgnore, -1), Error);                 // chunk rows
  EXPECT_THROW(linear_cross_entropy(h, w, Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 5}, {4}, DType::i64)),
               InputError);  // a target >= V
}

// On CUDA with grad: the fused kernel per chunk and the count of valid targets on the device. Against the
// composed ops on the GPU (the same products and kernels; the chunked dw sums its products in another order) and
// the loss against the f64 reference on the same rounded inputs.
TEST(CudaLinearCrossEntropy, MatchesTheComposedOps) {
  NATSL_REQUIRE_GPU();
  uint64_t seed = 950;
  for (DType dt : {DType::f32, DType::bf16})
    for (const CeCase& c : {CeCase{33, 1000, -100}, CeCase{17, 129, 3}, CeCase{300, 32000, -100}})
      for (int64_t chunk : {0, 5, 128})
        for (double outer : {1.0, -2.5}) {
          const std::string what = case_name("linear_cross_entropy", dt, {c.N, c.V}) + " chunk " +
                                   std::to_string(chunk) + " outer " + std::to_string(outer);
          const Tensor h = randn({c.N, 64}, seed++, DType::f64).to(dt), w = randn({c.V, 64}, seed++, DType::f64, 0.3).to(dt);
          const Tensor tg = make_targets(c, seed++, DType::i64);
          const LceResult ref = lce_run(h.to(Device::cuda(0)), w.to(Device::cuda(0)), tg, c.ignore_index, outer, -1);
          const LceResult got = lce_run(h.to(Device::cuda(0)), w.to(Device::cuda(0)), tg, c.ignore_index, outer, chunk);
          const LceResult r64 = lce_run(h.to(DType::f64), w.to(DType::f64), tg, c.ignore_index, outer, -1);
          expect_match(got.loss, ref.loss, kStats, what + " loss (GPU composed)");
          expect_match(got.loss, r64.loss, dt == DType::bf16 ? Tol{5e-3, 5e-3} : kF32, what + " loss (f64)");
          expect_match(got.dh, ref.dh, tol_for(dt), what + " dh");
          expect_match(got.dw, ref.dw, tol_for(dt), what + " dw");
        }
}
