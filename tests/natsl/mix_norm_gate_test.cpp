// Output mixing (kernels/mix_norm_gate.h): forward against the f64 oracle, backward against finite
// differences of <y, dy>, low precision against f64.
#include <gtest/gtest.h>

#include "kernels/mix_norm_gate.h"
#include "tests/natsl/oracle.h"
#include "tests/test_util.h"

using namespace natsl;
using namespace natsl::kernels;
using natsl::testing::poison;
using natsl::testing::randn;

namespace {

constexpr double kEps = 1e-6;

struct Inputs {
  Tensor og, oa, wlogits, z, gamma_g, gamma_a, dy;
};
Inputs make_inputs(const Shape& rows, int64_t D, uint64_t seed) {
  Shape s = rows, w = rows;
  s.push_back(D);
  w.push_back(2);
  return {randn(s, seed), randn(s, seed + 1, DType::f64, 3.0), randn(w, seed + 2), randn(s, seed + 3),
          natsl::testing::rand_uniform({D}, seed + 4, 0.5, 1.5), natsl::testing::rand_uniform({D}, seed + 5, 0.5, 1.5),
          randn(s, seed + 6)};
}

Inputs cast(const Inputs& in, DType dt) {
  return {in.og.to(dt), in.oa.to(dt), in.wlogits.to(dt), in.z.to(dt), in.gamma_g.to(dt), in.gamma_a.to(dt),
          in.dy.to(dt)};
}

struct Out {
  Tensor y, rstd_g, rstd_a;
};
Out forward(const Inputs& in) {
  const DType st = in.og.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Shape rows(in.og.shape().begin(), in.og.shape().end() - 1);
  Out o{Tensor::empty(in.og.shape(), in.og.dtype()), Tensor::empty(rows, st), Tensor::empty(rows, st)};
  poison(o.y);
  poison(o.rstd_g);
  poison(o.rstd_a);
  mix_norm_gate_fwd(in.og, in.oa, in.wlogits, in.z, in.gamma_g, in.gamma_a, kEps, o.y, o.rstd_g, o.rstd_a);
  return o;
}

struct Grads {
  Tensor dog, doa, dwlogits, dz, dgamma_g, dgamma_a;
};
Grads backward(const Inputs& in, const Out& o) {
  auto e = [](const Tensor& like) {
    Tensor t = Tensor::empty(like.shape(), like.dtype());
    poison(t);
    return t;
  };
  Grads g{e(in.og), e(in.oa), e(in.wlogits), e(in.z), e(in.gamma_g), e(in.gamma_a)};
  mix_norm_gate_bwd(in.og, in.oa, in.wlogits, in.z, in.gamma_g, in.gamma_a, o.rstd_g, o.rstd_a, in.dy, g.dog, g.doa,
                    g.dwlogits, g.dz, g.dgamma_g, g.dgamma_a);
  return g;
}

}  // namespace

TEST(MixNormGate, ForwardMatchesOracle) {
  const Inputs in = make_inputs({2, 7, 3}, 5, 1);
  const Out o = forward(in);
  EXPECT_CLOSE(o.y, oracle::mix_fwd(in.og, in.oa, in.wlogits, in.z, in.gamma_g, in.gamma_a, kEps), 1e-14, 1e-13);
  // rstd of the first row, directly.
  double s = 0;
  for (int64_t e = 0; e < 5; ++e) s += oracle::cptr(in.og)[e] * oracle::cptr(in.og)[e];
  EXPECT_NEAR(oracle::cptr(o.rstd_g)[0], 1 / std::sqrt(s / 5 + kEps), 1e-14);
}

TEST(MixNormGate, BackwardMatchesFiniteDifferences) {
  for (int64_t D : {5, 2}) {
    const Inputs in = make_inputs({3, 2}, D, 10 + uint64_t(D));
    const Grads g = backward(in, forward(in));
    auto loss = [&] {
      return oracle::inner(oracle::mix_fwd(in.og, in.oa, in.wlogits, in.z, in.gamma_g, in.gamma_a, kEps), in.dy);
    };
    EXPECT_CLOSE(g.dog, oracle::finite_difference(loss, in.og), 1e-7, 1e-7);
    EXPECT_CLOSE(g.doa, oracle::finite_difference(loss, in.oa), 1e-7, 1e-7);
    EXPECT_CLOSE(g.dwlogits, oracle::finite_difference(loss, in.wlogits), 1e-7, 1e-7);
    EXPECT_CLOSE(g.dz, oracle::finite_difference(loss, in.z), 1e-7, 1e-7);
    EXPECT_CLOSE(g.dgamma_g, oracle::finite_difference(loss, in.gamma_g), 1e-7, 1e-7);
    EXPECT_CLOSE(g.dgamma_a, oracle::finite_difference(loss, in.gamma_a), 1e-7, 1e-7);
  }
}

TEST(MixNormGate, LowPrecisionCloseToF64) {
  const Inputs in = make_inputs({4, 6}, 16, 20);
  const Out ref = forward(in);
  const Grads gref = backward(in, ref);
  for (DType dt : {DType::f32, DType::bf16}) {
    const Inputs low = cast(in, dt);
    const Out o = forward(low);
    const Grads g = backward(low, o);
    const double tol = dt == DType::f32 ? 1e-5 : 2e-2;
    EXPECT_CLOSE(o.y.to(DType::f64), ref.y, tol, 10 * tol);
    EXPECT_CLOSE(g.dog.to(DType::f64), gref.dog, 2 * tol, 20 * tol);
    EXPECT_CLOSE(g.doa.to(DType::f64), gref.doa, 2 * tol, 20 * tol);
    EXPECT_CLOSE(g.dwlogits.to(DType::f64), gref.dwlogits, 2 * tol, 20 * tol);
    EXPECT_CLOSE(g.dz.to(DType::f64), gref.dz, 2 * tol, 20 * tol);
    EXPECT_CLOSE(g.dgamma_g.to(DType::f64), gref.dgamma_g, 2 * tol, 100 * tol);
  }
}

TEST(MixNormGate, RejectsMismatchedShapes) {
  const Inputs in = make_inputs({2, 3}, 4, 30);
  Out o = forward(in);
  EXPECT_THROW(mix_norm_gate_fwd(in.og, in.oa, randn({2, 3, 3}, 1), in.z, in.gamma_g, in.gamma_a, kEps, o.y,
                                 o.rstd_g, o.rstd_a),
               Error);
  EXPECT_THROW(mix_norm_gate_fwd(in.og, in.oa, in.wlogits, in.z, randn({5}, 2), in.gamma_a, kEps, o.y, o.rstd_g,
                                 o.rstd_a),
               Error);
}
