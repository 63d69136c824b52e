// The nn family (kernels/nn.h: rmsnorm, l2norm, softmax, short_conv, swiglu): the CPU kernels in
// f64 and bf16, then the CUDA kernels against the CPU reference (Cuda* suites, skipped without a GPU).
//
// rmsnorm, l2norm, softmax, log_softmax, short_conv, swiglu: kernels against direct loops
// (outputs poisoned first) and the ops' backward by gradcheck.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "autograd/ops.h"
#include "kernels/elementwise.h"
#include "kernels/cuda/rmsnorm_plan.h"
#include "kernels/cuda/short_conv_plan.h"
#include "kernels/nn.h"
#include "tests/cuda_test_util.h"
#include "tests/ops_test_util.h"

using namespace natsl;
using namespace natsl::testing;

namespace {
double sigm(double x) { return 1 / (1 + std::exp(-x)); }
}  // namespace

TEST(RmsNorm, ForwardMatchesLoop) {
  const int64_t R = 5, D = 7;
  const double eps = 1e-5;
  Tensor x = randn({R, D}, 1), w = randn({D}, 2);
  for (bool with_w : {true, false}) {
    Tensor y = poisoned({R, D}), rstd = poisoned({R});
    kernels::rmsnorm_fwd(x, with_w ? w : Tensor(), eps, y, rstd);
    auto xv = host(x), wv = host(w), yv = host(y), rv = host(rstd);
    for (int r = 0; r < R; ++r) {
      double ss = 0;
      for (int d = 0; d < D; ++d) ss += xv[size_t(r * D + d)] * xv[size_t(r * D + d)];
      double rs = 1 / std::sqrt(ss / D + eps);
      EXPECT_NEAR(rv[size_t(r)], rs, 1e-14);
      for (int d = 0; d < D; ++d)
        EXPECT_NEAR(yv[size_t(r * D + d)], xv[size_t(r * D + d)] * rs * (with_w ? wv[size_t(d)] : 1.0), 1e-14);
    }
  }
}

TEST(RmsNorm, Gradcheck) {
  expect_gradcheck([](auto& v) { return rmsnorm(v[0], v[1], 1e-5); }, {leaf({2, 3, 5}, 1), leaf({5}, 2)},
                   "rmsnorm with weight");
  expect_gradcheck([](auto& v) { return rmsnorm(v[0], Tensor(), 1e-5); }, {leaf({3, 1}, 3)}, "rmsnorm D=1");
  expect_gradcheck([](auto& v) { return rmsnorm(v[0], Tensor(), 0.1); }, {leaf({4, 6}, 4)}, "rmsnorm no weight");
}

TEST(RmsNorm, AccumulatedBackwardGivesTheBitsOfASeparateAdd) {
  // accumulate_dx (the autograd op writing into its input's pending gradient) must equal the engine's own
  // add of the plain dx into that gradient, bit for bit, in every dtype: recomputed models (whose checkpoint
  // gradients reach the residual stream by a separate add) are checked bit for bit against plain ones.
  uint64_t seed = 40;
  for (DType dt : {DType::f64, DType::f32, DType::bf16})
    for (const Shape& s : {Shape{3, 5}, Shape{2, 4, 33}, Shape{1, 1}})
      for (bool weighted : {true, false}) {
        const int64_t D = s.back();
        Tensor x = randn(s, seed++, DType::f64, 3.0).to(dt), dy = randn(s, seed++).to(dt);
        Tensor w = weighted ? rand_uniform({D}, seed++, 0.5, 1.5).to(dt) : Tensor();
        Tensor prior = randn(s, seed++, DType::f64, 2.0).to(dt);
        Tensor rstd = Tensor::empty(Shape(s.begin(), s.end() - 1), kernels::stat_dtype(dt));
        kernels::rmsnorm_fwd(x, w, 1e-6, Tensor::empty(s, dt), rstd);
        Tensor dx = Tensor::empty(s, dt), dw = weighted ? Tensor::empty({D}, dt) : Tensor();
        kernels::rmsnorm_bwd(x, w, rstd, dy, dx, dw);
        Tensor sum = Tensor::empty(s, dt);
        kernels::binary_fwd(kernels::BinaryOp::Add, prior, dx, sum);
        Tensor acc = prior.clone(), dw2 = weighted ? Tensor::empty({D}, dt) : Tensor();
        kernels::rmsnorm_bwd(x, w, rstd, dy, acc, dw2, /*accumulate_dx=*/true);
        const std::string what = std::string(dtype_name(dt)) + " " + shape_str(s) + (weighted ? " weighted" : "");
        EXPECT_EQ(0, std::memcmp(acc.data_ptr(), sum.data_ptr(), size_t(acc.nbytes()))) << what << " dx";
        if (weighted) {
          EXPECT_EQ(0, std::memcmp(dw.data_ptr(), dw2.data_ptr(), size_t(dw.nbytes()))) << what << " dw";
        }
      }
}

TEST(NnKernels, AccumulatedWeightGradientsGiveTheBitsOfASeparateAdd) {
  // accumulate_dw (autograd's weight-gradient sink: the gradient added into the parameter's .grad) equals the plain
  // weight gradient followed by AccumulateGrad's add (widened to .grad's dtype, added), bit for bit: rmsnorm's dw,
  // short_conv's and short_conv_l2norm's, in f64, f32, bf16 into bf16 and bf16 into f32 (the f32 sums themselves: no
  // bf16 rounding, checked against the bf16 gradient, their rounding).
  uint64_t seed = 60;
  struct Run {
    const char* name;
    Shape ws;
    std::function<void(const Tensor& dw, bool accumulate)> bwd;
  };
  for (DType dt : {DType::f64, DType::f32, DType::bf16}) {
    const Shape s{2, 13, 16};
    const int64_t group = 8;
    Tensor x = randn(s, seed++, DType::f64, 2.0).to(dt), dy = randn(s, seed++).to(dt);
    Tensor g = rand_uniform({16}, seed++, 0.5, 1.5).to(dt), cw = randn({16, 4}, seed++, DType::f64, 0.5).to(dt);
    Tensor rstd = Tensor::empty({2, 13}, kernels::stat_dtype(dt));
    kernels::rmsnorm_fwd(x, g, 1e-6, Tensor::empty(s, dt), rstd);
    Tensor y = Tensor::empty(s, dt), rnorm = Tensor::empty({2, 13, 2}, kernels::stat_dtype(dt));
    kernels::short_conv_l2norm_fwd(x, cw, true, group, 1e-6, y, rnorm);
    const Run runs[] = {
        {"rmsnorm", {16},
         [&](const Tensor& dw, bool acc) { kernels::rmsnorm_bwd(x, g, rstd, dy, Tensor::empty(s, dt), dw, false, acc); }},
        {"short_conv", {16, 4},
         [&](const Tensor& dw, bool acc) { kernels::short_conv_bwd(x, cw, true, dy, Tensor::empty(s, dt), dw, acc); }},
        {"short_conv_l2norm", {16, 4}, [&](const Tensor& dw, bool acc) {
           kernels::short_conv_l2norm_bwd(x, cw, true, group, y, rnorm, dy, Tensor::empty(s, dt), dw, acc);
         }}};
    const std::vector<DType> grad_dtypes =
        dt == DType::bf16 ? std::vector<DType>{dt, DType::f32} : std::vector<DType>{dt};
    for (const Run& r : runs)
      for (DType gdt : grad_dtypes) {
        const std::string what = std::string(r.name) + " " + std::string(dtype_name(dt)) + " into " +
                                 std::string(dtype_name(gdt));
        Tensor plain = poisoned(r.ws, gdt);
        r.bwd(plain, false);
        Tensor prior = randn(r.ws, seed++, DType::f64, 0.5).to(gdt);
        Tensor want = prior.clone();
        kernels::binary_fwd(kernels::BinaryOp::Add, want, plain, want);
        Tensor acc = prior.clone();
        r.bwd(acc, true);
        EXPECT_EQ(0, std::memcmp(acc.data_ptr(), want.data_ptr(), size_t(acc.nbytes()))) << what;
        if (dt == DType::bf16 && gdt == DType::f32) {
          Tensor rounded = poisoned(r.ws, DType::bf16);
          r.bwd(rounded, false);
          Tensor back = plain.to(DType::bf16);
          EXPECT_EQ(0, std::memcmp(back.data_ptr(), rounded.data_ptr(), size_t(back.nbytes())))
              << what << ": the bf16 gradient is not the f32 one rounded";
        }
      }
  }
  // An f32 weight gradient of f32 data is the only mixed case refused the other way round.
  Tensor x = randn({3, 8}, 1).to(DType::f32);
  Tensor rstd = Tensor::empty({3}, DType::f32);
  kernels::rmsnorm_fwd(x, Tensor(), 1e-6, Tensor::empty({3, 8}, DType::f32), rstd);
  EXPECT_THROW(kernels::rmsnorm_bwd(x, x.slice(0, 0, 1).view({8}).contiguous(), rstd, x, Tensor::empty({3, 8}, DType::f32),
                                    Tensor::empty({8}, DType::bf16), false, true),
               Error);
}

