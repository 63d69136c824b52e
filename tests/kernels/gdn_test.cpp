// The GDN family (kernels/gdn.h, kernels/cpu/gdn_*.cpp, kernels/cuda/gdn/): the CPU chunked forward, backward
// and state-write mask against the f64 recurrence, the NumPy cross-check, then the CUDA kernels against the
// CPU reference and their determinism (GdnCuda, skipped without a GPU).
//
// Chunked GDN forward against the f64 token recurrence: T around the chunk size, grouped v heads, initial
// state, packed sequences, f32 / bf16 instantiations.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <initializer_list>
#include <iomanip>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cuda/gdn/plan.h"
#include "tests/kernels/gdn_test_util.h"
#include "tests/test_util.h"

using namespace natsl;
using namespace natsl::testing::gdn;

namespace {

struct Heads {
  int64_t H, HV;
};

// Rows [start, start + len) of batch row `batch` of a [B, T, ...] tensor, as a [1, len, ...] tensor.
Tensor rows(const Tensor& x, int64_t batch, int64_t start, int64_t len) {
  return x.slice(0, batch, batch + 1).slice(1, start, start + len).contiguous();
}

}  // namespace

TEST(GdnForward, ChunkedEqualsRecurrenceF64) {
  for (int64_t T : {1, 63, 64, 65, 130})
    for (Heads hd : {Heads{1, 1}, Heads{2, 2}, Heads{1, 2}, Heads{2, 4}})
      for (bool h0 : {false, true}) {
        SCOPED_TRACE(::testing::Message() << "T=" << T << " H=" << hd.H << " HV=" << hd.HV << " h0=" << h0);
        GdnCase c{.B = 2, .T = T, .H = hd.H, .HV = hd.HV, .K = 16, .V = 32, .h0 = h0, .seed = uint64_t(T + 7 * hd.HV)};
        const GdnArgs a = args_of(c);
        const GdnInputs in = make_inputs(c);
        FwdResult ref = run_recurrent(a, in), got = run_chunk_fwd(a, in);
        EXPECT_CLOSE(got.o, ref.o, 1e-12, 1e-12);
        EXPECT_CLOSE(got.ht, ref.ht, 1e-12, 1e-12);
      }
}

// Strong decay: chunk cumsums near -200, so exp(gamma_i - gamma_j) above the diagonal would overflow if it
// were ever formed and multiplied by 0.
TEST(GdnForward, StrongDecayStaysFinite) {
  GdnCase c{.B = 1, .T = 100, .H = 1, .HV = 2, .K = 8, .V = 8, .h0 = true, .g_min = -6.0, .seed = 3};
  const GdnArgs a = args_of(c);
  const GdnInputs in = make_inputs(c);
  FwdResult ref = run_recurrent(a, in), got = run_chunk_fwd(a, in);
  EXPECT_CLOSE(got.o, ref.o, 1e-12, 1e-12);
  EXPECT_CLOSE(got.ht, ref.ht, 1e-12, 1e-12);
}

TEST(GdnForward, SavedTensorsHaveTheirDefinition) {
  GdnCase c{.B = 1, .T = 70, .H = 1, .HV = 1, .K = 4, .V = 4, .seed = 5};
  const GdnArgs a = args_of(c);
  const GdnInputs in = make_inputs(c);
  FwdResult f = run_chunk_fwd(a, in);
  std::vector<double> g = in.g.to_vector<double>(), gc = f.saved.g_cumsum.to_vector<double>();
  std::vector<double> k = in.k.to_vector<double>(), beta = in.beta.to_vector<double>();
  std::vector<double> t = f.saved.a_inv.to_vector<double>();
  const int64_t C = natsl::kernels::kGdnChunk, K = c.K;
  for (int64_t c0 : {int64_t(0), C}) {  // chunk starts: 0 and 64 (the partial chunk of 6 tokens)
    const int64_t L = std::min(C, c.T - c0);
    double acc = 0;
    for (int64_t i = 0; i < L; ++i) EXPECT_NEAR(gc[size_t(c0 + i)], acc += g[size_t(c0 + i)], 1e-14);
    // (I + A) T = I on the chunk, with A_ij = beta_i (k_i . k_j) exp(gamma_i - gamma_j), i > j.
    for (int64_t i = 0; i < L; ++i)
      for (int64_t j = 0; j < C; ++j) {
        double x = t[size_t((c0 + i) * C + j)];
        for (int64_t l = 0; l < i; ++l) {
          double kk = 0;
          for (int64_t d = 0; d < K; ++d) kk += k[size_t((c0 + i) * K + d)] * k[size_t((c0 + l) * K + d)];
          x += beta[size_t(c0 + i)] * kk * std::exp(gc[size_t(c0 + i)] - gc[size_t(c0 + l)]) *
               t[size_t((c0 + l) * C + j)];
        }
        EXPECT_NEAR(x, i == j ? 1.0 : 0.0, 1e-12) << "chunk " << c0 << " row " << i << " col " << j;
      }
  }
}

TEST(GdnForward, OptionalOutputsMayBeOmitted) {
  GdnCase c{.B = 1, .T = 65, .H = 1, .HV = 1, .K = 8, .V = 8, .seed = 9};
  const GdnArgs a = args_of(c);
  const GdnInputs in = make_inputs(c);
  Tensor o = poisoned(in.v.shape(), DType::f64);
  natsl::kernels::gdn_chunk_fwd(a, in, o, Tensor(), GdnSaved{});
  EXPECT_CLOSE(o, run_recurrent(a, in).o, 1e-12, 1e-12);
}

