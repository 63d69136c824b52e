// Chunked GDN forward against the f64 token recurrence: T around the chunk size, grouped v heads, initial
// state, packed sequences, f32 / bf16 instantiations.
#include <gtest/gtest.h>

#include "tests/gdn/gdn_test_util.h"

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
