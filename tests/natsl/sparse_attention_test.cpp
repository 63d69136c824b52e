// Chunk-selected sparse attention (kernels/sparse_attention.h) against the dense f64 oracle, finite
// differences, and the two limiting cases (all chunks = causal attention, none = own chunk only).
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/sparse_attention.h"
#include "tests/natsl/oracle.h"
#include "tests/test_util.h"

using namespace natsl;
using namespace natsl::kernels;
using natsl::testing::poison;
using natsl::testing::randn;

namespace {

enum class Selection { All, None, Random, PerHeadRandom };

struct Case {
  int64_t B = 2, T = 130, Ha = 4, Hr = 2, Dk = 5, Dv = 3, C = 64;
  Selection sel = Selection::Random;
  uint64_t seed = 1;
};

// A softmax mask [B, NC, Hr] of exact 0/1 labels. Random: one pattern shared by all router heads of a batch
// row; PerHeadRandom: independent per (b, r).
Tensor make_mask(const Case& c) {
  const int64_t NC = (c.T + c.C - 1) / c.C;
  Tensor m = Tensor::zeros({c.B, NC, c.Hr}, DType::f64);
  Tensor u = natsl::testing::rand_uniform({c.B, NC, c.Hr}, c.seed + 99, 0.0, 1.0);
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t n = 0; n < NC; ++n)
      for (int64_t r = 0; r < c.Hr; ++r) {
        double v = 0;
        switch (c.sel) {
          case Selection::All: v = 1; break;
          case Selection::None: v = 0; break;
          case Selection::Random: v = oracle::cptr(u)[(b * NC + n) * c.Hr] < 0.5; break;
          case Selection::PerHeadRandom: v = oracle::cptr(u)[(b * NC + n) * c.Hr + r] < 0.5; break;
        }
        oracle::ptr(m)[(b * NC + n) * c.Hr + r] = v;
      }
  return m;
}

struct Inputs {
  Tensor q, k, v, dout, mask;
  double scale;
};
Inputs make_inputs(const Case& c) {
  return {randn({c.B, c.T, c.Ha, c.Dk}, c.seed), randn({c.B, c.T, c.Ha, c.Dk}, c.seed + 1),
          randn({c.B, c.T, c.Ha, c.Dv}, c.seed + 2), randn({c.B, c.T, c.Ha, c.Dv}, c.seed + 3), make_mask(c),
          1.0 / std::sqrt(double(c.Dk))};
}

struct AttnRun {
  Tensor o, lse, dq, dk, dv, dm;
};
AttnRun run_kernels(const Inputs& in, int64_t C, bool drop_own = false, const Tensor& mult = Tensor()) {
  SparseAttentionIndex index = sparse_attention_index(in.mask, C);
  SparseAttentionArgs args{in.scale, drop_own, mult};
  const DType dt = in.q.dtype();
  const DType st = dt == DType::f64 ? DType::f64 : DType::f32;
  const int64_t B = in.q.size(0), T = in.q.size(1), Ha = in.q.size(2);
  AttnRun r{Tensor::empty(in.v.shape(), dt), Tensor::empty({B, T, Ha}, st), Tensor::empty(in.q.shape(), dt),
        Tensor::empty(in.k.shape(), dt), Tensor::empty(in.v.shape(), dt), Tensor::empty(in.mask.shape(), st)};
  for (Tensor* t : {&r.o, &r.lse, &r.dq, &r.dk, &r.dv, &r.dm}) poison(*t);
  sparse_attention_fwd(args, index, in.q, in.k, in.v, r.o, r.lse);
  sparse_attention_bwd(args, index, in.q, in.k, in.v, r.o, r.lse, in.dout.to(dt), r.dq, r.dk, r.dv, r.dm);
  return r;
}