// Packed sequences (B = 1, cu_seqlens) equal separate runs, state reset at each start (to that sequence's
// h0); an empty sequence passes its h0 through.
TEST(GdnForward, PackedSequencesEqualSeparateRuns) {
  const std::vector<int64_t> cu = {0, 1, 66, 66, 130, 200};
  GdnCase c{.B = 1, .T = 200, .H = 1, .HV = 2, .K = 16, .V = 32, .h0 = true, .cu_seqlens = cu, .seed = 11};
  const GdnArgs a = args_of(c);
  const GdnInputs in = make_inputs(c);
  FwdResult packed = run_chunk_fwd(a, in);
  EXPECT_CLOSE(packed.o, run_recurrent(a, in).o, 1e-12, 1e-12);
  for (size_t n = 0; n + 1 < cu.size(); ++n) {
    SCOPED_TRACE(::testing::Message() << "sequence " << n);
    const int64_t start = cu[n], len = cu[n + 1] - cu[n];
    const Tensor h0 = in.h0.slice(0, int64_t(n), int64_t(n) + 1).contiguous();
    const Tensor ht = packed.ht.slice(0, int64_t(n), int64_t(n) + 1).contiguous();
    if (len == 0) {
      EXPECT_CLOSE(ht, h0, 0, 0);
      continue;
    }
    GdnInputs one{rows(in.q, 0, start, len), rows(in.k, 0, start, len), rows(in.v, 0, start, len),
                  rows(in.g, 0, start, len), rows(in.beta, 0, start, len), h0, Tensor()};
    FwdResult sep = run_chunk_fwd(args_of({.K = c.K}), one);
    EXPECT_CLOSE(rows(packed.o, 0, start, len), sep.o, 1e-14, 1e-14);
    EXPECT_CLOSE(ht, sep.ht, 1e-14, 1e-14);
  }
}

// A batch of equal-length rows is the same computation as those rows packed.
TEST(GdnForward, BatchEqualsPacked) {
  GdnCase c{.B = 3, .T = 70, .H = 2, .HV = 2, .K = 8, .V = 16, .h0 = true, .seed = 13};
  const GdnInputs in = make_inputs(c);
  FwdResult batched = run_chunk_fwd(args_of(c), in);
  GdnInputs flat = in;
  flat.q = in.q.view({1, 210, 2, 8});
  flat.k = in.k.view({1, 210, 2, 8});
  flat.v = in.v.view({1, 210, 2, 16});
  flat.g = in.g.view({1, 210, 2});
  flat.beta = in.beta.view({1, 210, 2});
  GdnCase pc = c;
  pc.B = 1;
  pc.T = 210;
  pc.cu_seqlens = {0, 70, 140, 210};
  FwdResult packed = run_chunk_fwd(args_of(pc), flat);
  EXPECT_CLOSE(packed.o.view({3, 70, 2, 16}), batched.o, 0, 0);
  EXPECT_CLOSE(packed.ht, batched.ht, 0, 0);
}

// f32 and bf16 instantiations against the f64 recurrence (relative RMS error; stated tolerances: f32 1e-5,
// bf16 data with f32 state 2e-2, dominated by rounding q/k/v to bf16).
TEST(GdnForward, LowerPrecisionWithinTolerance) {
  GdnCase c{.B = 2, .T = 130, .H = 1, .HV = 2, .K = 16, .V = 32, .h0 = true, .seed = 17};
  const GdnArgs a = args_of(c);
  const GdnInputs in = make_inputs(c);
  FwdResult ref = run_recurrent(a, in);
  FwdResult f32 = run_chunk_fwd(a, converted(in, DType::f32));
  EXPECT_CLOSE(f32.o.to(DType::f64), ref.o, 1e-5, 1e-4);
  EXPECT_CLOSE(f32.ht.to(DType::f64), ref.ht, 1e-5, 1e-4);
  FwdResult b16 = run_chunk_fwd(a, converted(in, DType::bf16));
  EXPECT_CLOSE(b16.o.to(DType::f64), ref.o, 2e-2, 5e-2);
  EXPECT_CLOSE(b16.ht.to(DType::f64), ref.ht, 2e-2, 5e-2);
  // The f32 recurrence itself (the oracle's own f32 instantiation).
  FwdResult r32 = run_recurrent(a, converted(in, DType::f32));
  EXPECT_CLOSE(r32.o.to(DType::f64), ref.o, 1e-5, 1e-4);
}

TEST(GdnForward, RejectsBadShapes) {
  GdnCase c{.B = 2, .T = 10, .H = 2, .HV = 3, .K = 4, .V = 4};
  GdnInputs in = make_inputs({.B = 2, .T = 10, .H = 2, .HV = 4, .K = 4, .V = 4});
  Tensor o = Tensor::empty(in.v.shape(), DType::f64);
  GdnArgs a = args_of(c);
  GdnInputs bad_heads = in;
  bad_heads.v = natsl::testing::randn({2, 10, 3, 4}, 1);
  EXPECT_THROW(natsl::kernels::gdn_chunk_fwd(a, bad_heads, Tensor::empty({2, 10, 3, 4}, DType::f64), Tensor(),
                                             GdnSaved{}),
               natsl::Error);
  a.cu_seqlens = {0, 5, 10};  // packed needs B = 1
  EXPECT_THROW(natsl::kernels::gdn_chunk_fwd(a, in, o, Tensor(), GdnSaved{}), natsl::Error);
  GdnInputs packed = make_inputs({.B = 1, .T = 10, .H = 2, .HV = 4, .K = 4, .V = 4});
  Tensor o1 = Tensor::empty(packed.v.shape(), DType::f64);
  for (std::vector<int64_t> cu : {std::vector<int64_t>{0, 7, 5, 10}, {0, 5, 9}, {3, 10}, {0}}) {
    a.cu_seqlens = cu;  // decreasing, not ending at T, not starting at 0, no sequence
    EXPECT_THROW(natsl::kernels::gdn_chunk_fwd(a, packed, o1, Tensor(), GdnSaved{}), natsl::Error);
  }
  GdnInputs f32_gates = in;
  f32_gates.g = in.g.to(DType::f32);  // f64 data needs f64 gates
  EXPECT_THROW(natsl::kernels::gdn_chunk_fwd(args_of(c), f32_gates, o, Tensor(), GdnSaved{}), natsl::Error);
}

// Chunked GDN backward against central finite differences of the f64 token recurrence, of the loss
// L = <o, dO> + <ht, dht> with random cotangents.
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

// The NAtS-L state-write mask (natsl-layer.md §3.4, §4.2): masked chunked forward against the masked token
// recurrence, the limits m = 1 (plain GDN) and m = 0 (decay only), and the router gradient dm.
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

