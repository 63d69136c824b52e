// The router family (kernels/router.h, kernels/cpu/router.cpp, kernels/cuda/router.cu): the CPU kernels
// against the oracle, then the CUDA kernels against the CPU reference (NatslCuda, skipped without a GPU).
//
// Router kernels (kernels/router.h): chunk mean-pool, straight-through hard choice with the last chunk forced
// to both ops, Gumbel option; against the f64 oracle and finite differences of the soft surrogate.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>

#include "core/philox.h"
#include "kernels/elementwise.h"
#include "kernels/mix_norm_gate.h"
#include "kernels/router.h"
#include "tests/kernels/oracle.h"
#include "tests/test_util.h"
#include "tests/kernels/router_mix_test_util.h"

using namespace natsl;
using namespace natsl::kernels;
using namespace natsl::testing;
using namespace natsl::testing::router_mix;  // the CPU-against-GPU cases' inputs and checks

namespace {

struct Choice {
  Tensor probs, mask_softmax, mask_gdn;
};
Choice choose(const RouterChoiceArgs& args, const Tensor& logits) {
  const DType st = logits.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Shape ms{logits.size(0), logits.size(1), logits.size(2)};
  Choice c{Tensor::empty(logits.shape(), st), Tensor::empty(ms, st), Tensor::empty(ms, st)};
  poison(c.probs);
  poison(c.mask_softmax);
  poison(c.mask_gdn);
  router_choice_fwd(args, logits, c.probs, c.mask_softmax, c.mask_gdn);
  return c;
}

Tensor choice_bwd(const RouterChoiceArgs& args, const Tensor& probs, const Tensor& dms, const Tensor& dmg) {
  Tensor d = Tensor::empty(probs.shape(), probs.dtype());
  poison(d);
  router_choice_bwd(args, probs, Tensor(), Tensor(), dms, dmg, d);
  return d;
}

// logits = pooled W^T viewed [B, NC, Hr, 2].
Tensor logits_of(const Tensor& pooled, const Tensor& W) {
  const int64_t B = pooled.size(0), NC = pooled.size(1), d = pooled.size(2), O = W.size(0);
  Tensor l = Tensor::zeros({B, NC, O / 2, 2}, DType::f64);
  for (int64_t n = 0; n < B * NC; ++n)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t e = 0; e < d; ++e) oracle::ptr(l)[n * O + o] += oracle::cptr(pooled)[n * d + e] * oracle::cptr(W)[o * d + e];
  return l;
}

Tensor pool(const Tensor& x, int64_t C) {
  Tensor p = Tensor::empty({x.size(0), (x.size(1) + C - 1) / C, x.size(2)}, x.dtype());
  poison(p);
  chunk_mean_pool_fwd(x, C, p);
  return p;
}

}  // namespace

// Partial last chunk averaged over its own tokens; the backward is the adjoint of that linear map.
TEST(Router, MeanPoolMatchesOracleAndItsAdjoint) {
  for (int64_t T : {130, 64, 1, 200}) {
    Tensor x = randn({2, T, 5}, 1);
    Tensor W = randn({4, 5}, 2);
    Tensor p = pool(x, 64);
    EXPECT_CLOSE(p, oracle::router_fwd(x, W, 64, true).pooled, 1e-15, 1e-15);
    Tensor dp = randn(p.shape(), 3);
    Tensor dx = Tensor::empty(x.shape(), DType::f64);
    poison(dx);
    chunk_mean_pool_bwd(dp, 64, dx);
    EXPECT_CLOSE(dx, oracle::finite_difference([&] { return oracle::inner(pool(x, 64), dp); }, x), 1e-8, 1e-9);
  }
}

// Hard labels = argmax (ties -> softmax), last chunk both ops when training, probs = softmax(logits / tau).
TEST(Router, ChoiceMatchesOracleArgmax) {
  Tensor x = randn({2, 150, 6}, 4);
  Tensor W = randn({6, 6}, 5);  // Hr = 3
  for (bool training : {true, false})
    for (double tau : {1.0, 0.5}) {
      const oracle::RouterOut o = oracle::router_fwd(x, W, 64, training, tau);
      const Choice c = choose({.tau = tau, .force_last_both = training}, o.logits);
      EXPECT_CLOSE(c.probs, o.probs, 1e-15, 1e-15);
      EXPECT_EQ(c.mask_softmax.to_vector<double>(), o.mask_softmax.to_vector<double>());
      EXPECT_EQ(c.mask_gdn.to_vector<double>(), o.mask_gdn.to_vector<double>());
    }
  // Ties go to softmax; a clear GDN preference picks GDN; the last chunk is forced to (1, 1) in training only.
  Tensor logits = Tensor::from_vector<double>({0.3, 0.3, -1.0, 2.0, 5.0, 1.0}, {1, 3, 1, 2});
  Choice t = choose({}, logits);
  EXPECT_EQ(t.mask_softmax.to_vector<double>(), (std::vector<double>{1, 0, 1}));
  EXPECT_EQ(t.mask_gdn.to_vector<double>(), (std::vector<double>{0, 1, 1}));
  Choice e = choose({.force_last_both = false}, logits);
  EXPECT_EQ(e.mask_softmax.to_vector<double>(), (std::vector<double>{1, 0, 1}));
  EXPECT_EQ(e.mask_gdn.to_vector<double>(), (std::vector<double>{0, 1, 0}));
}

