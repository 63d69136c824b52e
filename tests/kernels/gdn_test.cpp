// The GDN family's CPU reference (kernels/gdn.h, kernels/cpu/gdn_*.cpp): the chunked forward, backward and
// state-write mask against the f64 recurrence, and the NumPy cross-check. The CUDA kernels against this
// reference are in gdn_cuda_test.cpp.
//
// Chunked GDN forward against the f64 token recurrence: T around the chunk size, grouped v heads, initial
// state, packed sequences, f32 / bf16 instantiations.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <string>
#include <vector>

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
        expect_chunked_equals_recurrence(
            {.B = 2, .T = T, .H = hd.H, .HV = hd.HV, .K = 16, .V = 32, .h0 = h0, .seed = uint64_t(T + 7 * hd.HV)});
      }
}

// Strong decay: chunk cumsums near -200, so exp(gamma_i - gamma_j) above the diagonal would overflow if it
// were ever formed and multiplied by 0.
TEST(GdnForward, StrongDecayStaysFinite) {
  expect_chunked_equals_recurrence({.B = 1, .T = 100, .H = 1, .HV = 2, .K = 8, .V = 8, .h0 = true, .g_min = -6.0, .seed = 3});
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
// Two chunks, the second partial; initial state; grouped v heads (dq/dk summed over the group).
TEST(GdnBackward, MatchesFiniteDifferencesPartialChunkWithH0) {
  expect_gradients_match_differences({.B = 1, .T = 70, .H = 1, .HV = 2, .K = 4, .V = 3, .h0 = true, .seed = 21}, 71);
}

TEST(GdnBackward, MatchesFiniteDifferencesBatchNoH0) {
  expect_gradients_match_differences({.B = 2, .T = 65, .H = 2, .HV = 2, .K = 3, .V = 5, .seed = 22}, 72);
}

TEST(GdnBackward, MatchesFiniteDifferencesSingleTokenAndFullChunk) {
  expect_gradients_match_differences({.B = 1, .T = 1, .H = 1, .HV = 1, .K = 5, .V = 4, .h0 = true, .seed = 23}, 73);
  expect_gradients_match_differences({.B = 1, .T = 64, .H = 1, .HV = 1, .K = 4, .V = 4, .h0 = true, .seed = 24}, 74);
}

// Three chunks with strong decay: the dgamma terms of the last valid row and the carried decay dominate.
TEST(GdnBackward, MatchesFiniteDifferencesThreeChunksStrongDecay) {
  expect_gradients_match_differences(
      {.B = 1, .T = 150, .H = 1, .HV = 1, .K = 3, .V = 2, .h0 = true, .g_min = -1.5, .seed = 25}, 75);
}

TEST(GdnBackward, MatchesFiniteDifferencesPacked) {
  expect_gradients_match_differences(
      {.B = 1, .T = 100, .H = 1, .HV = 2, .K = 3, .V = 2, .h0 = true, .cu_seqlens = {0, 3, 3, 70, 100}, .seed = 26},
      76);
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

TEST(GdnMask, BinaryMaskMatchesMaskedRecurrence) {
  for (bool packed : {false, true}) {
    SCOPED_TRACE(packed ? "packed" : "batched");
    GdnCase c{.B = packed ? 1 : 2, .T = 260, .H = 1, .HV = 3, .K = 16, .V = 32, .h0 = true, .mask = MaskKind::Binary,
              .seed = 31};
    if (packed) c.cu_seqlens = {0, 130, 131, 260};
    expect_chunked_equals_recurrence(c);
  }
}

TEST(GdnMask, ContinuousMaskMatchesMaskedRecurrence) {
  expect_chunked_equals_recurrence(
      {.B = 1, .T = 200, .H = 2, .HV = 2, .K = 16, .V = 32, .h0 = true, .mask = MaskKind::Continuous, .seed = 32});
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
    expect_gradients_match_differences(c, c.seed + 1);  // both cases have h0 and a mask: all seven gradients
  }
}

// Cross-check against ../shared/reference/gdn_chunk_ref.py (the verified NumPy float64 reference): this test
// writes one case (inputs, forward outputs, gradients) as text and runs tests/kernels/gdn_check_numpy_ref.py on it,
// which recomputes everything with the NumPy reference and fails above 1e-12 relative error. Needs python3
// with numpy (Debian python3-numpy, which scripts/test.sh installs); it skips only where NATSL_NUMPY_OPTIONAL is
// set (scripts/gpu_test.sh, for GPU machines where nothing can be installed or ../shared/reference is absent).
// NATSL_GDN_DUMP=<file> keeps the case. The oracle lies outside this repository, in the shared reference folder
// beside the checkout (docs/gdn-algorithm.md §6.1); the algorithm it checks is §3-§4 there.

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