// Cross-check against ../shared/reference/gdn_chunk_ref.py (the verified NumPy float64 reference): this test
// writes one case (inputs, forward outputs, gradients) as text and runs tests/kernels/gdn_check_numpy_ref.py on it,
// which recomputes everything with the NumPy reference and fails above 1e-12 relative error. Needs python3
// with numpy (Debian python3-numpy, which scripts/test.sh installs); it skips only where NATSL_NUMPY_OPTIONAL is
// set (scripts/gpu_test.sh, for GPU machines where nothing can be installed or ../shared/reference is absent).
// NATSL_GDN_DUMP=<file> keeps the case. The oracle lies outside this repository, in the shared reference folder
// beside the checkout (docs/gdn-algorithm.md §6.1); the algorithm it checks is §3-§4 there.
using namespace natsl;
using namespace natsl::testing::gdn;

TEST(GdnNumpyReference, ChunkedKernelsMatchTheNumpyOracle) {
  const char* keep = std::getenv("NATSL_GDN_DUMP");
  const std::string path = keep ? std::string(keep) : std::string(NATSL_BINARY_DIR) + "/gdn_numpy_case.txt";
  GdnCase c{.B = 1, .T = 150, .H = 1, .HV = 1, .K = 5, .V = 4, .h0 = true, .g_min = -0.5, .seed = 41};
  const GdnArgs a = args_of(c);
  const GdnInputs in = make_inputs(c);
  const Tensor dout = natsl::testing::randn(in.v.shape(), 42), dht = natsl::testing::randn(in.h0.shape(), 43);
  const FwdResult f = run_chunk_fwd(a, in);
  const GdnGrads g = run_chunk_bwd(a, in, dout, dht);
  std::ofstream os(path);
  ASSERT_TRUE(os) << "cannot write " << path;
  os << std::setprecision(17) << "T " << c.T << "\nK " << c.K << "\nV " << c.V << "\nscale " << a.scale << "\n";
  auto put = [&](const char* name, const Tensor& t) {
    os << name;
    for (double x : t.to_vector<double>()) os << ' ' << x;
    os << '\n';
  };
  put("q", in.q), put("k", in.k), put("v", in.v), put("g", in.g), put("beta", in.beta), put("h0", in.h0);
  put("dO", dout), put("dht", dht), put("o", f.o), put("ht", f.ht);
  put("dq", g.dq), put("dk", g.dk), put("dv", g.dv), put("dg", g.dg), put("dbeta", g.dbeta), put("dh0", g.dh0);
  os.close();
  // The first interpreter that imports numpy: Debian's python3 with python3-numpy, or the python3 on PATH (a
  // pyenv or a machine's torch install may be one without the other).
  std::string python;
  for (const char* candidate : {"/usr/bin/python3", "python3"})
    if (std::system((std::string(candidate) + " -c 'import numpy' >/dev/null 2>&1").c_str()) == 0) {
      python = candidate;
      break;
    }
  const std::string oracle = std::string(NATSL_SHARED_DIR) + "/reference/gdn_chunk_ref.py";
  const bool have_oracle = std::ifstream(oracle).good();
  // scripts/gpu_test.sh: a GPU machine without numpy or without ../shared/reference
  if ((python.empty() || !have_oracle) && std::getenv("NATSL_NUMPY_OPTIONAL"))
    GTEST_SKIP() << "no python3 with numpy or no " << oracle << " here; this CPU-only cross-check runs in CI";
  ASSERT_TRUE(have_oracle) << oracle << " is missing (the shared reference folder beside the checkout)";
  ASSERT_FALSE(python.empty()) << "no python3 with numpy (tried /usr/bin/python3 and python3 on PATH); install "
                                  "python3-numpy (scripts/test.sh does)";
  const std::string cmd = python + " " + std::string(NATSL_SOURCE_DIR) + "/tests/kernels/gdn_check_numpy_ref.py " + path;
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd << " failed (python3-numpy missing, or a mismatch: see its output)";
}

