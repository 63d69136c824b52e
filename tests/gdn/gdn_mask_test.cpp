// The NAtS-L state-write mask (natsl-layer.md §3.4, §4.2): masked chunked forward against the masked token
// recurrence, the limits m = 1 (plain GDN) and m = 0 (decay only), and the router gradient dm.
#include <gtest/gtest.h>

#include "tests/gdn/gdn_test_util.h"

using namespace natsl;
using namespace natsl::testing::gdn;

TEST(GdnMask, BinaryMaskMatchesMaskedRecurrence) {
  for (bool packed : {false, true}) {
    SCOPED_TRACE(packed ? "packed" : "batched");
    GdnCase c{.B = packed ? 1 : 2, .T = 260, .H = 1, .HV = 3, .K = 16, .V = 32, .h0 = true, .mask = MaskKind::Binary,
              .seed = 31};
    if (packed) c.cu_seqlens = {0, 130, 131, 260};
    const GdnArgs a = args_of(c);
    const GdnInputs in = make_inputs(c);
    FwdResult ref = run_recurrent(a, in), got = run_chunk_fwd(a, in);
    EXPECT_CLOSE(got.o, ref.o, 1e-12, 1e-12);
    EXPECT_CLOSE(got.ht, ref.ht, 1e-12, 1e-12);
  }
}

TEST(GdnMask, ContinuousMaskMatchesMaskedRecurrence) {
  GdnCase c{.B = 1, .T = 200, .H = 2, .HV = 2, .K = 16, .V = 32, .h0 = true, .mask = MaskKind::Continuous, .seed = 32};
  const GdnArgs a = args_of(c);
  const GdnInputs in = make_inputs(c);
  FwdResult ref = run_recurrent(a, in), got = run_chunk_fwd(a, in);
  EXPECT_CLOSE(got.o, ref.o, 1e-12, 1e-12);
  EXPECT_CLOSE(got.ht, ref.ht, 1e-12, 1e-12);
}

TEST(GdnMask, AllOnesIsPlainGdn) {
  GdnCase c{.B = 1, .T = 150, .H = 1, .HV = 2, .K = 8, .V = 16, .h0 = true, .mask = MaskKind::Ones, .seed = 33};
  const GdnArgs a = args_of(c);
  const GdnInputs masked = make_inputs(c);
  GdnInputs plain = masked;
  plain.mask = Tensor();
  FwdResult m = run_chunk_fwd(a, masked), p = run_chunk_fwd(a, plain);
  EXPECT_CLOSE(m.o, p.o, 0, 0);
  EXPECT_CLOSE(m.ht, p.ht, 0, 0);
  const Tensor dout = natsl::testing::randn(masked.v.shape(), 1), dht = natsl::testing::randn(m.ht.shape(), 2);
  GdnGrads gm = run_chunk_bwd(a, masked, dout, dht), gp = run_chunk_bwd(a, plain, dout, dht);
  EXPECT_CLOSE(gm.dq, gp.dq, 0, 0);
  EXPECT_CLOSE(gm.dk, gp.dk, 0, 0);
  EXPECT_CLOSE(gm.dg, gp.dg, 0, 0);
  EXPECT_CLOSE(gm.dh0, gp.dh0, 0, 0);
}