void expect_matches_oracle(const Case& c, bool drop_own = false) {
  const Inputs in = make_inputs(c);
  const AttnRun r = run_kernels(in, c.C, drop_own);
  const oracle::AttentionOut f = oracle::attention_fwd(in.q, in.k, in.v, in.mask, c.C, in.scale);
  const oracle::AttentionGrads g =
      oracle::attention_bwd(in.q, in.k, in.v, in.mask, c.C, in.scale, in.dout, drop_own);
  EXPECT_CLOSE(r.o, f.o, 1e-13, 1e-12);
  EXPECT_CLOSE(r.lse, f.lse, 1e-13, 1e-12);
  EXPECT_CLOSE(r.dq, g.dq, 1e-12, 1e-12);
  EXPECT_CLOSE(r.dk, g.dk, 1e-12, 1e-12);
  EXPECT_CLOSE(r.dv, g.dv, 1e-12, 1e-12);
  EXPECT_CLOSE(r.dm, g.dm, 1e-12, 1e-12);
}

double loss_of(const Inputs& in, int64_t C, const Tensor& mult = Tensor()) {
  return oracle::inner(oracle::attention_fwd(in.q, in.k, in.v, in.mask, C, in.scale, mult).o, in.dout);
}

}  // namespace

TEST(SparseAttention, MatchesOracleAllSelected) { expect_matches_oracle({.sel = Selection::All, .seed = 11}); }
TEST(SparseAttention, MatchesOracleNoneSelected) { expect_matches_oracle({.sel = Selection::None, .seed = 12}); }
TEST(SparseAttention, MatchesOracleRandomSelection) { expect_matches_oracle({.sel = Selection::Random, .seed = 13}); }
TEST(SparseAttention, MatchesOraclePerHeadSelection) {
  expect_matches_oracle({.sel = Selection::PerHeadRandom, .seed = 14});
}
// Small chunks (many of them), one batch row, one head, T = 1 and T = C + 1.
TEST(SparseAttention, MatchesOracleAwkwardSizes) {
  expect_matches_oracle({.B = 1, .T = 77, .Ha = 3, .Hr = 1, .Dk = 4, .Dv = 6, .C = 8, .sel = Selection::Random,
                         .seed = 15});
  expect_matches_oracle({.B = 1, .T = 1, .Ha = 1, .Hr = 1, .Dk = 2, .Dv = 1, .C = 64, .seed = 16});
  expect_matches_oracle({.B = 3, .T = 65, .Ha = 2, .Hr = 2, .Dk = 3, .Dv = 2, .C = 64, .seed = 17});
}

// The reference's released backward (natsl-layer.md §4.1): the own-chunk pairs are dropped from dq/dk/dv;
// the router gradient is unchanged.
TEST(SparseAttention, DropOwnChunkGradMatchesOracle) {
  expect_matches_oracle({.sel = Selection::PerHeadRandom, .seed = 18}, true);
  const Case c{.sel = Selection::Random, .seed = 19};
  const Inputs in = make_inputs(c);
  const AttnRun exact = run_kernels(in, c.C), dropped = run_kernels(in, c.C, true);
  EXPECT_CLOSE(dropped.dm, exact.dm, 1e-14, 1e-14);
  EXPECT_GT(natsl::testing::compare(dropped.dq, exact.dq).rel_rms, 1e-2);  // the flag changes dq
}

// dq, dk, dv are the derivatives of <o, dout>: finite differences of the oracle.
TEST(SparseAttention, GradientsMatchFiniteDifferences) {
  const Case c{.B = 1, .T = 45, .Ha = 2, .Hr = 1, .Dk = 3, .Dv = 2, .C = 8, .sel = Selection::Random, .seed = 21};
  const Inputs in = make_inputs(c);
  const AttnRun r = run_kernels(in, c.C);
  auto loss = [&] { return loss_of(in, c.C); };
  EXPECT_CLOSE(r.dq, oracle::finite_difference(loss, in.q), 1e-7, 1e-7);
  EXPECT_CLOSE(r.dk, oracle::finite_difference(loss, in.k), 1e-7, 1e-7);
  EXPECT_CLOSE(r.dv, oracle::finite_difference(loss, in.v), 1e-7, 1e-7);
}