TEST(RmsNorm, GradientIntoTheResidualStreamEqualsSeparateUses) {
  // A pre-norm block h = u + f(rmsnorm(u)): the norm's backward adds its dx into u's pending gradient (from the
  // residual add) in place. The same function with a separate copy of u per use sums at the leaf instead.
  Tensor x = randn({2, 3, 8}, 50).set_requires_grad(true), w = rand_uniform({8}, 51, 0.5, 1.5).set_requires_grad(true);
  Tensor W = randn({8, 8}, 52).set_requires_grad(true), c = randn({2, 3, 8}, 53);
  auto loss_of = [&](const Tensor& u_res, const Tensor& u_norm) {
    return sum(mul(add(u_res, linear(rmsnorm(u_norm, w, 1e-6), W)), c));
  };
  {
    Tensor u = mul_scalar(x, 1.5);
    loss_of(u, u).backward();
  }
  const std::vector<double> shared = host(x.grad()), dw_shared = host(w.grad());
  Tensor x2 = x.detach().set_requires_grad(true), w2 = w.detach().set_requires_grad(true);
  Tensor W2 = W.detach().set_requires_grad(true);
  sum(mul(add(mul_scalar(x2, 1.5), linear(rmsnorm(mul_scalar(x2, 1.5), w2, 1e-6), W2)), c)).backward();
  const std::vector<double> separate = host(x2.grad()), dw_separate = host(w2.grad());
  ASSERT_EQ(shared.size(), separate.size());
  for (size_t i = 0; i < shared.size(); ++i) EXPECT_NEAR(shared[i], separate[i], 1e-12) << i;
  for (size_t i = 0; i < dw_shared.size(); ++i) EXPECT_EQ(dw_shared[i], dw_separate[i]) << i;
}

TEST(L2Norm, ForwardMatchesLoopAndGradcheck) {
  const int64_t R = 3, D = 5;
  Tensor x = randn({R, D}, 1), y = poisoned({R, D}), rn = poisoned({R});
  kernels::l2norm_fwd(x, 1e-6, y, rn);
  auto xv = host(x), yv = host(y);
  for (int r = 0; r < R; ++r) {
    double ss = 0;
    for (int d = 0; d < D; ++d) ss += xv[size_t(r * D + d)] * xv[size_t(r * D + d)];
    for (int d = 0; d < D; ++d) EXPECT_NEAR(yv[size_t(r * D + d)], xv[size_t(r * D + d)] / std::sqrt(ss + 1e-6), 1e-14);
  }
  expect_gradcheck([](auto& v) { return l2norm(v[0]); }, {leaf({2, 3, 7}, 2)}, "l2norm");
  expect_gradcheck([](auto& v) { return l2norm(v[0], 0.5); }, {leaf({4, 1}, 3)}, "l2norm D=1, large eps");
}

TEST(Softmax, ForwardMatchesLoopIncludingLargeLogits) {
  const int64_t R = 4, D = 9;
  Tensor x = randn({R, D}, 1, DType::f64, 3.0);
  std::vector<double> xv = host(x);
  xv[3] = 800;  // exp would overflow without the max shift
  x = Tensor::from_vector(xv, {R, D});
  Tensor p = poisoned({R, D}), lp = poisoned({R, D});
  kernels::softmax_fwd(x, p);
  kernels::log_softmax_fwd(x, lp);
  auto pv = host(p), lv = host(lp);
  for (int r = 0; r < R; ++r) {
    double m = -INFINITY;
    for (int d = 0; d < D; ++d) m = std::max(m, xv[size_t(r * D + d)]);
    double s = 0;
    for (int d = 0; d < D; ++d) s += std::exp(xv[size_t(r * D + d)] - m);
    for (int d = 0; d < D; ++d) {
      double z = xv[size_t(r * D + d)] - m;
      EXPECT_NEAR(pv[size_t(r * D + d)], std::exp(z) / s, 1e-15);
      EXPECT_NEAR(lv[size_t(r * D + d)], z - std::log(s), 1e-12);
    }
  }
}

TEST(Softmax, Gradcheck) {
  expect_gradcheck([](auto& v) { return softmax(v[0]); }, {leaf({2, 3, 5}, 1, -3, 3)}, "softmax");
  expect_gradcheck([](auto& v) { return log_softmax(v[0]); }, {leaf({3, 7}, 2, -3, 3)}, "log_softmax");
  expect_gradcheck([](auto& v) { return log_softmax(v[0]); }, {leaf({2, 1}, 3)}, "log_softmax D=1");
}

TEST(ShortConv, ForwardMatchesLoop) {
  const int64_t B = 2, T = 6, C = 3, W = 4;
  Tensor x = randn({B, T, C}, 1), w = randn({C, W}, 2);
  auto xv = host(x), wv = host(w);
  for (bool act : {false, true}) {
    Tensor y = poisoned({B, T, C});
    kernels::short_conv_fwd(x, w, act, y);
    auto yv = host(y);
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t)
        for (int c = 0; c < C; ++c) {
          double z = 0;
          for (int j = 0; j < W; ++j) {
            int s = t - int(W) + 1 + j;
            if (s >= 0) z += wv[size_t(c * W + j)] * xv[size_t((b * T + s) * C + c)];
          }
          double want = act ? z * sigm(z) : z;
          EXPECT_NEAR(yv[size_t((b * T + t) * C + c)], want, 1e-14);
        }
  }
}