// Gumbel: the noise of element n is -log(-log U_n), U_n = philox_uniform(seed, offset + n).
TEST(Router, GumbelChoiceMatchesOracle) {
  Tensor x = randn({2, 200, 4}, 6);
  Tensor W = randn({4, 4}, 7, DType::f64, 0.1);  // small logits: the noise decides most labels
  const oracle::RouterOut o = oracle::router_fwd(x, W, 64, true, 0.7, true, 1234, 8);
  const Choice c = choose({.tau = 0.7, .gumbel = true, .seed = 1234, .offset = 8}, o.logits);
  EXPECT_CLOSE(c.probs, o.probs, 1e-6, 1e-6);  // the uniforms are f32
  EXPECT_EQ(c.mask_softmax.to_vector<double>(), o.mask_softmax.to_vector<double>());
  EXPECT_EQ(c.mask_gdn.to_vector<double>(), o.mask_gdn.to_vector<double>());
  const Choice plain = choose({.tau = 0.7}, o.logits);
  EXPECT_NE(plain.mask_softmax.to_vector<double>(), c.mask_softmax.to_vector<double>());
}

// Straight-through: dlogits is the gradient of the soft surrogate <probs, dm> (last chunk's dm dropped in
// training), for argmax and Gumbel, several temperatures.
TEST(Router, ChoiceBackwardIsGradientOfSoftSurrogate) {
  Tensor logits = randn({2, 3, 2, 2}, 9);
  Tensor dms = randn({2, 3, 2}, 10), dmg = randn({2, 3, 2}, 11);
  for (bool gumbel : {false, true})
    for (bool training : {true, false})
      for (double tau : {1.0, 0.3}) {
        const RouterChoiceArgs args{.tau = tau, .gumbel = gumbel, .seed = 5, .offset = 0, .force_last_both = training};
        const Choice c = choose(args, logits);
        const Tensor d = choice_bwd(args, c.probs, dms, dmg);
        auto surrogate = [&] {
          const Choice s = choose(args, logits);
          double L = 0;
          for (int64_t row = 0; row < dms.numel(); ++row) {
            if (training && (row / 2) % 3 == 2) continue;  // last chunk (NC = 3, Hr = 2)
            L += oracle::cptr(s.probs)[2 * row] * oracle::cptr(dms)[row] +
                 oracle::cptr(s.probs)[2 * row + 1] * oracle::cptr(dmg)[row];
          }
          return L;
        };
        EXPECT_CLOSE(d, oracle::finite_difference(surrogate, logits), 1e-8, 1e-9);
      }
  // Undefined dm tensors count as zero.
  const Choice c = choose({}, logits);
  const Tensor only_gdn = choice_bwd({}, c.probs, Tensor(), dmg);
  const Tensor with_zero = choice_bwd({}, c.probs, Tensor::zeros(dms.shape(), DType::f64), dmg);
  EXPECT_CLOSE(only_gdn, with_zero, 0.0, 0.0);
}