// CUDA GDN kernels against the CPU reference (kernels::cpu via the dispatcher, run in f64 on the same
// rounded inputs): chunked forward and backward at f32 (1e-4 relative RMS) and bf16 (FLA's tolerances:
// o/ht 0.005, dq/dk/dv/dh0 0.008, dbeta/dg/dmask 0.02), packed sequences against separate runs, and the
// token-recurrence kernel. All GPU outputs start as NaN.
namespace natsl::testing::gdn {
namespace {

using kernels::cuda::GdnPlan;
using kernels::cuda::GdnPrepKernel;

const Device kGpu = Device::cuda(0);

Tensor gpu_poisoned(const Shape& s, DType dt) {
  Tensor t = Tensor::empty(s, dt, kGpu);
  poison(t);
  return t;
}
Tensor to_gpu(const Tensor& t) { return t.defined() ? t.to(kGpu) : Tensor(); }
GdnInputs on_gpu(const GdnInputs& in) {
  return {to_gpu(in.q), to_gpu(in.k), to_gpu(in.v), to_gpu(in.g), to_gpu(in.beta), to_gpu(in.h0), to_gpu(in.mask)};
}

struct Outs {
  Tensor o, ht;
  GdnGrads g;
};

// The CUDA entry points with a plan (nullptr: the dispatcher's default). A CPU-only build has no CUDA
// kernels; its GPU tests skip before reaching these.
void chunk_fwd(const GdnArgs& a, const GdnInputs& in, const Tensor& o, const Tensor& ht, const GdnSaved& saved,
               const GdnPlan* plan) {
#ifdef NATSL_WITH_CUDA
  if (plan) return kernels::cuda::gdn_chunk_fwd(a, in, o, ht, saved, plan);
#endif
  (void)plan;
  kernels::gdn_chunk_fwd(a, in, o, ht, saved);
}
void chunk_bwd(const GdnArgs& a, const GdnInputs& in, const GdnSaved& saved, const Tensor& dout, const Tensor& dht,
               const GdnGrads& g, const GdnPlan* plan) {
#ifdef NATSL_WITH_CUDA
  if (plan) return kernels::cuda::gdn_chunk_bwd(a, in, saved, dout, dht, g, plan);
#endif
  (void)plan;
  kernels::gdn_chunk_bwd(a, in, saved, dout, dht, g);
}

// Forward and backward on the device of `in` (CPU: the f64 reference), outputs poisoned first; on the GPU with
// `plan` (nullptr: the default layouts).
Outs run_all(const GdnArgs& a, const GdnInputs& in, const Tensor& dout, const Tensor& dht, bool bwd = true,
             const GdnPlan* plan = nullptr) {
  const GdnShape s = GdnShape::of(in.q, in.v, a);
  const Device d = in.q.device();
  const DType D = in.q.dtype(), S = in.g.dtype();
  auto mk = [&](const Shape& sh, DType dt) {
    if (d.is_cuda()) return gpu_poisoned(sh, dt);
    return poisoned(sh, dt);
  };
  Outs r;
  r.o = mk(in.v.shape(), D);
  r.ht = mk({s.N, s.HV, s.K, s.V}, S);
  GdnSaved saved{mk({s.B, s.T, s.HV}, S), mk({s.B, s.T, s.HV, kernels::kGdnChunk}, D)};
  chunk_fwd(a, in, r.o, r.ht, saved, plan);
  if (!bwd) return r;
  r.g.dq = mk(in.q.shape(), D);
  r.g.dk = mk(in.k.shape(), D);
  r.g.dv = mk(in.v.shape(), D);
  r.g.dg = mk(in.g.shape(), S);
  r.g.dbeta = mk(in.beta.shape(), S);
  r.g.dh0 = mk({s.N, s.HV, s.K, s.V}, S);
  if (in.mask.defined()) r.g.dmask = mk(in.mask.shape(), S);
  chunk_bwd(a, in, saved, dout, dht, r.g, plan);
  return r;
}

void expect_rel(const Tensor& got, const Tensor& ref, double tol, const std::string& what) {
  ErrorStats e = compare(got, ref);
  EXPECT_TRUE(e.finite) << what << ": non-finite values (unwritten output?)";
  EXPECT_LE(e.rel_rms, tol) << what << ": relative RMS error (max abs " << e.max_abs << ")";
}

struct Tol {
  double o, ht, dqkv, dh0, dgb;
};
constexpr Tol kF32{1e-4, 1e-4, 1e-4, 1e-4, 1e-4};
constexpr Tol kBf16{0.005, 0.005, 0.008, 0.008, 0.02};

void check_against_cpu(const GdnCase& c, DType dt, bool with_dht = true, const GdnPlan* plan = nullptr) {
  const GdnArgs a = args_of(c);
  const GdnInputs in64 = make_inputs(c);
  const GdnInputs inD = converted(in64, dt);
  // The reference sees exactly the rounded inputs, in f64.
  const GdnInputs ref_in = converted(inD, DType::f64);
  const GdnShape s = GdnShape::of(in64.q, in64.v, a);
  Tensor dout = randn(in64.v.shape(), c.seed * 100 + 8);
  Tensor dht = with_dht ? randn({s.N, s.HV, s.K, s.V}, c.seed * 100 + 9) : Tensor();
  Tensor doutD = dout.to(dt).to(DType::f64);  // what the GPU sees, rounded
  const DType S = DType::f32;

  Outs ref = run_all(a, ref_in, doutD, dht);
  Outs got = run_all(a, on_gpu(inD), to_gpu(doutD.to(dt)), with_dht ? to_gpu(dht.to(S)) : Tensor(), true, plan);
  const Tol t = dt == DType::f32 ? kF32 : kBf16;
  expect_rel(got.o, ref.o, t.o, "o");
  expect_rel(got.ht, ref.ht, t.ht, "ht");
  expect_rel(got.g.dq, ref.g.dq, t.dqkv, "dq");
  expect_rel(got.g.dk, ref.g.dk, t.dqkv, "dk");
  expect_rel(got.g.dv, ref.g.dv, t.dqkv, "dv");
  expect_rel(got.g.dh0, ref.g.dh0, t.dh0, "dh0");
  expect_rel(got.g.dg, ref.g.dg, t.dgb, "dg");
  expect_rel(got.g.dbeta, ref.g.dbeta, t.dgb, "dbeta");
  if (in64.mask.defined()) expect_rel(got.g.dmask, ref.g.dmask, t.dgb, "dmask");
}

// "B3 T65 H6 K128" (built with a stream: GCC 12 misreports -Wrestrict on chains of string +).
std::string case_label(const GdnCase& c) {
  std::ostringstream os;
  os << "B" << c.B << " T" << c.T << " H" << c.H << " K" << c.K;
  return os.str();
}

GdnCase mk(int64_t B, int64_t T, int64_t H, int64_t K, bool h0, MaskKind mask, uint64_t seed, double g_min = -0.3) {
  GdnCase c;
  c.B = B;
  c.T = T;
  c.H = c.HV = H;
  c.K = K;
  c.V = 2 * K;
  c.h0 = h0;
  c.mask = mask;
  c.seed = seed;
  c.g_min = g_min;
  return c;
}

TEST(GdnCuda, F32MatchesCpu) {
  NATSL_REQUIRE_GPU();
  for (const GdnCase& c : {mk(1, 1, 1, 64, true, MaskKind::None, 1), mk(3, 63, 6, 64, true, MaskKind::Continuous, 2),
                           mk(1, 64, 1, 128, false, MaskKind::None, 3), mk(3, 65, 1, 128, true, MaskKind::Binary, 4),
                           mk(1, 1000, 6, 64, true, MaskKind::None, 5), mk(1, 4096, 1, 64, false, MaskKind::None, 6)}) {
    SCOPED_TRACE(case_label(c));
    check_against_cpu(c, DType::f32);
  }
}

TEST(GdnCuda, Bf16MatchesCpu) {
  NATSL_REQUIRE_GPU();
  for (const GdnCase& c : {mk(1, 1, 6, 64, true, MaskKind::None, 11), mk(3, 65, 6, 128, true, MaskKind::Continuous, 12),
                           mk(1, 1000, 1, 256, true, MaskKind::None, 13), mk(1, 4096, 1, 128, false, MaskKind::None, 14),
                           mk(3, 64, 1, 256, false, MaskKind::Binary, 15), mk(1, 63, 6, 128, false, MaskKind::None, 16, -8.0),
                           mk(3, 1000, 2, 64, true, MaskKind::None, 17)}) {
    SCOPED_TRACE(case_label(c));
    check_against_cpu(c, DType::bf16);
  }
}

// The kernel layouts a GdnPlan selects (kernels/cuda/gdn/plan.h): every one must match the CPU, whichever
// the defaults pick for a shape.
// (a macro, not std::source_location: clang 14 with libstdc++ 12, the CI's sanitizer compiler, lacks it)
void check_with_plan(const GdnPlan& plan, int line) {
  SCOPED_TRACE("plan of line " + std::to_string(line));
  for (const GdnCase& c : {mk(3, 65, 6, 128, true, MaskKind::Continuous, 71), mk(1, 1000, 2, 64, true, MaskKind::None, 72),
                           mk(2, 200, 1, 256, false, MaskKind::Binary, 73)}) {
    SCOPED_TRACE("B" + std::to_string(c.B) + " T" + std::to_string(c.T) + " K" + std::to_string(c.K));
    check_against_cpu(c, DType::bf16, true, &plan);
  }
  check_against_cpu(mk(2, 130, 3, 64, true, MaskKind::Continuous, 74), DType::f32, true, &plan);
}
#define CHECK_WITH_PLAN(...) check_with_plan(GdnPlan{__VA_ARGS__}, __LINE__)
TEST(GdnCuda, KernelLayoutsMatchCpu) {
  NATSL_REQUIRE_GPU();
  CHECK_WITH_PLAN(.vtile = 32, .stages = 2);
  CHECK_WITH_PLAN(.vtile = 32, .stages = 1);
  CHECK_WITH_PLAN(.vtile = 64, .stages = 1, .joint = false);
  CHECK_WITH_PLAN(.vtile = 64, .prep = GdnPrepKernel::generic);
  CHECK_WITH_PLAN(.prep = GdnPrepKernel::automatic, .prep_staged = false);
  CHECK_WITH_PLAN(.prep = GdnPrepKernel::solve_then_products, .prep_staged = false);
}

// The forward's own layouts (gdn/state_fwd.cuh): the split pass + chunk-parallel output at each stage count,
// L2 prefetching, bulk-copy loads, the warp-specialised pass, and prep's staged / direct stores (all with the
// tensor-copy pass off, which would take their place), then the tensor-copy pass.
TEST(GdnCuda, ForwardLayoutsMatchCpu) {
  NATSL_REQUIRE_GPU();
  CHECK_WITH_PLAN(.tma = false, .split = true, .split_stages = 3, .ws = false);
  CHECK_WITH_PLAN(.vtile = 32, .tma = false, .l2pf = 2, .split = true, .split_stages = 4, .ws = false);
  CHECK_WITH_PLAN(.vtile = 64, .tma = false, .split = true, .split_stages = 2, .ws = false);
  CHECK_WITH_PLAN(.vtile = 64, .tma = false, .l2pf = 1, .split = false, .ws = false);
  CHECK_WITH_PLAN(.vtile = 32, .tma = false, .l2pf = 4, .split = false, .ws = false);
  CHECK_WITH_PLAN(.tma = false, .split = false, .fwd_bulk = true, .ws = false);
  CHECK_WITH_PLAN(.vtile = 32, .stages = 1, .tma = false, .l2pf = 2, .split = false, .fwd_bulk = true, .ws = false);
  CHECK_WITH_PLAN(.tma = false, .split = true, .split_stages = 4, .fwd_bulk = true, .ws = false);
  CHECK_WITH_PLAN(.vtile = 64, .tma = false, .split = true, .split_stages = 3, .fwd_bulk = true, .ws = false);
  CHECK_WITH_PLAN(.vtile = 32, .tma = false, .split = false, .ws = true);
  CHECK_WITH_PLAN(.vtile = 64, .stages = 1, .tma = false, .split = false, .ws = true);
  CHECK_WITH_PLAN(.tma = false, .split = true, .split_stages = 3, .ws = true);
  CHECK_WITH_PLAN(.vtile = 64, .tma = false, .split = true, .split_stages = 4, .ws = true);
  CHECK_WITH_PLAN(.vtile = 32, .tma = false, .split = false, .ws = false);
  CHECK_WITH_PLAN(.prep_staged = true, .tma = false, .split = false, .ws = false);
  CHECK_WITH_PLAN(.prep_staged = false, .tma = false);
  // The pass on tensor-copied tiles (gdn/state_fwd_tma.cu) at both tile widths and stage counts; K = 256 and
  // the f32 case fall back to the cp.async pass.
  CHECK_WITH_PLAN(.vtile = 32, .tma = true);
  CHECK_WITH_PLAN(.vtile = 64, .tma = true, .tma_stages = 2);
  // Both output kernels after either split pass: one CTA per V tile (out_per_vtile), or looping over the V
  // tiles (2, the default the split rows above ran).
  CHECK_WITH_PLAN(.vtile = 32, .tma = false, .split = true, .out_per_vtile = true, .ws = true);
  CHECK_WITH_PLAN(.vtile = 64, .tma = false, .split = true, .out_per_vtile = true, .ws = false);
  CHECK_WITH_PLAN(.vtile = 64, .tma = false, .split = true, .out_per_vtile = false, .ws = false);
}

// The backward's own layouts: bulk-copy tile loads, staged / direct stores and L2 prefetching in the reverse
// state pass (gdn/state_bwd.cu), joint and separate, at each V tile width and stage count.
TEST(GdnCuda, BackwardLayoutsMatchCpu) {
  NATSL_REQUIRE_GPU();
  CHECK_WITH_PLAN(.vtile = 32, .bwd_store_staged = true, .bwd_bulk = false);
  CHECK_WITH_PLAN(.vtile = 64, .bwd_store_staged = false, .bwd_bulk = false);
  CHECK_WITH_PLAN(.vtile = 64, .stages = 2, .bwd_bulk = true);
  CHECK_WITH_PLAN(.vtile = 32, .stages = 1, .bwd_store_staged = true, .bwd_bulk = true);
  CHECK_WITH_PLAN(.vtile = 32, .stages = 2, .joint = false, .bwd_bulk = true);
  CHECK_WITH_PLAN(.vtile = 64, .stages = 1, .bwd_bulk = true);
  CHECK_WITH_PLAN(.vtile = 64, .bwd_store_staged = true, .bwd_l2pf = 2);
  CHECK_WITH_PLAN(.vtile = 32, .bwd_bulk = true, .bwd_l2pf = 1);
  // h_n and v_new of the forward recompute stored straight from the accumulators (4-byte stores) instead of
  // from their shared tiles.
  CHECK_WITH_PLAN(.vtile = 32, .fwd_store_staged = false);
  CHECK_WITH_PLAN(.joint = false, .bwd_tma = true, .fwd_store_staged = false);
  // Tensor-copied tiles (K = 256 and f32 fall back to the cp.async passes).
  CHECK_WITH_PLAN(.bwd_tma = true, .bwd_tma_vtile = 32, .bwd_tma_stages = 3);
  CHECK_WITH_PLAN(.joint = false, .bwd_tma = true, .bwd_tma_vtile = 64, .bwd_tma_stages = 1);
}

// Two CTAs per SM (GdnPlan::occ2: one stage, registers capped at 128 a thread): the forward pass with its
// output, the split forward, the backward's joint and separate passes, both tile widths; and off (the
// pipelined kernels), whichever the default.
TEST(GdnCuda, TwoCtasPerSmLayoutsMatchCpu) {
  NATSL_REQUIRE_GPU();
  CHECK_WITH_PLAN(.vtile = 64, .occ2 = true, .tma = false, .split = false, .ws = false);
  CHECK_WITH_PLAN(.vtile = 32, .occ2 = true, .joint = false, .tma = false, .split = true);
  CHECK_WITH_PLAN(.vtile = 64, .occ2 = true, .tma = false, .ws = true, .bwd_store_staged = false);
  CHECK_WITH_PLAN(.occ2 = false, .tma = false, .split = false, .ws = false);
}

TEST(GdnCuda, NoFinalStateGradient) {
  NATSL_REQUIRE_GPU();
  check_against_cpu(mk(1, 130, 2, 64, true, MaskKind::None, 21), DType::f32, /*with_dht=*/false);
}

// Packed sequences (B = 1, cu_seqlens) give what separate runs of each sequence give, and match the CPU.
void check_packed(DType dt) {
  GdnCase c = mk(1, 1300, 2, 64, true, MaskKind::Continuous, 31);
  c.cu_seqlens = {0, 1, 65, 129, 1000, 1000, 1300};
  const GdnArgs a = args_of(c);
  const GdnInputs inD = converted(make_inputs(c), dt);
  const GdnShape s = GdnShape::of(inD.q, inD.v, a);
  Tensor dout = randn(inD.v.shape(), 38).to(dt);
  Tensor dht = randn({s.N, s.HV, s.K, s.V}, 39).to(DType::f32);
  Outs packed = run_all(a, on_gpu(inD), to_gpu(dout), to_gpu(dht));
  const auto seqs = kernels::gdn_sequences(s, a);
  for (size_t n = 0; n < seqs.size(); ++n) {
    const auto& q = seqs[n];
    if (q.len == 0) continue;
    SCOPED_TRACE("sequence " + std::to_string(n));
    auto tok = [&](const Tensor& t) { return t.slice(1, q.start, q.start + q.len).contiguous(); };
    auto seq = [&](const Tensor& t) { return t.slice(0, int64_t(n), int64_t(n) + 1).contiguous(); };
    auto chunks = [&](const Tensor& t) { return t.slice(0, q.first_chunk, q.first_chunk + q.chunks()).contiguous(); };
    GdnInputs one{tok(inD.q), tok(inD.k), tok(inD.v), tok(inD.g), tok(inD.beta), seq(inD.h0), chunks(inD.mask)};
    GdnArgs a1 = a;
    a1.cu_seqlens.clear();
    Outs single = run_all(a1, on_gpu(one), to_gpu(tok(dout)), to_gpu(seq(dht)));
    auto gtok = [&](const Tensor& t) { return t.to(kCPU).slice(1, q.start, q.start + q.len).contiguous(); };
    auto gseq = [&](const Tensor& t) { return t.to(kCPU).slice(0, int64_t(n), int64_t(n) + 1).contiguous(); };
    auto gch = [&](const Tensor& t) {
      return t.to(kCPU).slice(0, q.first_chunk, q.first_chunk + q.chunks()).contiguous();
    };
    expect_rel(gtok(packed.o), single.o, 1e-6, "o");
    expect_rel(gseq(packed.ht), single.ht, 1e-6, "ht");
    expect_rel(gtok(packed.g.dq), single.g.dq, 1e-6, "dq");
    expect_rel(gtok(packed.g.dk), single.g.dk, 1e-6, "dk");
    expect_rel(gtok(packed.g.dv), single.g.dv, 1e-6, "dv");
    expect_rel(gtok(packed.g.dg), single.g.dg, 1e-6, "dg");
    expect_rel(gtok(packed.g.dbeta), single.g.dbeta, 1e-6, "dbeta");
    expect_rel(gseq(packed.g.dh0), single.g.dh0, 1e-6, "dh0");
    expect_rel(gch(packed.g.dmask), single.g.dmask, 1e-6, "dmask");
  }
  // The empty sequence passes its state through.
  expect_rel(packed.ht.to(kCPU).slice(0, 4, 5).contiguous(), inD.h0.slice(0, 4, 5).contiguous(), 0, "empty ht");
}

TEST(GdnCuda, PackedEqualsSeparateF32) {
  NATSL_REQUIRE_GPU();
  check_packed(DType::f32);
}
TEST(GdnCuda, PackedEqualsSeparateBf16) {
  NATSL_REQUIRE_GPU();
  check_packed(DType::bf16);
}
TEST(GdnCuda, PackedMatchesCpu) {
  NATSL_REQUIRE_GPU();
  GdnCase c = mk(1, 700, 3, 64, true, MaskKind::Binary, 41);
  c.cu_seqlens = {0, 100, 164, 700};
  check_against_cpu(c, DType::f32);
}

TEST(GdnCuda, RecurrentMatchesCpu) {
  NATSL_REQUIRE_GPU();
  for (DType dt : {DType::f32, DType::bf16}) {
    GdnCase c = mk(2, 150, 2, 64, true, MaskKind::Continuous, 51);
    const GdnArgs a = args_of(c);
    const GdnInputs inD = converted(make_inputs(c), dt);
    const GdnShape s = GdnShape::of(inD.q, inD.v, a);
    FwdResult ref = run_recurrent(a, converted(inD, DType::f64));
    Tensor o = gpu_poisoned(inD.v.shape(), dt), ht = gpu_poisoned({s.N, s.HV, s.K, s.V}, DType::f32);
    kernels::gdn_recurrent_fwd(a, on_gpu(inD), o, ht);
    const double tol = dt == DType::f32 ? 1e-5 : 0.005;
    expect_rel(o, ref.o, tol, "recurrent o");
    expect_rel(ht, ref.ht, tol, "recurrent ht");
  }
}

// A forward that saves nothing (inference) still passes T through memory when prep3 runs (a scratch a_inv):
// the same output bits as the forward that saves, for each prep layout, and the same bits across layouts
// (prep2 and prep3 round and add in the same order).
TEST(GdnCuda, ForwardWithoutSavedTensorsGivesTheSameBits) {
  NATSL_REQUIRE_GPU();
  for (const GdnCase& c : {mk(3, 65, 6, 128, true, MaskKind::Continuous, 81), mk(1, 200, 2, 64, false, MaskKind::None, 82)}) {
    SCOPED_TRACE(case_label(c));
    const GdnArgs a = args_of(c);
    const GdnInputs in = on_gpu(converted(make_inputs(c), DType::bf16));
    const GdnShape s = GdnShape::of(in.q, in.v, a);
    std::vector<double> first;
    for (GdnPrepKernel prep : {GdnPrepKernel::solve_then_products, GdnPrepKernel::automatic}) {
      const GdnPlan plan{.prep = prep};
      for (bool save : {true, false}) {
        SCOPED_TRACE(std::string(prep == GdnPrepKernel::automatic ? "prep2" : "prep3") +
                     (save ? " saving" : " saving nothing"));
        Tensor o = gpu_poisoned(in.v.shape(), DType::bf16);
        GdnSaved saved;
        if (save)
          saved = GdnSaved{gpu_poisoned({s.B, s.T, s.HV}, DType::f32),
                           gpu_poisoned({s.B, s.T, s.HV, kernels::kGdnChunk}, DType::bf16)};
        chunk_fwd(a, in, o, Tensor(), saved, &plan);
        const std::vector<double> got = o.to(kCPU).to(DType::f64).to_vector<double>();
        for (double x : got) ASSERT_TRUE(std::isfinite(x)) << "unwritten output";
        if (first.empty()) first = got;
        else EXPECT_TRUE(got == first) << "output bits differ";
      }
    }
  }
}

// The pass on tensor-copied (swizzled) tiles runs the same products in the same order as the cp.async pass of
// the same tile width, with the K rows past a chunk's end zeroed as the cp.async zero fill leaves them: the same
// output and final state bits, packed sequences included (their chunks end inside the copied boxes).
TEST(GdnCuda, TmaPassGivesTheSameBitsAsCpAsyncPass) {
  NATSL_REQUIRE_GPU();
  GdnCase packed = mk(1, 1300, 2, 128, true, MaskKind::Continuous, 91);
  packed.cu_seqlens = {0, 1, 65, 129, 1000, 1000, 1300};
  for (const GdnCase& c : {mk(3, 65, 6, 128, true, MaskKind::Continuous, 92), mk(2, 333, 3, 64, false, MaskKind::Binary, 93),
                           packed}) {
    SCOPED_TRACE(case_label(c));
    const GdnArgs a = args_of(c);
    const GdnInputs in = on_gpu(converted(make_inputs(c), DType::bf16));
    const GdnShape s = GdnShape::of(in.q, in.v, a);
    for (int vw : {32, 64}) {
      SCOPED_TRACE("V tile " + std::to_string(vw));
      std::vector<double> o_ref, ht_ref;
      for (bool tma : {false, true}) {
        const GdnPlan plan{.vtile = vw, .occ2 = false, .tma = tma, .split = false, .ws = false};
        Tensor o = gpu_poisoned(in.v.shape(), DType::bf16), ht = gpu_poisoned({s.N, s.HV, s.K, s.V}, DType::f32);
        chunk_fwd(a, in, o, ht, GdnSaved{}, &plan);
        const std::vector<double> og = o.to(kCPU).to(DType::f64).to_vector<double>();
        const std::vector<double> hg = ht.to(kCPU).to(DType::f64).to_vector<double>();
        for (double x : og) ASSERT_TRUE(std::isfinite(x)) << "unwritten output";
        if (o_ref.empty()) {
          o_ref = og;
          ht_ref = hg;
        } else {
          EXPECT_TRUE(og == o_ref) << "output bits differ on the tensor-copy pass";
          EXPECT_TRUE(hg == ht_ref) << "final state bits differ on the tensor-copy pass";
        }
      }
    }
  }
}

// The backward's passes on tensor-copied tiles (GdnPlan::bwd_tma), joint and reverse alone, at both tile widths
// and 1-3 stages: every gradient bit for bit the cp.async passes' (the same step functions on the same values).
TEST(GdnCuda, TmaBackwardGivesTheSameBitsAsCpAsync) {
  NATSL_REQUIRE_GPU();
  GdnCase packed = mk(1, 1300, 2, 128, true, MaskKind::Continuous, 94);
  packed.cu_seqlens = {0, 1, 65, 129, 1000, 1000, 1300};
  struct Setting {
    int vw, stages;
    bool joint;
  };
  for (const GdnCase& c : {mk(3, 65, 6, 128, true, MaskKind::Continuous, 95), mk(2, 333, 3, 64, false, MaskKind::Binary, 96),
                           packed}) {
    SCOPED_TRACE(case_label(c));
    const GdnArgs a = args_of(c);
    const GdnInputs in = on_gpu(converted(make_inputs(c), DType::bf16));
    const GdnShape s = GdnShape::of(in.q, in.v, a);
    const Tensor dout = to_gpu(randn(in.v.shape(), c.seed + 1).to(DType::bf16));
    const Tensor dht = to_gpu(randn({s.N, s.HV, s.K, s.V}, c.seed + 2).to(DType::f32));
    auto bits = [&](const Outs& r) {
      std::vector<std::vector<double>> v;
      for (const Tensor* t : {&r.g.dq, &r.g.dk, &r.g.dv, &r.g.dg, &r.g.dbeta, &r.g.dh0, &r.g.dmask})
        if (t->defined()) v.push_back(t->to(kCPU).to(DType::f64).to_vector<double>());
      return v;
    };
    for (const Setting& st : {Setting{32, 2, true}, Setting{64, 2, true}, Setting{32, 3, true}, Setting{64, 1, true},
                              Setting{32, 1, false}}) {
      SCOPED_TRACE("V tile " + std::to_string(st.vw) + ", stages " + std::to_string(st.stages) + ", joint " +
                   std::to_string(int(st.joint)));
      const GdnPlan cp_async{.vtile = st.vw, .stages = 2, .occ2 = false, .joint = st.joint, .bwd_tma = false};
      GdnPlan tma = cp_async;
      tma.bwd_tma = true;
      tma.bwd_tma_vtile = st.vw;
      tma.bwd_tma_stages = st.stages;
      const auto ref = bits(run_all(a, in, dout, dht, true, &cp_async));
      const auto got = bits(run_all(a, in, dout, dht, true, &tma));
      ASSERT_EQ(got.size(), ref.size());
      for (size_t i = 0; i < got.size(); ++i) {
        for (double x : got[i]) ASSERT_TRUE(std::isfinite(x)) << "gradient " << i << ": unwritten output";
        EXPECT_TRUE(got[i] == ref[i]) << "gradient " << i << " (dq dk dv dg dbeta dh0 dmask) bits differ";
      }
    }
  }
}

TEST(GdnCuda, RefusesWhatItDoesNotSupport) {
  NATSL_REQUIRE_GPU();
  GdnCase c = mk(1, 10, 1, 256, false, MaskKind::None, 61);
  const GdnInputs in = on_gpu(converted(make_inputs(c), DType::f32));
  Tensor o = gpu_poisoned(in.v.shape(), DType::f32);
  EXPECT_THROW(kernels::gdn_chunk_fwd(args_of(c), in, o, Tensor(), GdnSaved{}), Error);
}

}  // namespace
}  // namespace natsl::testing::gdn