TEST(ShortConv, GradcheckIncludingShortSequences) {
  for (bool act : {false, true}) {
    auto f = [act](auto& v) { return short_conv(v[0], v[1], act); };
    expect_gradcheck(f, {leaf({2, 7, 3}, 1), leaf({3, 4}, 2)}, "T > W");
    expect_gradcheck(f, {leaf({1, 2, 5}, 3), leaf({5, 4}, 4)}, "T < W");
    expect_gradcheck(f, {leaf({3, 1, 2}, 5), leaf({2, 3}, 6)}, "T = 1, W = 3");
  }
}

// short_conv_l2norm (the GDN front end's q and k in one node): on the CPU the two kernels composed, so the op's
// values and gradients are those of l2norm(short_conv(x)) on the [B, T, C / group, group] view, checked here against
// the composed autograd ops (bits) and by finite differences; bad groups are refused with the op's name.
TEST(ShortConvL2Norm, IsTheComposedOpsAndGradchecks) {
  struct Case {
    int64_t B, T, C, W, group;
  };
  for (const Case& c : {Case{2, 7, 6, 4, 3}, Case{1, 2, 8, 4, 8}, Case{3, 5, 4, 1, 2}, Case{1, 1, 5, 3, 1}})
    for (bool act : {false, true}) {
      std::string what = "B";  // appended piece by piece: GCC 12's -Wrestrict misfires on "B" + std::string
      for (const std::string& part : {std::to_string(c.B), " T" + std::to_string(c.T), " C" + std::to_string(c.C),
                                      " group " + std::to_string(c.group), std::string(act ? " silu" : "")})
        what += part;
      Tensor x = leaf({c.B, c.T, c.C}, 11), w = leaf({c.C, c.W}, 12);
      const Tensor dy = randn({c.B, c.T, c.C}, 13);
      // Values and gradients of one graph (x's and w's gradients start empty).
      auto run = [&](bool fused) {
        x.set_grad(Tensor());
        w.set_grad(Tensor());
        Tensor y = fused ? short_conv_l2norm(x, w, act, c.group, 1e-6)
                         : reshape(l2norm(reshape(short_conv(x, w, act), {c.B, c.T, c.C / c.group, c.group}), 1e-6),
                                   {c.B, c.T, c.C});
        y.backward(dy);
        return std::vector<std::vector<double>>{host(y), host(x.grad()), host(w.grad())};
      };
      const auto fused = run(true), composed = run(false);
      EXPECT_EQ(fused[0], composed[0]) << what << " y";
      EXPECT_EQ(fused[1], composed[1]) << what << " dx";
      EXPECT_EQ(fused[2], composed[2]) << what << " dw";
      expect_gradcheck([&](auto& v) { return short_conv_l2norm(v[0], v[1], act, c.group, 1e-3); },
                       {leaf({c.B, c.T, c.C}, 14), leaf({c.C, c.W}, 15)}, what.c_str());
    }
  // A group that does not divide the channels, and a statistics tensor of the wrong size: refused, naming them.
  Tensor x = randn({2, 3, 6}, 1), w = randn({6, 4}, 2);
  try {
    short_conv_l2norm(x, w, true, 4);
    ADD_FAILURE() << "group 4 of 6 channels accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("group 4"), std::string::npos) << e.what();
  }
  Tensor y = poisoned({2, 3, 6}), rn = poisoned({2, 3, 2});
  try {
    kernels::short_conv_l2norm_fwd(x, w, true, 2, 1e-6, y, rn);
    ADD_FAILURE() << "rnorm of 12 values for 18 groups accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rnorm must hold 18"), std::string::npos) << e.what();
  }
}

TEST(Swiglu, ForwardMatchesLoopAndGradcheck) {
  Tensor g = randn({3, 5}, 1, DType::f64, 3.0), u = randn({3, 5}, 2), y = poisoned({3, 5});
  kernels::swiglu_fwd(g, u, y);
  auto gv = host(g), uv = host(u), yv = host(y);
  for (size_t i = 0; i < gv.size(); ++i) EXPECT_NEAR(yv[i], gv[i] * sigm(gv[i]) * uv[i], 1e-14);
  expect_gradcheck([](auto& v) { return swiglu(v[0], v[1]); }, {leaf({2, 3, 5}, 3, -4, 4), leaf({2, 3, 5}, 4)},
                   "swiglu");
}

TEST(NnKernels, BackwardsWriteEveryOutput) {
  // Poisoned gradient outputs must come back finite (every element written, none left as NaN).
  Tensor x = randn({2, 5, 3}, 1), w = randn({3, 4}, 2), dy = randn({2, 5, 3}, 3);
  Tensor dx = poisoned({2, 5, 3}), dw = poisoned({3, 4});
  kernels::short_conv_bwd(x, w, true, dy, dx, dw);
  expect_all_finite(dx, "dx");
  expect_all_finite(dw, "dw");
  Tensor rw = randn({3}, 4), rstd = poisoned({2, 5}), y = poisoned({2, 5, 3}), drw = poisoned({3});
  kernels::rmsnorm_fwd(x, rw, 1e-6, y, rstd);
  dx = poisoned({2, 5, 3});
  kernels::rmsnorm_bwd(x, rw, rstd, dy, dx, drw);
  expect_all_finite(dx, "dx");
  expect_all_finite(drw, "drw");
  Tensor dg = poisoned({2, 5, 3}), du = poisoned({2, 5, 3});
  kernels::swiglu_bwd(x, y, dy, dg, du);
  expect_all_finite(dg, "dg");
  expect_all_finite(du, "du");
}

TEST(NnKernels, RejectBadArguments) {
  Tensor x = randn({2, 4}, 1);
  EXPECT_THROW(kernels::rmsnorm_fwd(x, randn({3}, 2), 1e-6, Tensor::empty({2, 4}, DType::f64),
                                    Tensor::empty({2}, DType::f64)), Error);  // weight size
  EXPECT_THROW(kernels::rmsnorm_fwd(x, Tensor(), 1e-6, Tensor::empty({2, 4}, DType::f64),
                                    Tensor::empty({2}, DType::f32)), Error);  // rstd dtype for f64 data
  EXPECT_THROW(kernels::softmax_fwd(x, Tensor::empty({4, 2}, DType::f64)), Error);
  EXPECT_THROW(kernels::short_conv_fwd(randn({2, 3, 4}, 3), randn({3, 4}, 4), false, Tensor::empty({2, 3, 4}, DType::f64)),
               Error);  // w has C = 3 for x with C = 4
  EXPECT_THROW(kernels::swiglu_fwd(x, randn({2, 5}, 5), Tensor::empty({2, 4}, DType::f64)), Error);
  EXPECT_THROW(kernels::softmax_fwd(x.transpose(0, 1), Tensor::empty({4, 2}, DType::f64)), Error);  // strided
}

// The nn kernels on bf16 data (what the CUDA kernels are compared against): same results as the f64
// reference on the same bf16-rounded inputs, up to the final rounding to bf16 (relative 2^-8).
using namespace natsl;
using namespace natsl::testing;

