// Chunked GDN backward against central finite differences of the f64 token recurrence, of the loss
// L = <o, dO> + <ht, dht> with random cotangents.
#include <gtest/gtest.h>

#include "tests/gdn/gdn_test_util.h"

using namespace natsl;
using namespace natsl::testing::gdn;

namespace {

struct Cotangents {
  Tensor dout, dht;
};
Cotangents cotangents(const GdnArgs& a, const GdnInputs& in, uint64_t seed) {
  const GdnShape s = GdnShape::of(in.q, in.v, a);
  return {natsl::testing::randn(in.v.shape(), seed), natsl::testing::randn({s.N, s.HV, s.K, s.V}, seed + 1)};
}

// Every gradient of the chunked backward equals finite differences (relative RMS 1e-7: the differences
// themselves carry about 1e-9).
void expect_gradients_match_differences(const GdnCase& c) {
  const GdnArgs a = args_of(c);
  const GdnInputs in = make_inputs(c);
  const Cotangents ct = cotangents(a, in, c.seed + 50);
  const GdnGrads g = run_chunk_bwd(a, in, ct.dout, ct.dht);
  auto check = [&](const char* name, const Tensor& mine, const Tensor& x) {
    SCOPED_TRACE(name);
    EXPECT_CLOSE(mine, finite_difference(a, in, x, ct.dout, ct.dht), 1e-7, 1e-6);
  };
  check("dq", g.dq, in.q);
  check("dk", g.dk, in.k);
  check("dv", g.dv, in.v);
  check("dg", g.dg, in.g);
  check("dbeta", g.dbeta, in.beta);
  if (in.h0.defined()) check("dh0", g.dh0, in.h0);
  if (in.mask.defined()) check("dmask", g.dmask, in.mask);
}

}  // namespace

// Two chunks, the second partial; initial state; grouped v heads (dq/dk summed over the group).
TEST(GdnBackward, MatchesFiniteDifferencesPartialChunkWithH0) {
  expect_gradients_match_differences({.B = 1, .T = 70, .H = 1, .HV = 2, .K = 4, .V = 3, .h0 = true, .seed = 21});
}

TEST(GdnBackward, MatchesFiniteDifferencesBatchNoH0) {
  expect_gradients_match_differences({.B = 2, .T = 65, .H = 2, .HV = 2, .K = 3, .V = 5, .seed = 22});
}

TEST(GdnBackward, MatchesFiniteDifferencesSingleTokenAndFullChunk) {
  expect_gradients_match_differences({.B = 1, .T = 1, .H = 1, .HV = 1, .K = 5, .V = 4, .h0 = true, .seed = 23});
  expect_gradients_match_differences({.B = 1, .T = 64, .H = 1, .HV = 1, .K = 4, .V = 4, .h0 = true, .seed = 24});
}

// Three chunks with strong decay: the dgamma terms of the last valid row and the carried decay dominate.
TEST(GdnBackward, MatchesFiniteDifferencesThreeChunksStrongDecay) {
  expect_gradients_match_differences(
      {.B = 1, .T = 150, .H = 1, .HV = 1, .K = 3, .V = 2, .h0 = true, .g_min = -1.5, .seed = 25});
}

TEST(GdnBackward, MatchesFiniteDifferencesPacked) {
  expect_gradients_match_differences({.B = 1,
                                      .T = 100,
                                      .H = 1,
                                      .HV = 2,
                                      .K = 3,
                                      .V = 2,
                                      .h0 = true,
                                      .cu_seqlens = {0, 3, 3, 70, 100},
                                      .seed = 26});
}

// Without dht and dh0 (both optional): the gradients equal those with dht = 0.
TEST(GdnBackward, OptionalStateGradients) {
  GdnCase c{.B = 1, .T = 66, .H = 1, .HV = 1, .K = 4, .V = 4, .h0 = true, .seed = 27};
  const GdnArgs a = args_of(c);
  const GdnInputs in = make_inputs(c);
  const Tensor dout = natsl::testing::randn(in.v.shape(), 5);
  const GdnGrads with = run_chunk_bwd(a, in, dout, Tensor::zeros({1, 1, 4, 4}, DType::f64));
  GdnGrads without = run_chunk_bwd(a, in, dout, Tensor());
  EXPECT_CLOSE(without.dq, with.dq, 0, 0);
  EXPECT_CLOSE(without.dg, with.dg, 0, 0);
  EXPECT_CLOSE(without.dh0, with.dh0, 0, 0);
  FwdResult f = run_chunk_fwd(a, in);
  without.dh0 = Tensor();
  natsl::kernels::gdn_chunk_bwd(a, in, f.saved, dout, Tensor(), without);
  EXPECT_CLOSE(without.dk, with.dk, 0, 0);
}

// The f32 instantiation of the backward against the f64 one (relative RMS; stated tolerance 1e-4).
TEST(GdnBackward, F32WithinToleranceOfF64) {
  GdnCase c{.B = 1, .T = 130, .H = 1, .HV = 2, .K = 16, .V = 32, .h0 = true, .mask = MaskKind::Continuous, .seed = 28};
  const GdnArgs a = args_of(c);
  const GdnInputs in = make_inputs(c);
  const Cotangents ct = cotangents(a, in, 77);
  const GdnGrads ref = run_chunk_bwd(a, in, ct.dout, ct.dht);
  const GdnGrads got = run_chunk_bwd(a, converted(in, DType::f32), ct.dout.to(DType::f32), ct.dht.to(DType::f32));
  const std::vector<std::pair<const char*, std::pair<Tensor, Tensor>>> pairs = {
      {"dq", {got.dq, ref.dq}},       {"dk", {got.dk, ref.dk}},   {"dv", {got.dv, ref.dv}},
      {"dg", {got.dg, ref.dg}},       {"dbeta", {got.dbeta, ref.dbeta}}, {"dh0", {got.dh0, ref.dh0}},
      {"dmask", {got.dmask, ref.dmask}}};
  for (const auto& [name, p] : pairs) {
    SCOPED_TRACE(name);
    EXPECT_CLOSE(p.first.to(DType::f64), p.second, 1e-4, 1e-3);
  }
}

TEST(GdnBackward, RejectsMaskGradientWithoutMask) {
  GdnCase c{.B = 1, .T = 5, .H = 1, .HV = 1, .K = 2, .V = 2, .seed = 29};
  const GdnArgs a = args_of(c);
  const GdnInputs in = make_inputs(c);
  FwdResult f = run_chunk_fwd(a, in);
  GdnGrads g{Tensor::empty(in.q.shape(), DType::f64), Tensor::empty(in.k.shape(), DType::f64),
             Tensor::empty(in.v.shape(), DType::f64), Tensor::empty(in.g.shape(), DType::f64),
             Tensor::empty(in.beta.shape(), DType::f64), Tensor(), Tensor::empty({1, 1}, DType::f64)};
  EXPECT_THROW(natsl::kernels::gdn_chunk_bwd(a, in, f.saved, f.o, Tensor(), g), natsl::Error);
  g.dmask = Tensor();
  EXPECT_NO_THROW(natsl::kernels::gdn_chunk_bwd(a, in, f.saved, f.o, Tensor(), g));
}