// The CUDA GDN backward repeats its bits: the chunk-gradient kernels sum rows and columns of their tiles
// through per-warp slots added in a fixed order (gdn/tile.cuh), not through atomics, so every gradient
// (dq, dk, dv, dg, dbeta, dh0, dmask) is the same on every run: bf16 and f32, with and without a
// state-write mask.
namespace natsl::testing::gdn {
namespace {


Tensor gpu(const Tensor& t) { return t.defined() ? t.to(kGpu) : Tensor(); }

std::vector<std::vector<float>> backward_bits(const GdnArgs& a, const GdnInputs& in, const GdnSaved& saved,
                                              const Tensor& dout) {
  const GdnShape s = GdnShape::of(in.q, in.v, a);
  const DType D = in.q.dtype(), S = in.g.dtype();
  auto out = [&](const Shape& sh, DType dt) {
    Tensor t = Tensor::empty(sh, dt, kGpu);
    poison(t);
    return t;
  };
  GdnGrads g{out(in.q.shape(), D), out(in.k.shape(), D), out(in.v.shape(), D), out(in.g.shape(), S),
             out(in.beta.shape(), S), out({s.N, s.HV, s.K, s.V}, S),
             in.mask.defined() ? out(in.mask.shape(), S) : Tensor()};
  kernels::gdn_chunk_bwd(a, in, saved, dout, Tensor(), g);
  std::vector<std::vector<float>> bits;
  for (const Tensor* t : {&g.dq, &g.dk, &g.dv, &g.dg, &g.dbeta, &g.dh0, &g.dmask})
    if (t->defined()) bits.push_back(t->to(kCPU).to(DType::f32).to_vector<float>());
  return bits;
}

TEST(GdnCuda, BackwardRepeatsBitForBit) {
  NATSL_REQUIRE_GPU();
  const char* names[] = {"dq", "dk", "dv", "dg", "dbeta", "dh0", "dmask"};
  for (DType dt : {DType::bf16, DType::f32})
    for (MaskKind mask : {MaskKind::None, MaskKind::Continuous}) {
      GdnCase c;
      c.B = 2;
      c.T = 1000;
      c.H = c.HV = 3;
      c.K = 128;
      c.V = 256;
      c.h0 = true;
      c.mask = mask;
      c.seed = 91;
      SCOPED_TRACE(std::string(dtype_name(dt)) + (mask == MaskKind::None ? "" : " masked"));
      const GdnArgs a = args_of(c);
      const GdnInputs host = converted(make_inputs(c), dt);
      const GdnInputs in{gpu(host.q), gpu(host.k), gpu(host.v), gpu(host.g), gpu(host.beta), gpu(host.h0),
                         gpu(host.mask)};
      const GdnShape s = GdnShape::of(in.q, in.v, a);
      Tensor o = Tensor::empty(in.v.shape(), dt, kGpu);
      GdnSaved saved{Tensor::empty(in.g.shape(), in.g.dtype(), kGpu),
                     Tensor::empty({c.B, c.T, c.HV, kernels::kGdnChunk}, dt, kGpu)};
      kernels::gdn_chunk_fwd(a, in, o, Tensor(), saved);
      const Tensor dout = gpu(randn(in.v.shape(), 92).to(dt));
      const auto first = backward_bits(a, in, saved, dout);
      for (const auto& v : first)
        for (float x : v) ASSERT_TRUE(std::isfinite(x)) << "non-finite gradient (unwritten output?)";
      for (int rep = 0; rep < 3; ++rep) {
        const auto again = backward_bits(a, in, saved, dout);
        ASSERT_EQ(again.size(), first.size());
        for (size_t i = 0; i < first.size(); ++i)
          EXPECT_TRUE(again[i] == first[i]) << names[i] << " differs on rerun " << rep << " (s.NC = " << s.NC << ")";
      }
    }
}

}  // namespace
}  // namespace natsl::testing::gdn