namespace {
constexpr double kBf16Rel = 8e-3;  // relative RMS: a few bf16 half-ulps

// x rounded through bf16, and that rounded value in f64 (the oracle's input).
struct Pair {
  Tensor lo, hi;
};
Pair bf16_pair(const Shape& s, uint64_t seed, double std = 1.0) {
  Tensor lo = randn(s, seed, DType::f64, std).to(DType::bf16);
  return {lo, lo.to(DType::f64)};
}
}  // namespace

TEST(NnKernelsBf16, MatchF64OnRoundedInputs) {
  Pair x = bf16_pair({3, 4, 33}, 1), w = bf16_pair({33}, 2);
  {
    Tensor y = poisoned({3, 4, 33}, DType::bf16), r = poisoned({3, 4}, DType::f32);
    Tensor y64 = poisoned({3, 4, 33}), r64 = poisoned({3, 4});
    kernels::rmsnorm_fwd(x.lo, w.lo, 1e-6, y, r);
    kernels::rmsnorm_fwd(x.hi, w.hi, 1e-6, y64, r64);
    EXPECT_CLOSE(y.to(DType::f64), y64, kBf16Rel, 0.05);
    EXPECT_CLOSE(r.to(DType::f64), r64, 1e-6, 1e-5);
  }
  {
    Tensor y = poisoned({3, 4, 33}, DType::bf16), y64 = poisoned({3, 4, 33});
    kernels::softmax_fwd(x.lo, y);
    kernels::softmax_fwd(x.hi, y64);
    EXPECT_CLOSE(y.to(DType::f64), y64, kBf16Rel, 0.01);
  }
  {
    Pair u = bf16_pair({3, 4, 33}, 3);
    Tensor y = poisoned({3, 4, 33}, DType::bf16), y64 = poisoned({3, 4, 33});
    kernels::swiglu_fwd(x.lo, u.lo, y);
    kernels::swiglu_fwd(x.hi, u.hi, y64);
    EXPECT_CLOSE(y.to(DType::f64), y64, kBf16Rel, 0.05);
  }
  {
    Pair cw = bf16_pair({33, 4}, 4, 0.5);
    Tensor y = poisoned({3, 4, 33}, DType::bf16), y64 = poisoned({3, 4, 33});
    kernels::short_conv_fwd(x.lo, cw.lo, true, y);
    kernels::short_conv_fwd(x.hi, cw.hi, true, y64);
    EXPECT_CLOSE(y.to(DType::f64), y64, kBf16Rel, 0.05);
  }
}

TEST(NnKernelsBf16, CrossEntropyStatisticsAreF32) {
  Pair logits = bf16_pair({6, 50}, 5, 3.0);
  Tensor targets = Tensor::from_vector(std::vector<int64_t>{0, 49, -100, 7, 7, 20}, {6}, DType::i64);
  Tensor l = poisoned({6}, DType::f32), s = poisoned({6}, DType::f32), v = poisoned({6}, DType::f32);
  Tensor l64 = poisoned({6}), s64 = poisoned({6}), v64 = poisoned({6});
  kernels::cross_entropy_fwd(logits.lo, targets, -100, l, s, v);
  kernels::cross_entropy_fwd(logits.hi, targets, -100, l64, s64, v64);
  EXPECT_CLOSE(l.to(DType::f64), l64, 1e-6, 1e-5);
  EXPECT_CLOSE(s.to(DType::f64), s64, 1e-6, 1e-5);
  EXPECT_CLOSE(v.to(DType::f64), v64, 0, 0);
  Tensor d = poisoned({6, 50}, DType::bf16), d64 = poisoned({6, 50});
  kernels::cross_entropy_bwd(logits.lo, targets, s, Tensor::full({1}, 0.2, DType::f32), -100, d);
  kernels::cross_entropy_bwd(logits.hi, targets, s64, Tensor::full({1}, 0.2, DType::f64), -100, d64);
  EXPECT_CLOSE(d.to(DType::f64), d64, kBf16Rel, 0.01);
}

// CUDA nn family (rmsnorm, l2norm, softmax, log-softmax, swiglu, short conv), forward and
// backward, against the CPU reference run in f64 on the same rounded inputs.
// Tolerances: outputs in the data dtype use kF32 / kBf16 (cuda_test_util.h); f32 statistics (rstd, rnorm)
// use kF32 for both dtypes (they are computed in f32 from the rounded inputs). Weight gradients summed over
// many rows (rmsnorm dw, short-conv dw) in f32 use kF32Sum (2e-5, 2e-4).
using namespace natsl;
using namespace natsl::testing;

namespace {

constexpr Tol kF32Sum{2e-5, 2e-4};
Tol sum_tol(DType dt) { return dt == DType::bf16 ? kBf16 : kF32Sum; }

// Row shapes: one row, one column, odd sizes, a row of 50000, many rows of a model width.
// {37, 1000}, {700, 2056}: widths that leave the last threads of the register-row rmsnorm backward partly
// idle; 700 rows: several rows per block.
const Shape kRowShapes[] = {{1, 1},    {1, 7},       {3, 5},    {2, 3, 33}, {513, 96}, {64, 4096},
                            {2, 50000}, {1000, 1}, {37, 1000}, {700, 2056}};

int64_t rows_of(const Shape& s) { return shape_numel(s) / s.back(); }


// The CUDA RMSNorm with a plan (a CPU-only build has none; its GPU tests skip before this).
void rmsnorm_fwd_with(const kernels::cuda::RmsnormPlan& plan, const Tensor& x, const Tensor& w, double eps,
                      const Tensor& y, const Tensor& rstd) {
#ifdef NATSL_WITH_CUDA
  kernels::cuda::rmsnorm_fwd(x, w, eps, y, rstd, plan);
#else
  (void)plan;
  kernels::rmsnorm_fwd(x, w, eps, y, rstd);
#endif
}
void rmsnorm_bwd_with(const kernels::cuda::RmsnormPlan& plan, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      const Tensor& dy, const Tensor& dx, const Tensor& dw, bool accumulate_dx = false,
                      bool accumulate_dw = false) {
#ifdef NATSL_WITH_CUDA
  kernels::cuda::rmsnorm_bwd(x, w, rstd, dy, dx, dw, plan, accumulate_dx, accumulate_dw);
#else
  (void)plan;
  kernels::rmsnorm_bwd(x, w, rstd, dy, dx, dw, accumulate_dx, accumulate_dw);
#endif
}

// A GPU weight gradient's accumulate mode (kernels/nn.h, accumulate_dw): bwd(dw, accumulate) runs a backward that
// writes its weight gradient [ws] into dw. Into dw of the data's dtype, and for bf16 data into an f32 dw too (the
// f32 sums: their bf16 rounding is the bf16 gradient), the accumulated gradient has the bits of the plain one followed
// by a separate add into the prior values.
void expect_weight_grad_accumulates(const Shape& ws, DType dt, const std::function<void(const Tensor&, bool)>& bwd,
                                    uint64_t seed, const std::string& what) {
  const std::vector<DType> grad_dtypes = dt == DType::bf16 ? std::vector<DType>{dt, DType::f32} : std::vector<DType>{dt};
  for (DType gdt : grad_dtypes) {
    const std::string wg = what + " dw into " + std::string(dtype_name(gdt));
    Tensor plain = gpu_poisoned(ws, gdt);
    bwd(plain, false);
    Tensor prior = to_gpu(q(randn(ws, seed++, DType::f64, 0.5), gdt));
    Tensor want = prior.clone();
    kernels::binary_fwd(kernels::BinaryOp::Add, want, plain, want);
    Tensor acc = prior.clone();
    bwd(acc, true);
    expect_same_bits(acc, want, wg + " accumulated");
    if (dt == DType::bf16 && gdt == DType::f32) {
      Tensor rounded = gpu_poisoned(ws, DType::bf16);
      bwd(rounded, false);
      expect_same_bits(plain.to(DType::bf16), rounded, wg + " (rounded to bf16)");
    }
  }
}

// Whether the default plan takes the shared-memory kernels for these tensors (false in a CPU-only build).
bool conv_plan_takes_chunks(const Tensor& x, const Tensor& dy, const kernels::cuda::ShortConvPlan& plan) {
#ifdef NATSL_WITH_CUDA
  return kernels::cuda::short_conv_takes_chunks(x, dy, plan);
#else
  (void)x, (void)dy, (void)plan;
  return false;
#endif
}

// The CUDA short convolution with a plan (likewise none in a CPU-only build).
void short_conv_with(const kernels::cuda::ShortConvPlan& plan, const Tensor& x, const Tensor& w, bool silu,
                     const Tensor& dy, const Tensor& y, const Tensor& dx, const Tensor& dw) {
#ifdef NATSL_WITH_CUDA
  kernels::cuda::short_conv_fwd(x, w, silu, y, plan);
  kernels::cuda::short_conv_bwd(x, w, silu, dy, dx, dw, plan);
#else
  (void)plan;
  kernels::short_conv_fwd(x, w, silu, y);
  kernels::short_conv_bwd(x, w, silu, dy, dx, dw);
#endif
}


}  // namespace