// The router gradient is d<o, dout>/dmu_c at mu = 1 for a multiplier mu_c on the selected chunk's weights
// (natsl-layer.md §4.2), and 0 for chunks not selected. Also checked away from mu = 1 through chunk_mult
// (dm = mu dL/dmu there).
TEST(SparseAttention, RouterGradientMatchesFiniteDifferencesOfChunkMultiplier) {
  for (Selection sel : {Selection::Random, Selection::PerHeadRandom, Selection::All}) {
    const Case c{.B = 2, .T = 100, .Ha = 4, .Hr = 2, .Dk = 3, .Dv = 2, .C = 16, .sel = sel, .seed = 31};
    const Inputs in = make_inputs(c);
    Tensor mult = Tensor::full(in.mask.shape(), 1.0, DType::f64);
    const AttnRun r = run_kernels(in, c.C);
    Tensor num = oracle::finite_difference([&] { return loss_of(in, c.C, mult); }, mult);
    for (int64_t n = 0; n < num.numel(); ++n) oracle::ptr(num)[n] *= oracle::cptr(in.mask)[n];
    EXPECT_CLOSE(r.dm, num, 1e-7, 1e-7);
    EXPECT_GT(natsl::testing::compare(num, Tensor::zeros(num.shape(), DType::f64)).max_abs, 1e-3);

    Tensor mult2 = natsl::testing::rand_uniform(in.mask.shape(), 32, 0.5, 1.5);
    const AttnRun r2 = run_kernels(in, c.C, false, mult2);
    Tensor num2 = oracle::finite_difference([&] { return loss_of(in, c.C, mult2); }, mult2);
    for (int64_t n = 0; n < num2.numel(); ++n)
      oracle::ptr(num2)[n] *= oracle::cptr(in.mask)[n] * oracle::cptr(mult2)[n];
    EXPECT_CLOSE(r2.dm, num2, 1e-7, 1e-7);
    EXPECT_CLOSE(r2.o, oracle::attention_fwd(in.q, in.k, in.v, in.mask, c.C, in.scale, mult2).o, 1e-13, 1e-12);
  }
}

// With every chunk selected the branch is plain causal attention; with none, attention over the own chunk
// only. The expected values are computed here directly (softmax over j <= i, resp. j <= i in i's chunk).
TEST(SparseAttention, LimitingCasesAreCausalAndBlockDiagonalAttention) {
  for (bool all : {true, false}) {
    const Case c{.B = 1, .T = 140, .Ha = 2, .Hr = 1, .Dk = 4, .Dv = 3, .C = 64,
                 .sel = all ? Selection::All : Selection::None, .seed = 41};
    const Inputs in = make_inputs(c);
    const AttnRun r = run_kernels(in, c.C);
    Tensor expect = Tensor::zeros(in.v.shape(), DType::f64);
    for (int64_t a = 0; a < c.Ha; ++a)
      for (int64_t i = 0; i < c.T; ++i) {
        const int64_t j0 = all ? 0 : i / c.C * c.C;
        std::vector<double> w;
        double mx = -1e300, den = 0;
        for (int64_t j = j0; j <= i; ++j) {
          double s = 0;
          for (int64_t e = 0; e < c.Dk; ++e)
            s += oracle::cptr(in.q)[(i * c.Ha + a) * c.Dk + e] * oracle::cptr(in.k)[(j * c.Ha + a) * c.Dk + e];
          w.push_back(s * in.scale);
          mx = std::max(mx, w.back());
        }
        for (double& x : w) den += (x = std::exp(x - mx));
        for (int64_t e = 0; e < c.Dv; ++e) {
          double s = 0;
          for (int64_t j = j0; j <= i; ++j) s += w[j - j0] * oracle::cptr(in.v)[(j * c.Ha + a) * c.Dv + e];
          oracle::ptr(expect)[(i * c.Ha + a) * c.Dv + e] = s / den;
        }
      }
    EXPECT_CLOSE(r.o, expect, 1e-13, 1e-12);
    // sparse_attention_index_all builds the same index as the all-ones / all-zeros mask.
    SparseAttentionIndex a = sparse_attention_index_all(1, 1, 3, 64, all), b = sparse_attention_index(in.mask, 64);
    EXPECT_EQ(a.chunks.to_vector<int32_t>(), b.chunks.to_vector<int32_t>());
    EXPECT_EQ(a.prefix.to_vector<int32_t>(), b.prefix.to_vector<int32_t>());
  }
}