// The whole router chain x -> pool -> logits -> choice, backward to W and x, against natsl-layer.md §4.2's
// assembly: the finite differences of the soft surrogate with respect to W and x.
TEST(Router, ChainGradientsToWeightsAndInput) {
  const int64_t C = 64;
  Tensor x = randn({2, 150, 5}, 12);
  Tensor W = randn({4, 5}, 13);
  Tensor dms = randn({2, 3, 2}, 14), dmg = randn({2, 3, 2}, 15);
  const RouterChoiceArgs args{};
  Tensor pooled = pool(x, C);
  const Choice c = choose(args, logits_of(pooled, W));
  Tensor dl = choice_bwd(args, c.probs, dms, dmg);  // [B, NC, Hr, 2] = [B * NC, 2 Hr]
  Tensor dW = Tensor::zeros(W.shape(), DType::f64), dpooled = Tensor::zeros(pooled.shape(), DType::f64);
  for (int64_t n = 0; n < 6; ++n)
    for (int64_t o = 0; o < 4; ++o)
      for (int64_t e = 0; e < 5; ++e) {
        oracle::ptr(dW)[o * 5 + e] += oracle::cptr(dl)[n * 4 + o] * oracle::cptr(pooled)[n * 5 + e];
        oracle::ptr(dpooled)[n * 5 + e] += oracle::cptr(dl)[n * 4 + o] * oracle::cptr(W)[o * 5 + e];
      }
  Tensor dx = Tensor::empty(x.shape(), DType::f64);
  chunk_mean_pool_bwd(dpooled, C, dx);
  auto surrogate = [&] {
    const oracle::RouterOut o = oracle::router_fwd(x, W, C, true);
    double L = 0;
    for (int64_t row = 0; row < 12; ++row) {
      if ((row / 2) % 3 == 2) continue;
      L += oracle::cptr(o.probs)[2 * row] * oracle::cptr(dms)[row] + oracle::cptr(o.probs)[2 * row + 1] * oracle::cptr(dmg)[row];
    }
    return L;
  };
  EXPECT_CLOSE(dW, oracle::finite_difference(surrogate, W), 1e-7, 1e-8);
  EXPECT_CLOSE(dx, oracle::finite_difference(surrogate, x), 1e-7, 1e-8);
}

TEST(Router, ChunkMeanPoolAccumulatedBackwardGivesTheBitsOfASeparateAdd) {
  // accumulate (the op adding into its input's pending gradient) equals the plain dx followed by an add, bit for bit.
  for (DType dt : {DType::f64, DType::f32, DType::bf16}) {
    const int64_t B = 2, T = 37, d = 5, C = 8, NC = (T + C - 1) / C;
    Tensor dp = randn({B, NC, d}, 30).to(dt), prior = randn({B, T, d}, 31).to(dt);
    Tensor dx = Tensor::empty({B, T, d}, dt);
    chunk_mean_pool_bwd(dp, C, dx);
    Tensor want = Tensor::empty({B, T, d}, dt);
    kernels::binary_fwd(kernels::BinaryOp::Add, prior, dx, want);
    Tensor acc = prior.clone();
    chunk_mean_pool_bwd(dp, C, acc, /*accumulate=*/true);
    EXPECT_EQ(0, std::memcmp(acc.data_ptr(), want.data_ptr(), size_t(acc.nbytes()))) << dtype_name(dt);
  }
}

TEST(Router, RejectsBadArguments) {
  Tensor logits = randn({1, 2, 1, 2}, 16);
  Tensor p = Tensor::empty(logits.shape(), DType::f64), m = Tensor::empty({1, 2, 1}, DType::f64);
  EXPECT_THROW(router_choice_fwd({.tau = 0.0}, logits, p, m, m.clone()), Error);
  EXPECT_THROW(router_choice_fwd({}, logits, p, Tensor::empty({1, 2, 2}, DType::f64), m), Error);
  EXPECT_THROW(chunk_mean_pool_fwd(randn({1, 65, 3}, 17), 64, Tensor::empty({1, 1, 3}, DType::f64)), Error);
}

// CUDA router kernels (chunk mean-pool, straight-through choice) against the CPU reference run in f64 on the
// same rounded inputs: f32 to ~1e-6 relative, bf16 to its rounding. Router labels must equal the CPU's exactly,
// with and without Gumbel noise. Awkward shapes (odd widths, one token, partial chunks); every GPU output
// starts as NaN.