// One case per row shape (gtest shards, e.g. under compute-sanitizer, spread them): the shared row shapes, and
// head-sized rows for the short-row kernels' lane layouts (8, 16, 32 lanes with 1 vector each, 32 lanes with 2
// and 4; {37, 32}: 8 lanes in f32 too), row counts that are not multiples of their 4 rows per lane group (lane
// groups of one warp leave the row loop at different passes), and 70001 rows of 128, more than one pass of the
// grid over the rows on a GPU of <= 132 SMs.
namespace {
class CudaRmsNormShapes : public ::testing::TestWithParam<Shape> {};

std::vector<Shape> rmsnorm_shapes() {
  std::vector<Shape> shapes(std::begin(kRowShapes), std::end(kRowShapes));
  for (const Shape& s : {Shape{5, 64}, Shape{37, 32}, Shape{7, 512}, Shape{3, 1024}, Shape{1031, 128}, Shape{4, 9, 256},
                         Shape{70001, 128}})
    shapes.push_back(s);
  return shapes;
}

// "2x3x33": a parameterised case's name from its shape.
std::string shape_param_name(const ::testing::TestParamInfo<Shape>& info) {
  std::string n;
  for (int64_t d : info.param) {
    if (!n.empty()) n += 'x';
    n += std::to_string(d);
  }
  return n;
}
}  // namespace

TEST_P(CudaRmsNormShapes, ForwardAndBackwardWithAndWithoutWeight) {
  NATSL_REQUIRE_GPU();
  using Kernel = kernels::cuda::RmsnormPlan::Kernel;
  const auto name = [](Kernel k) {
    return k == Kernel::short_rows ? "short rows" : k == Kernel::row_in_registers ? "row in registers"
                                                  : k == Kernel::general        ? "general"
                                                                                : "automatic";
  };
  const Shape s = GetParam();
  uint64_t seed = 100 + 7 * uint64_t(shape_numel(s)) + s.size();
  const double eps = 1e-6;
  for (DType dt : {DType::f32, DType::bf16})
    for (bool weighted : {true, false}) {
      const int64_t D = s.back(), R = rows_of(s);
      const std::string what = case_name(weighted ? "rmsnorm" : "rmsnorm (no weight)", dt, s);
      Tensor xq = q(randn(s, seed++, DType::f64, 3.0), dt);
      Tensor wq = weighted ? q(rand_uniform({D}, seed++, 0.5, 1.5), dt) : Tensor();
      Tensor ref_y = cpu_poisoned(s), ref_r = cpu_poisoned({R});
      kernels::cpu::rmsnorm_fwd(f64(xq), weighted ? f64(wq) : Tensor(), eps, ref_y, ref_r);
      // Each forward kernel (the short-row one falls back to the general one for rows it does not take), and
      // the dispatcher's choice.
      for (Kernel k : {Kernel::short_rows, Kernel::general, Kernel::automatic}) {
        const std::string wf = what + " fwd " + name(k);
        Tensor y = gpu_poisoned(s, dt), r = gpu_poisoned({R}, DType::f32);
        if (k == Kernel::automatic) kernels::rmsnorm_fwd(to_gpu(xq), weighted ? to_gpu(wq) : Tensor(), eps, y, r);
        else rmsnorm_fwd_with({k}, to_gpu(xq), weighted ? to_gpu(wq) : Tensor(), eps, y, r);
        expect_match(y, ref_y, tol_for(dt), wf + " y");
        expect_match(r, ref_r, kF32, wf + " rstd");
      }

      Tensor dyq = q(randn(s, seed++), dt);
      Tensor rstd32 = ref_r.to(DType::f32);  // both sides use the same (f32) statistics
      Tensor ref_dx = cpu_poisoned(s), ref_dw = weighted ? cpu_poisoned({D}) : Tensor();
      kernels::cpu::rmsnorm_bwd(f64(xq), weighted ? f64(wq) : Tensor(), f64(rstd32), f64(dyq), ref_dx, ref_dw);
      // Each backward kernel: short rows (head-sized, vector-aligned rows), the row in registers (vector-aligned
      // rows that fit 512 threads), the general one, and the dispatcher's choice.
      for (Kernel k : {Kernel::short_rows, Kernel::row_in_registers, Kernel::general, Kernel::automatic}) {
        const kernels::cuda::RmsnormPlan plan{k};
        const std::string wv = what + " bwd " + name(k);
        Tensor dx = gpu_poisoned(s, dt), dw = weighted ? gpu_poisoned({D}, dt) : Tensor();
        rmsnorm_bwd_with(plan, to_gpu(xq), weighted ? to_gpu(wq) : Tensor(), to_gpu(rstd32), to_gpu(dyq), dx, dw);
        // dx = rstd (w dy - x rstd^2 mean(x w dy)): its terms are of size |dy| |w| rstd.
        const double terms = max_abs(dyq) * (weighted ? max_abs(wq) : 1.0) * max_abs(rstd32);
        expect_match(dx, ref_dx, tol_for(dt), wv + " dx", terms);
        if (weighted) {
          expect_match(dw, ref_dw, sum_tol(dt), wv + " dw");
          Tensor dx2 = gpu_poisoned(s, dt), dw2 = gpu_poisoned({D}, dt);
          rmsnorm_bwd_with(plan, to_gpu(xq), to_gpu(wq), to_gpu(rstd32), to_gpu(dyq), dx2, dw2);
          expect_same_bits(dw, dw2, wv + " dw");
          expect_same_bits(dx, dx2, wv + " dx");
        }
        if (weighted)
          expect_weight_grad_accumulates(
              {D}, dt,
              [&](const Tensor& dwx, bool acc) {
                rmsnorm_bwd_with(plan, to_gpu(xq), to_gpu(wq), to_gpu(rstd32), to_gpu(dyq), gpu_poisoned(s, dt), dwx,
                                 false, acc);
              },
              seed++, wv);
        // Added into a prior gradient (accumulate_dx): prior + dx with one rounding; dw unchanged.
        Tensor prior = q(randn(s, seed++, DType::f64, 2.0), dt);
        Tensor dxa = to_gpu(prior), dwa = weighted ? gpu_poisoned({D}, dt) : Tensor();
        rmsnorm_bwd_with(plan, to_gpu(xq), weighted ? to_gpu(wq) : Tensor(), to_gpu(rstd32), to_gpu(dyq), dxa, dwa,
                         /*accumulate_dx=*/true);
        std::vector<double> ref_sum = host(ref_dx);
        const std::vector<double> pv = host(prior);
        for (size_t i = 0; i < ref_sum.size(); ++i) ref_sum[i] += pv[i];
        expect_match(dxa, Tensor::from_vector(ref_sum, s, DType::f64), tol_for(dt), wv + " dx accumulated",
                     terms + max_abs(prior));
        if (weighted) expect_same_bits(dwa, dw, wv + " dw (accumulating dx)");
      }
    }
}
INSTANTIATE_TEST_SUITE_P(RowShapes, CudaRmsNormShapes, ::testing::ValuesIn(rmsnorm_shapes()), shape_param_name);