// m = 0 everywhere: each chunk's output is the plain GDN of that chunk alone, started from h0 decayed by all
// earlier tokens, and the final state is h0 decayed by every token (checked chunk by chunk with the
// unmasked recurrence, independently of the masked code paths).
TEST(GdnMask, AllZerosOnlyDecaysTheCarriedState) {
  GdnCase c{.B = 1, .T = 150, .H = 1, .HV = 2, .K = 8, .V = 16, .h0 = true, .mask = MaskKind::Zeros, .seed = 34};
  const GdnArgs a = args_of(c);
  const GdnInputs in = make_inputs(c);
  FwdResult got = run_chunk_fwd(a, in);
  std::vector<double> g = in.g.to_vector<double>(), h0 = in.h0.to_vector<double>();
  std::vector<double> log_decay(size_t(c.HV), 0.0);
  for (int64_t t0 = 0; t0 < c.T; t0 += natsl::kernels::kGdnChunk) {
    const int64_t len = std::min(natsl::kernels::kGdnChunk, c.T - t0);
    std::vector<double> start = h0;  // h0 decayed by the tokens before t0, per v head
    const int64_t KV = c.K * c.V;
    for (int64_t hv = 0; hv < c.HV; ++hv)
      for (int64_t i = 0; i < KV; ++i) start[size_t(hv * KV + i)] *= std::exp(log_decay[size_t(hv)]);
    auto rows = [&](const Tensor& x) { return x.slice(1, t0, t0 + len).contiguous(); };
    GdnInputs one{rows(in.q), rows(in.k), rows(in.v), rows(in.g), rows(in.beta),
                  Tensor::from_vector(start, in.h0.shape(), DType::f64), Tensor()};
    SCOPED_TRACE(::testing::Message() << "chunk at " << t0);
    EXPECT_CLOSE(rows(got.o), run_recurrent(a, one).o, 1e-12, 1e-12);
    for (int64_t t = t0; t < t0 + len; ++t)
      for (int64_t hv = 0; hv < c.HV; ++hv) log_decay[size_t(hv)] += g[size_t(t * c.HV + hv)];
  }
  std::vector<double> final_state = h0;
  const int64_t KV = c.K * c.V;
  for (int64_t hv = 0; hv < c.HV; ++hv)
    for (int64_t i = 0; i < KV; ++i) final_state[size_t(hv * KV + i)] *= std::exp(log_decay[size_t(hv)]);
  EXPECT_CLOSE(got.ht, Tensor::from_vector(final_state, in.h0.shape(), DType::f64), 1e-13, 1e-13);
}

// With a continuous mask every gradient, dm included, equals finite differences of the masked recurrence.
// dm_c = <dL/dH_{c+1}, W_c> is returned for every chunk (the layer keeps only the GDN-labelled ones).
TEST(GdnMask, GradientsMatchFiniteDifferences) {
  for (const GdnCase& c :
       {GdnCase{.B = 1, .T = 140, .H = 1, .HV = 2, .K = 3, .V = 4, .h0 = true, .mask = MaskKind::Continuous, .seed = 35},
        GdnCase{.B = 1, .T = 140, .H = 1, .HV = 1, .K = 4, .V = 3, .h0 = true, .cu_seqlens = {0, 70, 140},
                .mask = MaskKind::Binary, .g_min = -0.8, .seed = 36}}) {
    SCOPED_TRACE(::testing::Message() << "seed " << c.seed);
    const GdnArgs a = args_of(c);
    const GdnInputs in = make_inputs(c);
    const GdnShape s = GdnShape::of(in.q, in.v, a);
    const Tensor dout = natsl::testing::randn(in.v.shape(), c.seed + 1);
    const Tensor dht = natsl::testing::randn({s.N, s.HV, s.K, s.V}, c.seed + 2);
    const GdnGrads g = run_chunk_bwd(a, in, dout, dht);
    const std::vector<std::pair<const char*, std::pair<Tensor, Tensor>>> pairs = {
        {"dq", {g.dq, in.q}}, {"dk", {g.dk, in.k}},       {"dv", {g.dv, in.v}},   {"dg", {g.dg, in.g}},
        {"dbeta", {g.dbeta, in.beta}}, {"dh0", {g.dh0, in.h0}}, {"dmask", {g.dmask, in.mask}}};
    for (const auto& [name, p] : pairs) {
      SCOPED_TRACE(name);
      EXPECT_CLOSE(p.first, finite_difference(a, in, p.second, dout, dht), 1e-7, 1e-6);
    }
  }
}
