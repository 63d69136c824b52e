// embedding, rmsnorm, l2norm, softmax, log_softmax, short_conv, swiglu: kernels against direct loops
// (outputs poisoned first) and the ops' backward by gradcheck.
#include <cmath>

#include "autograd/ops.h"
#include "kernels/nn.h"
#include "tests/ops/ops_test_util.h"

using namespace natsl;
using namespace natsl::testing;

namespace {
double sigm(double x) { return 1 / (1 + std::exp(-x)); }
}  // namespace

TEST(Embedding, ForwardGathersRowsAndBackwardAddsRepeats) {
  const int64_t V = 7, D = 3;
  Tensor w = randn({V, D}, 1);
  Tensor ids = Tensor::from_vector(std::vector<int32_t>{4, 0, 4, 6, 4, 1}, {2, 3}, DType::i32);
  Tensor out = poisoned({2, 3, D});
  kernels::embedding_fwd(w, ids, out);
  auto wv = host(w), ov = host(out);
  std::vector<int> idv{4, 0, 4, 6, 4, 1};
  for (int i = 0; i < 6; ++i)
    for (int d = 0; d < D; ++d) EXPECT_EQ(ov[size_t(i * D + d)], wv[size_t(idv[size_t(i)] * D + d)]);

  Tensor dout = randn({2, 3, D}, 2);
  Tensor dw = Tensor::full({V, D}, 0.5, DType::f64);  // accumulated into, not overwritten
  kernels::embedding_bwd(ids, dout, dw);
  auto gv = host(dout), dwv = host(dw);
  for (int v = 0; v < V; ++v)
    for (int d = 0; d < D; ++d) {
      double want = 0.5;
      for (int i = 0; i < 6; ++i)
        if (idv[size_t(i)] == v) want += gv[size_t(i * D + d)];
      EXPECT_NEAR(dwv[size_t(v * D + d)], want, 1e-15);
    }
}

TEST(Embedding, GradcheckWithRepeatedIds) {
  Tensor ids = random_ids({3, 5}, 4, 7);  // 15 draws from 4 ids: repeats are certain
  expect_gradcheck([ids](auto& v) { return embedding(v[0], ids); }, {leaf({4, 3}, 1)}, "embedding i64");
  Tensor ids32 = Tensor::from_vector(std::vector<int32_t>{2, 2, 0}, {3}, DType::i32);
  expect_gradcheck([ids32](auto& v) { return embedding(v[0], ids32); }, {leaf({3, 2}, 2)}, "embedding i32");
}

TEST(Embedding, OutOfRangeIdIsAnInputError) {
  Tensor w = randn({5, 2}, 1);
  EXPECT_THROW(embedding(w, Tensor::from_vector(std::vector<int64_t>{0, 5}, {2}, DType::i64)), InputError);
  EXPECT_THROW(embedding(w, Tensor::from_vector(std::vector<int32_t>{-1}, {1}, DType::i32)), InputError);
  EXPECT_THROW(embedding(w, Tensor::from_vector(std::vector<double>{0}, {1})), Error);  // float ids
}

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