TEST(CudaL2Norm, ForwardAndBackward) {
  NATSL_REQUIRE_GPU();
  uint64_t seed = 200;
  const double eps = 1e-6;
  // Besides the shared row shapes: head-sized rows of 8, 64 and 128 vectors (the short-row kernel's warp
  // group layouts), with row counts that are not multiples of its 4 rows per group.
  std::vector<Shape> shapes(std::begin(kRowShapes), std::end(kRowShapes));
  for (const Shape& s : {Shape{5, 64}, Shape{7, 512}, Shape{3, 1024}, Shape{1031, 128}}) shapes.push_back(s);
  for (DType dt : {DType::f32, DType::bf16})
    for (const Shape& s : shapes) {
      const int64_t R = rows_of(s);
      const std::string what = case_name("l2norm", dt, s);
      Tensor xq = q(randn(s, seed++), dt);
      Tensor ref_y = cpu_poisoned(s), ref_r = cpu_poisoned({R});
      kernels::cpu::l2norm_fwd(f64(xq), eps, ref_y, ref_r);
      Tensor y = gpu_poisoned(s, dt), r = gpu_poisoned({R}, DType::f32);
      kernels::l2norm_fwd(to_gpu(xq), eps, y, r);
      expect_match(y, ref_y, tol_for(dt), what + " y");
      expect_match(r, ref_r, kF32, what + " rnorm");

      Tensor yq = q(ref_y, dt), dyq = q(randn(s, seed++), dt);
      Tensor rn32 = ref_r.to(DType::f32);
      Tensor ref_dx = cpu_poisoned(s);
      kernels::cpu::l2norm_bwd(f64(yq), f64(rn32), f64(dyq), ref_dx);
      Tensor dx = gpu_poisoned(s, dt);
      kernels::l2norm_bwd(to_gpu(yq), to_gpu(rn32), to_gpu(dyq), dx);
      // dx = rnorm (dy - y (y . dy)): terms of size |dy| rnorm (a width-1 row cancels to ~eps).
      expect_match(dx, ref_dx, tol_for(dt), what + " dx", max_abs(dyq) * max_abs(rn32));
    }
}

TEST(CudaSoftmax, SoftmaxAndLogSoftmaxForwardAndBackward) {
  NATSL_REQUIRE_GPU();
  uint64_t seed = 300;
  for (DType dt : {DType::f32, DType::bf16})
    for (const Shape& s : kRowShapes)
      for (double scale : {1.0, 30.0})  // 30: large logits, exp overflows without the max shift
        for (bool log : {false, true}) {
          const std::string what = case_name(log ? "log_softmax" : "softmax", dt, s) + " scale " + std::to_string(scale);
          Tensor xq = q(randn(s, seed++, DType::f64, scale), dt);
          Tensor ref_y = cpu_poisoned(s);
          if (log) kernels::cpu::log_softmax_fwd(f64(xq), ref_y);
          else kernels::cpu::softmax_fwd(f64(xq), ref_y);
          Tensor y = gpu_poisoned(s, dt);
          if (log) kernels::log_softmax_fwd(to_gpu(xq), y);
          else kernels::softmax_fwd(to_gpu(xq), y);
          expect_match(y, ref_y, tol_for(dt), what + " fwd");

          Tensor yq = q(ref_y, dt), dyq = q(randn(s, seed++), dt);
          Tensor ref_dx = cpu_poisoned(s);
          if (log) kernels::cpu::log_softmax_bwd(f64(yq), f64(dyq), ref_dx);
          else kernels::cpu::softmax_bwd(f64(yq), f64(dyq), ref_dx);
          Tensor dx = gpu_poisoned(s, dt);
          if (log) kernels::log_softmax_bwd(to_gpu(yq), to_gpu(dyq), dx);
          else kernels::softmax_bwd(to_gpu(yq), to_gpu(dyq), dx);
          // softmax: dx = y (dy - y . dy), terms of size |y| |dy| (peaky rows cancel far below them).
          const double terms = log ? 0.0 : max_abs(dyq) * max_abs(yq);
          expect_match(dx, ref_dx, tol_for(dt), what + " bwd", terms);
        }
}

TEST(CudaSwiglu, ForwardAndBackward) {
  NATSL_REQUIRE_GPU();
  uint64_t seed = 400;
  for (DType dt : {DType::f32, DType::bf16})
    for (const Shape& s : {Shape{1}, Shape{7}, Shape{3, 5}, Shape{17, 4097}, Shape{1000003}}) {
      const std::string what = case_name("swiglu", dt, s);
      Tensor gq = q(randn(s, seed++, DType::f64, 3.0), dt), uq = q(randn(s, seed++), dt);
      Tensor ref_y = cpu_poisoned(s);
      kernels::cpu::swiglu_fwd(f64(gq), f64(uq), ref_y);
      Tensor y = gpu_poisoned(s, dt);
      kernels::swiglu_fwd(to_gpu(gq), to_gpu(uq), y);
      expect_match(y, ref_y, tol_for(dt), what + " fwd");

      Tensor dyq = q(randn(s, seed++), dt);
      Tensor ref_dg = cpu_poisoned(s), ref_du = cpu_poisoned(s);
      kernels::cpu::swiglu_bwd(f64(gq), f64(uq), f64(dyq), ref_dg, ref_du);
      Tensor dg = gpu_poisoned(s, dt), du = gpu_poisoned(s, dt);
      kernels::swiglu_bwd(to_gpu(gq), to_gpu(uq), to_gpu(dyq), dg, du);
      expect_match(dg, ref_dg, tol_for(dt), what + " dgate");
      expect_match(du, ref_du, tol_for(dt), what + " dup");
    }
}