TEST(NatslCuda, ChunkMeanPoolMatchesCpu) {
  NATSL_REQUIRE_GPU();
  struct S {
    int64_t B, T, d, C;
  };
  for (DType dt : {DType::f32, DType::bf16})
    for (S s : {S{1, 1, 1, 64}, S{3, 37, 5, 64}, S{2, 130, 7, 64}, S{2, 256, 128, 64}, S{1, 1000, 33, 16},
                S{2, 130, 1024, 64}}) {
      SCOPED_TRACE(std::string(name(dt)) + " T=" + std::to_string(s.T) + " d=" + std::to_string(s.d));
      const int64_t NC = (s.T + s.C - 1) / s.C;
      Data x = make({s.B, s.T, s.d}, 1 + uint64_t(s.T), dt);
      Tensor ref = Tensor::empty({s.B, NC, s.d}, DType::f64);
      chunk_mean_pool_fwd(x.f64, s.C, ref);
      Tensor got = poisoned({s.B, NC, s.d}, dt, kGpu);
      chunk_mean_pool_fwd(x.low.to(kGpu), s.C, got);
      expect_close(got, ref, tol_for(dt), "pooled");

      Data dp = make({s.B, NC, s.d}, 7 + uint64_t(s.T), dt);
      Tensor dref = Tensor::empty({s.B, s.T, s.d}, DType::f64);
      chunk_mean_pool_bwd(dp.f64, s.C, dref);
      Tensor dgot = poisoned({s.B, s.T, s.d}, dt, kGpu);
      chunk_mean_pool_bwd(dp.low.to(kGpu), s.C, dgot);
      expect_close(dgot, dref, tol_for(dt), "dx");
      // Added into a prior (accumulate: the op's input_grad_sink): the plain dx followed by an add, bit for bit.
      Tensor prior = make({s.B, s.T, s.d}, 9 + uint64_t(s.T), dt).low.to(kGpu);
      Tensor want = Tensor::empty(prior.shape(), dt, kGpu);
      kernels::binary_fwd(kernels::BinaryOp::Add, prior, dgot, want);
      Tensor acc = prior.clone();
      chunk_mean_pool_bwd(dp.low.to(kGpu), s.C, acc, /*accumulate=*/true);
      const Tensor ha = acc.to(kCPU), hw = want.to(kCPU);
      EXPECT_EQ(0, std::memcmp(ha.data_ptr(), hw.data_ptr(), size_t(ha.nbytes()))) << "dx accumulated";
    }
}

TEST(NatslCuda, RouterChoiceMatchesCpu) {
  NATSL_REQUIRE_GPU();
  struct S {
    int64_t B, NC, Hr;
  };
  for (DType dt : {DType::f32, DType::bf16})
    for (S s : {S{1, 1, 1}, S{2, 5, 3}, S{8, 64, 6}, S{3, 257, 2}})
      for (bool gumbel : {false, true})
        for (bool force : {true, false}) {
          SCOPED_TRACE(std::string(name(dt)) + " NC=" + std::to_string(s.NC) + (gumbel ? " gumbel" : "") +
                       (force ? " force_last" : ""));
          RouterChoiceArgs args;
          args.gumbel = gumbel;
          args.tau = gumbel ? 0.6 : 1.0;
          args.seed = 1234;
          args.offset = 4 * uint64_t(s.NC);
          args.force_last_both = force;
          const Shape ls{s.B, s.NC, s.Hr, 2}, ms{s.B, s.NC, s.Hr};
          // The CPU reference in f32 (labels and probs are computed in double from the f32 value of the logit).
          Tensor logits = randn(ls, 11 + uint64_t(s.NC), DType::f64).to(dt);
          Tensor probs = Tensor::empty(ls, DType::f32), m0 = Tensor::empty(ms, DType::f32),
                 m1 = Tensor::empty(ms, DType::f32);
          router_choice_fwd(args, logits, probs, m0, m1);
          Tensor gp = poisoned(ls, DType::f32, kGpu), g0 = poisoned(ms, DType::f32, kGpu),
                 g1 = poisoned(ms, DType::f32, kGpu);
          router_choice_fwd(args, logits.to(kGpu), gp, g0, g1);
          EXPECT_EQ(compare(g0.to(kCPU), m0).max_abs, 0.0) << "softmax labels";
          EXPECT_EQ(compare(g1.to(kCPU), m1).max_abs, 0.0) << "GDN labels";
          EXPECT_LE(compare(gp.to(kCPU), probs).max_abs, 1e-7);

          // Backward with every optional input present, then with the masks / one mask gradient absent.
          Tensor ds = randn(ms, 21, DType::f32), dg = randn(ms, 22, DType::f32);
          for (int variant = 0; variant < 3; ++variant) {
            SCOPED_TRACE(variant);
            const bool masks = variant != 1, with_dg = variant != 2;
            Tensor dref = Tensor::empty(ls, dt);
            router_choice_bwd(args, probs, masks ? m0 : Tensor(), masks ? m1 : Tensor(), ds, with_dg ? dg : Tensor(),
                              dref);
            Tensor dgot = poisoned(ls, dt, kGpu);
            router_choice_bwd(args, probs.to(kGpu), masks ? m0.to(kGpu) : Tensor(), masks ? m1.to(kGpu) : Tensor(),
                              ds.to(kGpu), with_dg ? dg.to(kGpu) : Tensor(), dgot);
            const ErrorStats e = compare(dgot.to(kCPU).to(DType::f64), dref.to(DType::f64));
            EXPECT_TRUE(e.finite);
            EXPECT_LE(e.max_abs, dt == DType::bf16 ? 4e-3 : 1e-7);
          }
        }
}