TEST(SparseAttention, IndexListsSelectedChunksAndPrefixCounts) {
  // B = 1, NC = 5, Hr = 2: head 0 selects chunks 1 and 3, head 1 selects 0, 1 and 4.
  Tensor mask = Tensor::from_vector<double>({0, 1, 1, 1, 0, 0, 1, 0, 0, 1}, {1, 5, 2});
  SparseAttentionIndex idx = sparse_attention_index(mask, 64);
  EXPECT_EQ(idx.chunks.to_vector<int32_t>(), (std::vector<int32_t>{1, 3, 5, 5, 5, 0, 1, 4, 5, 5}));
  EXPECT_EQ(idx.prefix.to_vector<int32_t>(), (std::vector<int32_t>{0, 0, 1, 1, 2, 2, 0, 1, 2, 2, 2, 3}));
}

// f32 and bf16 inputs run the same algorithm with f32 accumulation.
TEST(SparseAttention, LowPrecisionCloseToF64) {
  const Case c{.B = 1, .T = 100, .Ha = 2, .Hr = 1, .Dk = 8, .Dv = 8, .C = 32, .sel = Selection::Random, .seed = 51};
  const Inputs in = make_inputs(c);
  const AttnRun ref = run_kernels(in, c.C);
  for (DType dt : {DType::f32, DType::bf16}) {
    Inputs low{in.q.to(dt), in.k.to(dt), in.v.to(dt), in.dout, in.mask.to(DType::f32), in.scale};
    const AttnRun r = run_kernels(low, c.C);
    const double tol = dt == DType::f32 ? 1e-5 : 2e-2;
    EXPECT_CLOSE(r.o.to(DType::f64), ref.o, tol, 20 * tol);
    EXPECT_CLOSE(r.dq.to(DType::f64), ref.dq, 2 * tol, 40 * tol);
    EXPECT_CLOSE(r.dk.to(DType::f64), ref.dk, 2 * tol, 40 * tol);
    EXPECT_CLOSE(r.dv.to(DType::f64), ref.dv, 2 * tol, 40 * tol);
    EXPECT_CLOSE(r.dm.to(DType::f64), ref.dm, 2 * tol, 40 * tol);
  }
}

TEST(SparseAttention, RejectsMismatchedShapes) {
  const Case c{.B = 1, .T = 70, .Ha = 2, .Hr = 1, .Dk = 3, .Dv = 2};
  const Inputs in = make_inputs(c);
  SparseAttentionIndex idx = sparse_attention_index(in.mask, 64);
  Tensor o = Tensor::empty(in.v.shape(), DType::f64), lse = Tensor::empty({1, 70, 2}, DType::f64);
  SparseAttentionArgs args{0.5, false, {}};
  EXPECT_THROW(sparse_attention_fwd(args, sparse_attention_index(in.mask, 32), in.q, in.k, in.v, o, lse), Error);
  EXPECT_THROW(sparse_attention_fwd(args, idx, in.q, in.k, in.v, o, Tensor::empty({1, 70, 2}, DType::f32)), Error);
  EXPECT_THROW(sparse_attention_fwd(args, sparse_attention_index_all(1, 3, 2, 64, true), in.q, in.k, in.v, o, lse),
               Error);
}