TEST(CudaShortConv, ForwardAndBackwardAllWidths) {
  NATSL_REQUIRE_GPU();
  struct Case {
    int64_t B, T, C;
  };
  // One step, T shorter than W, odd channels, long sequences (several tiles per sequence; on an H200 the last
  // case's forward tiles are 9 steps, not a multiple of the 8 steps read together).
  // bf16 with channels a multiple of 8 takes the shared-memory kernels (a partial block of 256 channels: 264).
  const Case cases[] = {{1, 1, 1},     {2, 3, 5},       {2, 37, 5},     {3, 300, 64},   {1, 1000, 33},
                        {2, 2049, 256}, {1, 4096, 1202}, {2, 500, 264}, {1, 77, 8}};
  uint64_t seed = 500;
  for (DType dt : {DType::f32, DType::bf16})
    for (int64_t W : {int64_t(1), int64_t(3), int64_t(4), int64_t(8)})
      for (const Case& c : cases)
        for (bool silu : {false, true}) {
          const Shape s{c.B, c.T, c.C};
          const std::string what =
              case_name("short_conv", dt, s) + " W " + std::to_string(W) + (silu ? " silu" : " identity");
          Tensor xq = q(randn(s, seed++), dt), wq = q(randn({c.C, W}, seed++, DType::f64, 0.5), dt);
          Tensor ref_y = cpu_poisoned(s);
          kernels::cpu::short_conv_fwd(f64(xq), f64(wq), silu, ref_y);
          Tensor y = gpu_poisoned(s, dt);
          kernels::short_conv_fwd(to_gpu(xq), to_gpu(wq), silu, y);
          expect_match(y, ref_y, tol_for(dt), what + " fwd");

          Tensor dyq = q(randn(s, seed++), dt);
          Tensor ref_dx = cpu_poisoned(s), ref_dw = cpu_poisoned({c.C, W});
          kernels::cpu::short_conv_bwd(f64(xq), f64(wq), silu, f64(dyq), ref_dx, ref_dw);
          Tensor dx = gpu_poisoned(s, dt), dw = gpu_poisoned({c.C, W}, dt);
          kernels::short_conv_bwd(to_gpu(xq), to_gpu(wq), silu, to_gpu(dyq), dx, dw);
          expect_match(dx, ref_dx, tol_for(dt), what + " dx");
          expect_match(dw, ref_dw, sum_tol(dt), what + " dw");
          expect_weight_grad_accumulates(
              {c.C, W}, dt,
              [&](const Tensor& dwx, bool acc) {
                kernels::short_conv_bwd(to_gpu(xq), to_gpu(wq), silu, to_gpu(dyq), gpu_poisoned(s, dt), dwx, acc);
              },
              seed++, what);
        }
}

// The shared-memory kernels (bf16, the default plan) give the per-channel kernels' bits: same tiles, same
// arithmetic (kernels/cuda/short_conv_plan.h). Every width; partial channel blocks; sequences that are not a
// multiple of the tile or of the chunk; and shapes whose tiles span several chunks in the forward too (the tile
// grows with B T C: on an H100 / H200 8x2048x2048 gives forward tiles of 62 steps, 16x4096x2048 of 248).
// One case per [B, T, C] (gtest shards spread them): tiny, odd and natsl-sized inputs, and two large ones whose
// forward tiles span several chunks.
namespace {
class CudaShortConvChunks : public ::testing::TestWithParam<Shape> {};
}  // namespace

TEST_P(CudaShortConvChunks, SharedMemoryChunksGiveThePerChannelKernelsBits) {
  NATSL_REQUIRE_GPU();
  const Shape s = GetParam();  // [B, T, C]
  const int64_t C = s[2];
  uint64_t seed = 900 + 7 * uint64_t(shape_numel(s));
  auto gpu_randn = [&](const Shape& s, double std) {  // drawn on the GPU (the large cases)
    Tensor t = Tensor::empty(s, DType::bf16, gpu());
    Generator g(seed++);
    normal_(t, g, 0.0, std);
    return t;
  };
  auto bit_equal = [](const Tensor& a, const Tensor& b) {
    const Tensor ha = a.to(Device::cpu()), hb = b.to(Device::cpu());
    return std::memcmp(ha.data_ptr(), hb.data_ptr(), size_t(ha.numel()) * dtype_size(ha.dtype())) == 0;
  };
  const Tensor x = gpu_randn(s, 1.0), dy = gpu_randn(s, 1.0);
  const bool big = shape_numel(s) > (int64_t(1) << 24);
  for (int64_t W = 1; W <= 8; ++W) {
    if (big && W != 4 && W != 3) continue;  // the large cases at natsl's width and an odd one
    const Tensor w = gpu_randn({C, W}, 0.5);
    for (bool silu : {false, true}) {
      SCOPED_TRACE(case_name("short_conv", DType::bf16, s) + " W " + std::to_string(W) + (silu ? " silu" : ""));
      EXPECT_TRUE(conv_plan_takes_chunks(x, dy, kernels::cuda::ShortConvPlan{}));  // else nothing is compared
      Tensor y[2], dx[2], dw[2];
      for (int p = 0; p < 2; ++p) {
        const kernels::cuda::ShortConvPlan plan{p == 0};
        y[p] = gpu_poisoned(s, DType::bf16);
        dx[p] = gpu_poisoned(s, DType::bf16);
        dw[p] = gpu_poisoned({C, W}, DType::bf16);
        short_conv_with(plan, x, w, silu, dy, y[p], dx[p], dw[p]);
      }
      EXPECT_TRUE(bit_equal(y[0], y[1])) << "y";
      EXPECT_TRUE(bit_equal(dx[0], dx[1])) << "dx";
      EXPECT_TRUE(bit_equal(dw[0], dw[1])) << "dw";
#ifdef NATSL_WITH_CUDA
      if (!big)
        for (int p = 0; p < 2; ++p)
          expect_weight_grad_accumulates(
              {C, W}, DType::bf16,
              [&](const Tensor& dwx, bool acc) {
                kernels::cuda::short_conv_bwd(x, w, silu, dy, gpu_poisoned(s, DType::bf16), dwx,
                                              kernels::cuda::ShortConvPlan{p == 0}, acc);
              },
              seed++, p == 0 ? "chunks" : "per channel");
#endif
    }
  }
}
INSTANTIATE_TEST_SUITE_P(Shapes, CudaShortConvChunks,
                         ::testing::Values(Shape{1, 1, 8}, Shape{2, 19, 16}, Shape{1, 77, 8}, Shape{2, 500, 264},
                                           Shape{3, 1031, 768}, Shape{1, 4096, 520}, Shape{8, 2048, 2048},
                                           Shape{16, 4096, 2048}),
                         shape_param_name);

