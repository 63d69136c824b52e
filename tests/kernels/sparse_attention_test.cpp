// The sparse attention family (kernels/sparse_attention.h, kernels/cpu/sparse_attention.cpp,
// kernels/cuda/sparse_attention*.cu): the CPU kernel against the oracle, then the CUDA kernels against the CPU
// reference (SparseAttentionCuda, skipped without a GPU).
//
// Chunk-selected sparse attention (kernels/sparse_attention.h) against the dense f64 oracle, finite
// differences, and the two limiting cases (all chunks = causal attention, none = own chunk only).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "kernels/cuda/sparse_attention_plan.h"
#include "kernels/determinism.h"
#include "kernels/sparse_attention.h"
#include "tests/kernels/oracle.h"
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

// CUDA chunk-selected attention (kernels/cuda/sparse_attention*.cu) against the CPU reference run in f64 on
// the same rounded inputs: forward (o, lse) and backward (dq, dk, dv, router gradient dm), selections all /
// none / random / different per router head, T not a multiple of the chunk, G = 1 and 2, drop_own_chunk_grad,
// and the device-built selection index against the CPU one. Every GPU output starts as NaN.
// Paths: bf16 with 64-token chunks runs the tensor-core kernels; f32 data and other chunk sizes the SIMT ones.
// Tolerances (relative RMS): f32 1e-4 everywhere; bf16 1e-2 for o, dq, dk, dv and dm (P and dS enter their
// products rounded to bf16, outputs are stored in bf16), 1e-4 for lse (f32 arithmetic on the same inputs).
namespace natsl::testing {
namespace {

using kernels::SparseAttentionArgs;
using kernels::SparseAttentionIndex;

const Device kGpu = Device::cuda(0);

enum class Sel { All, None, Random, PerHead };

struct Case {
  int64_t B, T, Ha, Hr, Dk, Dv;
  Sel sel;
  bool drop_own = false;
  int64_t C = 64;
  uint64_t seed = 1;
};

std::string describe(const Case& c, DType dt) {
  const char* sel[] = {"all", "none", "random", "per-head"};
  return std::string(dtype_name(dt)) + " B" + std::to_string(c.B) + " T" + std::to_string(c.T) + " Ha" +
         std::to_string(c.Ha) + " Hr" + std::to_string(c.Hr) + " Dk" + std::to_string(c.Dk) + " Dv" +
         std::to_string(c.Dv) + " C" + std::to_string(c.C) + " sel=" + sel[int(c.sel)] +
         (c.drop_own ? " drop_own" : "");
}

// Softmax mask [B, NC, Hr] (1 = selected). PerHead: router head r selects with probability (r + 1) / (Hr + 1).
Tensor make_mask(const Case& c) {
  const int64_t NC = (c.T + c.C - 1) / c.C;
  std::vector<double> u = rand_uniform({c.B, NC, c.Hr}, c.seed * 31 + 7, 0.0, 1.0).to_vector<double>();
  for (int64_t i = 0; i < int64_t(u.size()); ++i) {
    const int64_t r = i % c.Hr;
    switch (c.sel) {
      case Sel::All: u[i] = 1; break;
      case Sel::None: u[i] = 0; break;
      case Sel::Random: u[i] = u[i] < 0.5 ? 1 : 0; break;
      case Sel::PerHead: u[i] = u[i] < double(r + 1) / double(c.Hr + 1) ? 1 : 0; break;
    }
  }
  return Tensor::from_vector(u, {c.B, NC, c.Hr}, DType::f64);
}

Tensor gpu_poisoned(const Shape& s, DType dt) {
  Tensor t = Tensor::empty(s, dt, kGpu);
  poison(t);
  return t;
}

struct Tol {
  double o, lse, grads;
};
constexpr Tol kF32{1e-4, 1e-4, 1e-4};
constexpr Tol kBf16{1e-2, 1e-4, 1e-2};

double check(const Tensor& got, const Tensor& ref, double tol, const std::string& what) {
  ErrorStats e = compare(got.to(kCPU).to(DType::f64), ref);
  EXPECT_TRUE(e.finite) << what << ": non-finite values (unwritten output?)";
  EXPECT_LE(e.rel_rms, tol) << what << ": relative RMS error (max abs " << e.max_abs << ")";
  return e.rel_rms;
}

void run_case(const Case& c, DType dt) {
  const std::string name = describe(c, dt);
  SCOPED_TRACE(name);
  const int64_t NC = (c.T + c.C - 1) / c.C;
  SparseAttentionArgs args;
  args.scale = 1.0 / std::sqrt(double(c.Dk));
  args.drop_own_chunk_grad = c.drop_own;
  // Rounded inputs: the GPU gets dt, the reference the same values in f64.
  auto input = [&](const Shape& s, uint64_t salt, double sd) { return randn(s, c.seed * 100 + salt, DType::f64, sd).to(dt); };
  const Tensor q = input({c.B, c.T, c.Ha, c.Dk}, 1, 1.5), k = input({c.B, c.T, c.Ha, c.Dk}, 2, 1.5);
  const Tensor v = input({c.B, c.T, c.Ha, c.Dv}, 3, 1.0), dout = input({c.B, c.T, c.Ha, c.Dv}, 4, 1.0);
  const Tensor mask = make_mask(c);

  // Reference (f64).
  const SparseAttentionIndex ref_index = kernels::sparse_attention_index(mask, c.C);
  const Tensor q64 = q.to(DType::f64), k64 = k.to(DType::f64), v64 = v.to(DType::f64), do64 = dout.to(DType::f64);
  Tensor o_ref = Tensor::empty(v64.shape(), DType::f64), lse_ref = Tensor::empty({c.B, c.T, c.Ha}, DType::f64);
  kernels::sparse_attention_fwd(args, ref_index, q64, k64, v64, o_ref, lse_ref);
  Tensor dq_ref = Tensor::empty(q64.shape(), DType::f64), dk_ref = Tensor::empty(k64.shape(), DType::f64);
  Tensor dv_ref = Tensor::empty(v64.shape(), DType::f64), dm_ref = Tensor::empty({c.B, NC, c.Hr}, DType::f64);

  // GPU: index on the device from the mask, forward, backward.
  const SparseAttentionIndex index = kernels::sparse_attention_index(mask.to(DType::f32).to(kGpu), c.C);
  EXPECT_EQ(index.chunks.to(kCPU).to_vector<int32_t>(), ref_index.chunks.to_vector<int32_t>());
  EXPECT_EQ(index.prefix.to(kCPU).to_vector<int32_t>(), ref_index.prefix.to_vector<int32_t>());
  const Tensor qg = q.to(kGpu), kg = k.to(kGpu), vg = v.to(kGpu), dog = dout.to(kGpu);
  Tensor o = gpu_poisoned(v.shape(), dt), lse = gpu_poisoned({c.B, c.T, c.Ha}, DType::f32);
  kernels::sparse_attention_fwd(args, index, qg, kg, vg, o, lse);
  Tensor dq = gpu_poisoned(q.shape(), dt), dk = gpu_poisoned(k.shape(), dt), dv = gpu_poisoned(v.shape(), dt);
  Tensor dm = gpu_poisoned({c.B, NC, c.Hr}, DType::f32);
  kernels::sparse_attention_bwd(args, index, qg, kg, vg, o, lse, dog, dq, dk, dv, dm);

  // The reference backward takes the GPU's (rounded) o and lse, as the GPU backward does.
  const Tensor o_host = o.to(kCPU).to(DType::f64), lse_host = lse.to(kCPU).to(DType::f64);
  kernels::sparse_attention_bwd(args, ref_index, q64, k64, v64, o_host, lse_host, do64, dq_ref, dk_ref, dv_ref, dm_ref);

  const Tol tol = dt == DType::bf16 ? kBf16 : kF32;
  const double eo = check(o, o_ref, tol.o, "o"), el = check(lse, lse_ref, tol.lse, "lse");
  const double eq = check(dq, dq_ref, tol.grads, "dq"), ek = check(dk, dk_ref, tol.grads, "dk");
  const double ev = check(dv, dv_ref, tol.grads, "dv"), em = check(dm, dm_ref, tol.grads, "dm");
  std::printf("[attn] %-62s rel RMS o %.1e lse %.1e dq %.1e dk %.1e dv %.1e dm %.1e\n", name.c_str(), eo, el, eq, ek,
              ev, em);
}

const std::vector<Case>& cases() {
  static const std::vector<Case> cs = {
      {1, 1, 1, 1, 64, 64, Sel::All},
      {2, 63, 2, 1, 64, 128, Sel::Random, false, 64, 2},
      {1, 65, 2, 2, 128, 64, Sel::None, false, 64, 3},
      {2, 200, 4, 2, 64, 128, Sel::PerHead, false, 64, 4},
      {1, 1000, 2, 1, 128, 256, Sel::Random, false, 64, 5},
      {2, 256, 2, 2, 128, 128, Sel::All, false, 64, 6},
      {1, 200, 4, 2, 64, 256, Sel::Random, true, 64, 7},
      {2, 130, 2, 1, 64, 64, Sel::All, true, 64, 8},
      {1, 300, 4, 4, 128, 128, Sel::PerHead, true, 64, 9},
      {2, 129, 2, 2, 64, 64, Sel::None, true, 64, 10},
      // Other chunk sizes and head dims: the SIMT kernels for bf16 too.
      {1, 100, 2, 1, 64, 64, Sel::Random, false, 32, 11},
      {2, 77, 2, 2, 16, 24, Sel::PerHead, true, 16, 12},
  };
  return cs;
}

TEST(SparseAttentionCuda, F32MatchesCpuReference) {
  NATSL_REQUIRE_GPU();
  for (const Case& c : cases()) run_case(c, DType::f32);
}

TEST(SparseAttentionCuda, Bf16MatchesCpuReference) {
  NATSL_REQUIRE_GPU();
  for (const Case& c : cases()) run_case(c, DType::bf16);
}

// The NAtS-L layer's shape (12 heads, 6 router heads, Dk 64, Dv 128) at T = 1024, and Transformer++'s full
// selection at Dk = Dv = 128.
TEST(SparseAttentionCuda, Bf16LayerShapes) {
  NATSL_REQUIRE_GPU();
  run_case({1, 1024, 12, 6, 64, 128, Sel::Random, false, 64, 21}, DType::bf16);
  run_case({1, 1024, 4, 4, 128, 128, Sel::All, false, 64, 22}, DType::bf16);
}

// Deterministic mode (kernels/determinism.h): the tensor-core backward adds into dq in key-chunk order. It
// still matches the CPU reference, on every path and selection kind.
TEST(SparseAttentionCuda, DeterministicModeMatchesCpuReference) {
  NATSL_REQUIRE_GPU();
  kernels::DeterministicGuard det(true);
  for (const Case& c : cases()) run_case(c, DType::bf16);
  run_case({1, 1024, 12, 6, 64, 128, Sel::Random, false, 64, 23}, DType::bf16);
  run_case({2, 77, 2, 2, 16, 24, Sel::PerHead, true, 16, 12}, DType::f32);
}

// Deterministic mode gives the same bits on every run (dq, dk, dv, dm), and differs from the default (atomic
// order) path only by rounding; dm (a fixed-order sum of per-head parts) is the same bits in both modes.
TEST(SparseAttentionCuda, DeterministicModeRepeatsBitForBit) {
  NATSL_REQUIRE_GPU();
  for (const Case& c : {Case{2, 2048, 12, 6, 64, 128, Sel::Random, false, 64, 41},
                        Case{1, 1500, 4, 2, 128, 256, Sel::PerHead, true, 64, 42},
                        Case{2, 333, 4, 2, 64, 64, Sel::Random, false, 32, 43}}) {
    SCOPED_TRACE(describe(c, DType::bf16));
    const int64_t NC = (c.T + c.C - 1) / c.C;
    SparseAttentionArgs args;
    args.scale = 1.0 / std::sqrt(double(c.Dk));
    args.drop_own_chunk_grad = c.drop_own;
    auto input = [&](const Shape& s, uint64_t salt) {
      return randn(s, c.seed * 100 + salt, DType::f64, 1.5).to(DType::bf16).to(kGpu);
    };
    const Tensor q = input({c.B, c.T, c.Ha, c.Dk}, 1), k = input({c.B, c.T, c.Ha, c.Dk}, 2);
    const Tensor v = input({c.B, c.T, c.Ha, c.Dv}, 3), dout = input({c.B, c.T, c.Ha, c.Dv}, 4);
    const SparseAttentionIndex index = kernels::sparse_attention_index(make_mask(c).to(DType::f32).to(kGpu), c.C);
    Tensor o = gpu_poisoned(v.shape(), DType::bf16), lse = gpu_poisoned({c.B, c.T, c.Ha}, DType::f32);
    kernels::sparse_attention_fwd(args, index, q, k, v, o, lse);
    auto backward = [&](bool det) {
      kernels::DeterministicGuard g(det);
      std::vector<Tensor> out = {gpu_poisoned(q.shape(), DType::bf16), gpu_poisoned(k.shape(), DType::bf16),
                                 gpu_poisoned(v.shape(), DType::bf16), gpu_poisoned({c.B, NC, c.Hr}, DType::f32)};
      kernels::sparse_attention_bwd(args, index, q, k, v, o, lse, dout, out[0], out[1], out[2], out[3]);
      std::vector<std::vector<float>> host;
      for (const Tensor& t : out) host.push_back(t.to(kCPU).to(DType::f32).to_vector<float>());
      return host;
    };
    const auto first = backward(true);
    for (int rep = 0; rep < 3; ++rep) {
      const auto again = backward(true);
      for (int i = 0; i < 4; ++i) EXPECT_TRUE(again[i] == first[i]) << "output " << i << " (dq, dk, dv, dm) differs on rerun " << rep;
    }
    const auto fast = backward(false);
    EXPECT_TRUE(fast[3] == first[3]) << "dm differs between the modes";
    EXPECT_TRUE(fast[1] == first[1] && fast[2] == first[2]) << "dk/dv differ between the modes";
    double num = 0, den = 0;
    for (size_t i = 0; i < first[0].size(); ++i) {
      ASSERT_TRUE(std::isfinite(first[0][i]));
      num += double(fast[0][i] - first[0][i]) * (fast[0][i] - first[0][i]);
      den += double(first[0][i]) * first[0][i];
    }
    EXPECT_LE(std::sqrt(num / std::max(den, 1e-30)), 1e-2) << "dq: the modes differ by more than bf16 rounding";
  }
}

// The forward with a named kernel (kernels/cuda/sparse_attention_plan.h), and whether that kernel takes the tensors
// (a CPU-only build has no CUDA kernels; its GPU tests skip before these are called).
using FwdKernel = kernels::cuda::SparseAttentionFwdPlan::Kernel;
bool fwd_takes(FwdKernel kernel, const SparseAttentionIndex& index, const Tensor& q, const Tensor& k, const Tensor& v,
               const Tensor& o) {
#ifdef NATSL_WITH_CUDA
  return kernels::cuda::sparse_attention_fwd_takes(kernel, index, q, k, v, o);
#else
  (void)kernel, (void)index, (void)q, (void)k, (void)v, (void)o;
  return false;
#endif
}
void fwd_with(FwdKernel kernel, const SparseAttentionArgs& args, const SparseAttentionIndex& index, const Tensor& q,
              const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse) {
#ifdef NATSL_WITH_CUDA
  kernels::cuda::sparse_attention_fwd(args, index, q, k, v, o, lse, kernels::cuda::SparseAttentionFwdPlan{kernel});
#else
  (void)kernel;
  kernels::sparse_attention_fwd(args, index, q, k, v, o, lse);
#endif
}

// The Hopper forward (wgmma with TMA loads, sparse_attention_fwd_wgmma.sm90a.cu), which the dispatch takes on
// compute capability 9.0 for bf16, 64-token chunks and Dk, Dv in {64, 128}, gives the mma.sync kernel's bits (o and
// lse) on every shape it takes: both head dims each, T a multiple of the chunk and not (a partial last chunk's
// boxes read the next sequence's rows, or TMA's zero fill past the last), one chunk, G = 1 and 2, every selection
// kind, many tiles (T 4096). The cases above check the default path, which is this kernel on such a GPU, against
// the f64 reference. A shape it does not take (Dv 256, f32) falls back to the mma.sync / SIMT kernels.
TEST(SparseAttentionCuda, WgmmaForwardGivesTheMmaSyncBits) {
  NATSL_REQUIRE_GPU();
  const std::vector<Case> cs = {
      {1, 64, 1, 1, 64, 128, Sel::All, false, 64, 51},       {2, 200, 4, 2, 64, 128, Sel::PerHead, false, 64, 52},
      {2, 256, 2, 2, 128, 128, Sel::All, false, 64, 53},     {1, 1000, 2, 1, 128, 64, Sel::Random, false, 64, 54},
      {2, 130, 2, 1, 64, 64, Sel::All, false, 64, 55},       {3, 129, 2, 2, 64, 64, Sel::None, false, 64, 56},
      {1, 1, 1, 1, 64, 128, Sel::All, false, 64, 57},        {2, 4096, 12, 6, 64, 128, Sel::Random, false, 64, 58},
      {1, 2048, 4, 4, 128, 128, Sel::PerHead, false, 64, 59}, {1, 333, 4, 2, 64, 256, Sel::Random, false, 64, 60},
  };
  bool first = true;
  for (const Case& c : cs) {
    SCOPED_TRACE(describe(c, DType::bf16));
    SparseAttentionArgs args;
    args.scale = 1.0 / std::sqrt(double(c.Dk));
    auto input = [&](const Shape& sh, uint64_t salt) {
      return randn(sh, c.seed * 100 + salt, DType::f64, 1.5).to(DType::bf16).to(kGpu);
    };
    const Tensor q = input({c.B, c.T, c.Ha, c.Dk}, 1), k = input({c.B, c.T, c.Ha, c.Dk}, 2);
    const Tensor v = input({c.B, c.T, c.Ha, c.Dv}, 3);
    const SparseAttentionIndex index = kernels::sparse_attention_index(make_mask(c).to(DType::f32).to(kGpu), c.C);
    const bool takes = fwd_takes(FwdKernel::wgmma, index, q, k, v, v);
    if (first && !takes)  // the first case is one it takes on an sm_90 GPU
      GTEST_SKIP() << "the wgmma forward runs on compute capability 9.0 (H100, H200) only; this GPU has another";
    first = false;
    EXPECT_EQ(takes, c.Dv <= 128) << "the wgmma forward takes Dk, Dv in {64, 128}";
    std::vector<std::vector<float>> out[2];
    for (int i = 0; i < 2; ++i) {
      Tensor o = gpu_poisoned(v.shape(), DType::bf16), lse = gpu_poisoned({c.B, c.T, c.Ha}, DType::f32);
      fwd_with(i == 0 ? FwdKernel::wgmma : FwdKernel::mma_sync, args, index, q, k, v, o, lse);
      out[i] = {o.to(kCPU).to(DType::f32).to_vector<float>(), lse.to(kCPU).to_vector<float>()};
      for (const auto& t : out[i])
        for (float x : t) ASSERT_TRUE(std::isfinite(x)) << (i == 0 ? "wgmma" : "mma.sync") << ": an output left unwritten";
    }
    EXPECT_TRUE(out[0][0] == out[1][0]) << "o differs from the mma.sync kernel's";
    EXPECT_TRUE(out[0][1] == out[1][1]) << "lse differs from the mma.sync kernel's";
  }
  // NaN in the next sequence's first rows (k and v) stays out of a sequence's partial last chunk: the wgmma
  // forward's boxes past T read TMA's zeros there, as the mma.sync kernel's copies do, so sequence 0's o and lse are
  // finite and the mma.sync kernel's bits.
  {
    const Case c{2, 100, 2, 1, 64, 128, Sel::All, false, 64, 61};
    SparseAttentionArgs args;
    args.scale = 1.0 / std::sqrt(double(c.Dk));
    auto with_nan_row = [&](int64_t D, uint64_t salt) {
      std::vector<double> x = randn({c.B, c.T, c.Ha, D}, c.seed * 100 + salt, DType::f64, 1.5).to_vector<double>();
      for (int64_t i = 0; i < c.Ha * D; ++i) x[size_t(c.T * c.Ha * D + i)] = std::nan("");  // sequence 1, row 0
      return Tensor::from_vector(x, {c.B, c.T, c.Ha, D}, DType::f64).to(DType::bf16).to(kGpu);
    };
    const Tensor q = randn({c.B, c.T, c.Ha, c.Dk}, c.seed * 100 + 1, DType::f64, 1.5).to(DType::bf16).to(kGpu);
    const Tensor k = with_nan_row(c.Dk, 2), v = with_nan_row(c.Dv, 3);
    const SparseAttentionIndex index = kernels::sparse_attention_index(make_mask(c).to(DType::f32).to(kGpu), c.C);
    std::vector<float> o0[2], l0[2];
    for (int i = 0; i < 2; ++i) {
      Tensor o = gpu_poisoned(v.shape(), DType::bf16), lse = gpu_poisoned({c.B, c.T, c.Ha}, DType::f32);
      fwd_with(i == 0 ? FwdKernel::wgmma : FwdKernel::mma_sync, args, index, q, k, v, o, lse);
      o0[i] = o.slice(0, 0, 1).contiguous().to(kCPU).to(DType::f32).to_vector<float>();
      l0[i] = lse.slice(0, 0, 1).contiguous().to(kCPU).to_vector<float>();
      for (float x : o0[i]) ASSERT_TRUE(std::isfinite(x)) << (i == 0 ? "wgmma" : "mma.sync") << ": sequence 0 saw the NaN";
    }
    EXPECT_TRUE(o0[0] == o0[1]) << "sequence 0's o differs from the mma.sync kernel's next to a NaN sequence";
    EXPECT_TRUE(l0[0] == l0[1]) << "sequence 0's lse differs from the mma.sync kernel's next to a NaN sequence";
  }
  // f32 data: neither tensor-core kernel takes it.
  const SparseAttentionIndex index = kernels::sparse_attention_index_all(1, 1, 2, 64, true, kGpu);
  const Tensor q = Tensor::zeros({1, 128, 1, 64}, DType::f32, kGpu), v = Tensor::zeros({1, 128, 1, 64}, DType::f32, kGpu);
  EXPECT_FALSE(fwd_takes(FwdKernel::wgmma, index, q, q, v, v));
  EXPECT_FALSE(fwd_takes(FwdKernel::mma_sync, index, q, q, v, v));
  EXPECT_TRUE(fwd_takes(FwdKernel::simt, index, q, q, v, v));
}

TEST(SparseAttentionCuda, DeviceIndexMatchesCpu) {
  NATSL_REQUIRE_GPU();
  // NC = 70 spans three 32-chunk ballot rounds; a bf16 mask is read as well as an f32 one.
  for (DType dt : {DType::f32, DType::bf16}) {
    const Case c{3, 70 * 64 - 5, 5, 5, 64, 64, Sel::PerHead, false, 64, 31};
    const Tensor mask = make_mask(c);
    const SparseAttentionIndex ref = kernels::sparse_attention_index(mask, c.C);
    const SparseAttentionIndex got = kernels::sparse_attention_index(mask.to(dt).to(kGpu), c.C);
    EXPECT_EQ(got.chunks.to(kCPU).to_vector<int32_t>(), ref.chunks.to_vector<int32_t>());
    EXPECT_EQ(got.prefix.to(kCPU).to_vector<int32_t>(), ref.prefix.to_vector<int32_t>());
  }
}

TEST(SparseAttentionCuda, RejectsUnsupportedHeadDim) {
  NATSL_REQUIRE_GPU();
  const SparseAttentionIndex index = kernels::sparse_attention_index_all(1, 1, 1, 64, true, kGpu);
  const Tensor q = Tensor::zeros({1, 8, 1, 160}, DType::f32, kGpu), v = Tensor::zeros({1, 8, 1, 64}, DType::f32, kGpu);
  Tensor o = Tensor::empty(v.shape(), DType::f32, kGpu), lse = Tensor::empty({1, 8, 1}, DType::f32, kGpu);
  EXPECT_THROW(kernels::sparse_attention_fwd(SparseAttentionArgs{}, index, q, q, v, o, lse), Error);
}

}  // namespace
}  // namespace natsl::testing