// The fused CUDA short conv + l2norm (kernels/cuda/short_conv.cu) gives the bits of the composed CUDA kernels
// (short_conv_fwd then l2norm_fwd on the group view; l2norm_bwd then short_conv_bwd), outputs poisoned first: every
// width (1 to 8; 4 only on the large case), with and without SiLU, with and without dw, groups of 8 to 256 channels,
// partial channel blocks (C not a multiple of 256: 264, 384, 320, ...),
// sequences that are not a multiple of the tile or of the 16-step chunk, and natsl-340m's q / k (C 768, group 128)
// at a size whose tiles span several chunks. A group that does not divide 256 falls back to the composition.
namespace {
struct ConvNormCase {
  int64_t B, T, C, group;
};
class CudaShortConvL2Norm : public ::testing::TestWithParam<ConvNormCase> {};
std::string conv_norm_name(const ::testing::TestParamInfo<ConvNormCase>& i) {
  const ConvNormCase& c = i.param;
  std::string name = "B";  // appended piece by piece (GCC 12's -Wrestrict, as above)
  for (const std::string& part : {std::to_string(c.B), "_T" + std::to_string(c.T), "_C" + std::to_string(c.C),
                                  "_group" + std::to_string(c.group)})
    name += part;
  return name;
}
}  // namespace

TEST_P(CudaShortConvL2Norm, FusedKernelsGiveTheComposedKernelsBits) {
  NATSL_REQUIRE_GPU();
#ifdef NATSL_WITH_CUDA
  const ConvNormCase c = GetParam();
  const Shape s{c.B, c.T, c.C}, rs{c.B, c.T, c.C / c.group, c.group}, ns{c.B, c.T, c.C / c.group};
  uint64_t seed = 1700 + 13 * uint64_t(shape_numel(s)) + uint64_t(c.group);
  auto gpu_randn = [&](const Shape& sh, double std) {
    Tensor t = Tensor::empty(sh, DType::bf16, gpu());
    Generator g(seed++);
    normal_(t, g, 0.0, std);
    return t;
  };
  auto bits = [](const Tensor& a, const Tensor& b) {
    const Tensor ha = a.to(Device::cpu()), hb = b.to(Device::cpu());
    return ha.nbytes() == hb.nbytes() && std::memcmp(ha.data_ptr(), hb.data_ptr(), ha.nbytes()) == 0;
  };
  auto f32_poisoned = [](const Shape& sh) {
    Tensor t = Tensor::empty(sh, DType::f32, gpu());
    t.fill_(std::nan(""));
    return t;
  };
  const Tensor x = gpu_randn(s, 1.0), dy = gpu_randn(s, 1.0);
  const bool fused = c.group % 8 == 0 && c.group <= 256 && 256 % c.group == 0;
  const bool big = shape_numel(s) > (int64_t(1) << 22);
  for (int64_t W = 1; W <= 8; ++W) {
    if (big && W != 4) continue;
    if (W > 4 && c.T > 200) continue;  // the wide kernels on the short sequences only
    const Tensor w = gpu_randn({c.C, W}, 0.5);
    for (bool silu : {false, true}) {
      SCOPED_TRACE(conv_norm_name({c, 0}) + " W " + std::to_string(W) + (silu ? " silu" : ""));
      // The composition.
      Tensor act = gpu_poisoned(s, DType::bf16), y0 = gpu_poisoned(s, DType::bf16), rn0 = f32_poisoned(ns);
      kernels::short_conv_fwd(x, w, silu, act);
      kernels::l2norm_fwd(act.view(rs), 1e-6, y0.view(rs), rn0);
      Tensor dact = gpu_poisoned(s, DType::bf16), dx0 = gpu_poisoned(s, DType::bf16),
             dw0 = gpu_poisoned({c.C, W}, DType::bf16);
      kernels::l2norm_bwd(y0.view(rs), rn0, dy.view(rs), dact.view(rs));
      kernels::short_conv_bwd(x, w, silu, dact, dx0, dw0);
      // The fused kernels, called directly (they say whether they took the tensors), then the dispatcher.
      Tensor y1 = gpu_poisoned(s, DType::bf16), rn1 = f32_poisoned(ns);
      EXPECT_EQ(kernels::cuda::short_conv_l2norm_fwd(x, w, silu, c.group, 1e-6, y1, rn1), fused);
      Tensor dx1 = gpu_poisoned(s, DType::bf16), dw1 = gpu_poisoned({c.C, W}, DType::bf16);
      EXPECT_EQ(kernels::cuda::short_conv_l2norm_bwd(x, w, silu, c.group, y0, rn0, dy, dx1, dw1), fused);
      if (fused) {
        EXPECT_TRUE(bits(y1, y0)) << "y";
        EXPECT_TRUE(bits(rn1, rn0)) << "rnorm";
        EXPECT_TRUE(bits(dx1, dx0)) << "dx";
        EXPECT_TRUE(bits(dw1, dw0)) << "dw";
      }
      Tensor y2 = gpu_poisoned(s, DType::bf16), rn2 = f32_poisoned(ns);
      kernels::short_conv_l2norm_fwd(x, w, silu, c.group, 1e-6, y2, rn2);
      Tensor dx2 = gpu_poisoned(s, DType::bf16), dw2 = gpu_poisoned({c.C, W}, DType::bf16);
      kernels::short_conv_l2norm_bwd(x, w, silu, c.group, y0, rn0, dy, dx2, dw2);
      EXPECT_TRUE(bits(y2, y0)) << "y (dispatcher)";
      EXPECT_TRUE(bits(rn2, rn0)) << "rnorm (dispatcher)";
      EXPECT_TRUE(bits(dx2, dx0)) << "dx (dispatcher)";
      EXPECT_TRUE(bits(dw2, dw0)) << "dw (dispatcher)";
      // Without dw (the weight's gradient not wanted): dx alone, the same bits.
      Tensor dx3 = gpu_poisoned(s, DType::bf16);
      kernels::short_conv_l2norm_bwd(x, w, silu, c.group, y0, rn0, dy, dx3, Tensor());
      EXPECT_TRUE(bits(dx3, dx0)) << "dx without dw";
      // dw added into a prior (the f32 .grad sink): the plain gradient's bits followed by a separate add.
      if (!big)
        expect_weight_grad_accumulates(
            {c.C, W}, DType::bf16,
            [&](const Tensor& dwx, bool acc) {
              kernels::short_conv_l2norm_bwd(x, w, silu, c.group, y0, rn0, dy, gpu_poisoned(s, DType::bf16), dwx, acc);
            },
            seed++, "short_conv_l2norm");
    }
  }
#endif
}
INSTANTIATE_TEST_SUITE_P(Shapes, CudaShortConvL2Norm,
                         ::testing::Values(ConvNormCase{1, 1, 64, 64}, ConvNormCase{2, 19, 16, 8},
                                           ConvNormCase{2, 500, 264, 8}, ConvNormCase{1, 77, 48, 16},
                                           ConvNormCase{2, 300, 96, 32}, ConvNormCase{3, 1031, 768, 128},
                                           ConvNormCase{2, 130, 512, 256}, ConvNormCase{1, 40, 192, 96},
                                           ConvNormCase{2, 150, 384, 128}, ConvNormCase{2, 200, 320, 64},
                                           ConvNormCase{8, 2048, 768, 128}),
                         conv_norm_name);
