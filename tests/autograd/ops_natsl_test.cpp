// The NAtS-L ops (autograd/ops_natsl.h): gradchecks of each op, then the whole mixed operator from the
// kernels against the f64 oracle.
//
// The NAtS-L autograd ops (autograd/ops_natsl.h): gradcheck of each node, and the router gradient flowing
// from the branches' mask gradients back to the logits.
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "autograd/ops_natsl.h"
#include "kernels/gdn.h"
#include "kernels/mix_norm_gate.h"
#include "kernels/router.h"
#include "kernels/sparse_attention.h"
#include "tests/kernels/oracle.h"
#include "tests/test_util.h"

using namespace natsl;
using natsl::testing::randn;

namespace {
Tensor leaf(const Tensor& t) {
  t.set_requires_grad(true);
  return t;
}
}  // namespace

TEST(NatslOps, ChunkMeanPoolGradcheck) {
  Tensor x = leaf(randn({2, 70, 3}, 1));
  auto r = gradcheck([](const std::vector<Tensor>& in) { return chunk_mean_pool(in[0], 64); }, {x});
  EXPECT_TRUE(r.ok) << r.message;
}

TEST(NatslOps, MixNormGateGradcheck) {
  std::vector<Tensor> in{leaf(randn({2, 3, 2, 4}, 2)), leaf(randn({2, 3, 2, 4}, 3)), leaf(randn({2, 3, 2, 2}, 4)),
                         leaf(randn({2, 3, 2, 4}, 5)),
                         leaf(natsl::testing::rand_uniform({4}, 6, 0.5, 1.5)),
                         leaf(natsl::testing::rand_uniform({4}, 7, 0.5, 1.5))};
  auto r = gradcheck(
      [](const std::vector<Tensor>& t) { return mix_norm_gate(t[0], t[1], t[2], t[3], t[4], t[5], 1e-6); }, in);
  EXPECT_TRUE(r.ok) << r.message;
}

TEST(NatslOps, RmsnormGateGradcheckAndEqualsTheComposedOps) {
  std::vector<Tensor> in{leaf(randn({2, 3, 2, 6}, 12)), leaf(natsl::testing::rand_uniform({6}, 13, 0.5, 1.5)),
                         leaf(randn({2, 3, 2, 6}, 14))};
  auto r = gradcheck([](const std::vector<Tensor>& t) { return rmsnorm_gate(t[0], t[1], t[2], 1e-6); }, in);
  EXPECT_TRUE(r.ok) << r.message;
  // The fused node computes what rmsnorm, silu and mul compute (GDN's output before the fusion), in f64.
  const Tensor fused = rmsnorm_gate(in[0], in[1], in[2], 1e-6);
  const Tensor composed = mul(rmsnorm(in[0], in[1], 1e-6), silu(in[2]));
  EXPECT_CLOSE(fused.detach(), composed.detach(), 1e-14, 1e-14);
}

// q, k, v by gradcheck for a random selection (the mask is a hard label: no finite differences through it).
TEST(NatslOps, SparseAttentionGradcheck) {
  Tensor mask = Tensor::from_vector<double>({1, 0, 0, 1, 1, 1}, {1, 3, 2});
  for (bool causal : {false, true}) {
    std::vector<Tensor> in{leaf(randn({1, 40, 4, 3}, 8)), leaf(randn({1, 40, 4, 3}, 9)), leaf(randn({1, 40, 4, 2}, 10))};
    auto r = gradcheck(
        [&](const std::vector<Tensor>& t) {
          return causal ? causal_attention(t[0], t[1], t[2], 0.5, 16) : sparse_attention(t[0], t[1], t[2], mask, 0.5, 16);
        },
        in);
    EXPECT_TRUE(r.ok) << r.message;
  }
}

// logits -> router_choice -> (attention over mask_softmax, a linear function of mask_gdn) -> loss: the logits'
// gradient is p (dm - <dm, p>) with dm the selected op's mask gradient and nothing for the last chunk.
TEST(NatslOps, RouterGradientReachesLogits) {
  const int64_t B = 1, T = 100, Ha = 2, Hr = 1, C = 32, NC = 4;
  Tensor logits = leaf(randn({B, NC, Hr, 2}, 11));
  Tensor q = randn({B, T, Ha, 3}, 12), k = randn({B, T, Ha, 3}, 13), v = randn({B, T, Ha, 2}, 14);
  Tensor R = randn({B, T, Ha, 2}, 15), Rg = randn({B, NC, Hr}, 16);
  RouterChoice rc = router_choice(logits, {});
  Tensor loss = add(sum(mul(sparse_attention(q, k, v, rc.mask_softmax, 0.5, C), R)), sum(mul(rc.mask_gdn, Rg)));
  loss.backward();
  ASSERT_TRUE(logits.grad().defined());

  // dm_softmax from the kernel directly.
  kernels::SparseAttentionIndex index = kernels::sparse_attention_index(rc.mask_softmax.detach(), C);
  kernels::SparseAttentionArgs args{0.5, false, {}};
  Tensor o = Tensor::empty(v.shape(), DType::f64), lse = Tensor::empty({B, T, Ha}, DType::f64);
  kernels::sparse_attention_fwd(args, index, q, k, v, o, lse);
  Tensor dq = Tensor::empty(q.shape(), DType::f64), dk = dq.clone(), dv = Tensor::empty(v.shape(), DType::f64);
  Tensor dm = Tensor::empty({B, NC, Hr}, DType::f64);
  kernels::sparse_attention_bwd(args, index, q, k, v, o, lse, R, dq, dk, dv, dm);

  const std::vector<double> g = logits.grad().to_vector<double>(), p = rc.probs.to_vector<double>();
  const std::vector<double> ms = rc.mask_softmax.to_vector<double>(), mg = rc.mask_gdn.to_vector<double>();
  for (int64_t c = 0; c < NC; ++c) {
    const bool last = c == NC - 1;
    const double d0 = last ? 0 : ms[c] * oracle::cptr(dm)[c], d1 = last ? 0 : mg[c] * oracle::cptr(Rg)[c];
    const double mean = p[2 * c] * d0 + p[2 * c + 1] * d1;
    EXPECT_NEAR(g[2 * c], p[2 * c] * (d0 - mean), 1e-12) << "chunk " << c;
    EXPECT_NEAR(g[2 * c + 1], p[2 * c + 1] * (d1 - mean), 1e-12) << "chunk " << c;
  }
  EXPECT_GT(std::abs(g[0]) + std::abs(g[2]) + std::abs(g[4]), 1e-6);
}

// The whole NAtS-L mixed operator from the CPU kernels (router choice -> sparse attention + masked chunked
// GDN -> mix/norm/gate) against the f64 oracle of tests/kernels/oracle.h: forward, every input gradient
// (finite differences of the oracle), and both router gradients (finite differences of the loss with respect
// to a continuous multiplier on each chunk's contribution), for several selections and T not a multiple of 64.
using namespace natsl;
using namespace natsl::kernels;
using natsl::testing::poison;
using natsl::testing::randn;

namespace {

constexpr int64_t kC = 64;
constexpr double kEps = 1e-6;

enum class Selection { AllSoftmax, AllGdn, Random, PerHeadRandom };

struct Case {
  int64_t B = 2, T = 130, H = 2, G = 2, K = 4, V = 4;
  Selection sel = Selection::Random;
  uint64_t seed = 1;
  int64_t Ha() const { return H * G; }
  int64_t NC() const { return (T + kC - 1) / kC; }
};

Tensor l2_rows(const Tensor& x) {
  Tensor y = x.clone();
  const int64_t d = x.size(-1);
  for (int64_t r = 0; r < x.numel() / d; ++r) {
    double ss = 0;
    for (int64_t e = 0; e < d; ++e) ss += oracle::cptr(x)[r * d + e] * oracle::cptr(x)[r * d + e];
    for (int64_t e = 0; e < d; ++e) oracle::ptr(y)[r * d + e] /= std::sqrt(ss);
  }
  return y;
}

// Everything the operator reads. v is shared: the softmax heads see it viewed [B, T, Ha, V / G].
struct Inputs {
  Tensor qa, ka, v, qg, kg, g, beta, wlogits, z, gamma_g, gamma_a;
  Tensor router_logits;  // [B, NC, H, 2]
  Tensor dy;             // cotangent of the mixed output y [B, T, Ha, V / G]
};

Inputs make_inputs(const Case& c) {
  const uint64_t s = c.seed * 100;
  const int64_t B = c.B, T = c.T, H = c.H, Ha = c.Ha(), Dv = c.V / c.G, NC = c.NC();
  Inputs in;
  in.qa = randn({B, T, Ha, c.K / c.G}, s + 1);
  in.ka = randn({B, T, Ha, c.K / c.G}, s + 2);
  in.v = randn({B, T, H, c.V}, s + 3);
  in.qg = l2_rows(randn({B, T, H, c.K}, s + 4));
  in.kg = l2_rows(randn({B, T, H, c.K}, s + 5));
  in.g = natsl::testing::rand_uniform({B, T, H}, s + 6, -0.3, -0.01);
  in.beta = natsl::testing::rand_uniform({B, T, H}, s + 7, 0.05, 0.95);
  in.wlogits = randn({B, T, Ha, 2}, s + 8);
  in.z = randn({B, T, Ha, Dv}, s + 9);
  in.gamma_g = natsl::testing::rand_uniform({Dv}, s + 10, 0.5, 1.5);
  in.gamma_a = natsl::testing::rand_uniform({Dv}, s + 11, 0.5, 1.5);
  in.router_logits = randn({B, NC, H, 2}, s + 12);
  auto set = [&](int64_t b, int64_t n, int64_t h, double l0, double l1) {
    oracle::ptr(in.router_logits)[((b * NC + n) * H + h) * 2] = l0;
    oracle::ptr(in.router_logits)[((b * NC + n) * H + h) * 2 + 1] = l1;
  };
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n < NC; ++n)
      for (int64_t h = 0; h < H; ++h) switch (c.sel) {
          case Selection::AllSoftmax: set(b, n, h, 1, -1); break;
          case Selection::AllGdn: set(b, n, h, -1, 1); break;
          case Selection::Random:  // one label per (b, chunk), shared by the heads
            set(b, n, h, oracle::cptr(in.router_logits)[((b * NC + n) * H) * 2], 0);
            break;
          case Selection::PerHeadRandom: break;
        }
  in.dy = randn({B, T, Ha, Dv}, s + 13);
  return in;
}

struct Masks {
  Tensor probs, softmax, gdn;  // gdn: [B, NC, H] = the GDN kernel's [B * NC, H]
};
Masks route(const Inputs& in) {
  Masks m{Tensor::empty(in.router_logits.shape(), DType::f64), Tensor::empty({in.router_logits.size(0),
          in.router_logits.size(1), in.router_logits.size(2)}, DType::f64), Tensor()};
  m.gdn = Tensor::empty(m.softmax.shape(), DType::f64);
  router_choice_fwd({}, in.router_logits, m.probs, m.softmax, m.gdn);
  return m;
}

// ---- the operator from the kernels
struct KernelRun {
  Tensor y;
  Tensor dqa, dka, dv, dqg, dkg, dg, dbeta, dwlogits, dz, dgamma_g, dgamma_a;
  Tensor dm_softmax, dm_gdn;
};

Tensor empty_like(const Tensor& t) {
  Tensor e = Tensor::empty(t.shape(), t.dtype());
  poison(e);
  return e;
}

KernelRun run_kernels(const Case& c, const Inputs& in, const Masks& m) {
  const int64_t B = c.B, T = c.T, H = c.H, Ha = c.Ha(), Dv = c.V / c.G, NC = c.NC();
  const double scale_a = 1.0 / std::sqrt(double(c.K / c.G)), scale_g = 1.0 / std::sqrt(double(c.K));
  const Tensor va = in.v.view({B, T, Ha, Dv});
  KernelRun r;
  // softmax branch
  SparseAttentionIndex index = sparse_attention_index(m.softmax, kC);
  SparseAttentionArgs aargs{scale_a, false, {}};
  Tensor oa = empty_like(va), lse = Tensor::empty({B, T, Ha}, DType::f64);
  sparse_attention_fwd(aargs, index, in.qa, in.ka, va, oa, lse);
  // GDN branch
  GdnArgs gargs;
  gargs.scale = scale_g;
  GdnInputs gin{in.qg, in.kg, in.v, in.g, in.beta, Tensor(), m.gdn.view({B * NC, H})};
  GdnSaved saved{Tensor::empty({B, T, H}, DType::f64), Tensor::empty({B, T, H, kGdnChunk}, DType::f64)};
  Tensor og = empty_like(in.v);
  gdn_chunk_fwd(gargs, gin, og, Tensor(), saved);
  // mixing
  const Tensor og4 = og.view({B, T, Ha, Dv});
  Tensor rstd_g = Tensor::empty({B, T, Ha}, DType::f64), rstd_a = Tensor::empty({B, T, Ha}, DType::f64);
  r.y = empty_like(in.dy);
  mix_norm_gate_fwd(og4, oa, in.wlogits, in.z, in.gamma_g, in.gamma_a, kEps, r.y, rstd_g, rstd_a);
  // backward
  Tensor dog = empty_like(og4), doa = empty_like(oa);
  r.dwlogits = empty_like(in.wlogits);
  r.dz = empty_like(in.z);
  r.dgamma_g = empty_like(in.gamma_g);
  r.dgamma_a = empty_like(in.gamma_a);
  mix_norm_gate_bwd(og4, oa, in.wlogits, in.z, in.gamma_g, in.gamma_a, rstd_g, rstd_a, in.dy, dog, doa, r.dwlogits,
                    r.dz, r.dgamma_g, r.dgamma_a);
  r.dqa = empty_like(in.qa);
  r.dka = empty_like(in.ka);
  Tensor dva = empty_like(va);
  r.dm_softmax = empty_like(m.softmax);
  sparse_attention_bwd(aargs, index, in.qa, in.ka, va, oa, lse, doa, r.dqa, r.dka, dva, r.dm_softmax);
  GdnGrads gg{empty_like(in.qg), empty_like(in.kg), empty_like(in.v), empty_like(in.g), empty_like(in.beta),
              Tensor(), Tensor::empty({B * NC, H}, DType::f64)};
  gdn_chunk_bwd(gargs, gin, saved, dog.view(og.shape()), Tensor(), gg);
  r.dqg = gg.dq;
  r.dkg = gg.dk;
  r.dg = gg.dg;
  r.dbeta = gg.dbeta;
  r.dm_gdn = gg.dmask.view({B, NC, H});
  r.dv = Tensor::empty(in.v.shape(), DType::f64);
  for (int64_t n = 0; n < in.v.numel(); ++n)  // both branches read v
    oracle::ptr(r.dv)[n] = oracle::cptr(gg.dv)[n] + oracle::cptr(dva)[n];
  return r;
}

// ---- the oracle: y, and the loss <y, dy> with optional continuous chunk multipliers
Tensor oracle_y(const Case& c, const Inputs& in, const Masks& m, const Tensor& attn_mult = Tensor(),
                const Tensor& gdn_mask = Tensor()) {
  const int64_t B = c.B, T = c.T, Ha = c.Ha(), Dv = c.V / c.G;
  const Tensor va = in.v.view({B, T, Ha, Dv});
  const Tensor oa = oracle::attention_fwd(in.qa, in.ka, va, m.softmax, kC, 1.0 / std::sqrt(double(c.K / c.G)),
                                          attn_mult).o;
  const Tensor og = oracle::gdn_fwd(in.qg, in.kg, in.v, in.g, in.beta, gdn_mask.defined() ? gdn_mask : m.gdn, kC,
                                    1.0 / std::sqrt(double(c.K))).o;
  return oracle::mix_fwd(og.view({B, T, Ha, Dv}), oa, in.wlogits, in.z, in.gamma_g, in.gamma_a, kEps);
}

// Gradient check of one input: the full finite-difference vector for small tensors, else three random
// directions <grad, u> against the directional difference.
void check_gradient(const char* name, const Tensor& grad, const Tensor& x, const std::function<double()>& loss,
                    uint64_t seed) {
  SCOPED_TRACE(name);
  if (x.numel() <= 64) {
    EXPECT_CLOSE(grad, oracle::finite_difference(loss, x), 1e-7, 2e-7);
    return;
  }
  for (uint64_t d = 0; d < 3; ++d) {
    const Tensor u = randn(x.shape(), seed + d);
    const double expect = oracle::directional_difference(loss, x, u);
    EXPECT_NEAR(oracle::inner(grad, u), expect, 1e-6 * (1 + std::abs(expect)));
  }
}

void expect_operator_matches_oracle(const Case& c) {
  Inputs in = make_inputs(c);
  const Masks m = route(in);
  const KernelRun r = run_kernels(c, in, m);
  EXPECT_CLOSE(r.y, oracle_y(c, in, m), 1e-12, 1e-12);

  auto loss = [&] { return oracle::inner(oracle_y(c, in, m), in.dy); };
  uint64_t seed = 500;
  check_gradient("dqa", r.dqa, in.qa, loss, seed += 10);
  check_gradient("dka", r.dka, in.ka, loss, seed += 10);
  check_gradient("dv", r.dv, in.v, loss, seed += 10);
  check_gradient("dqg", r.dqg, in.qg, loss, seed += 10);
  check_gradient("dkg", r.dkg, in.kg, loss, seed += 10);
  check_gradient("dg", r.dg, in.g, loss, seed += 10);
  check_gradient("dbeta", r.dbeta, in.beta, loss, seed += 10);
  check_gradient("dwlogits", r.dwlogits, in.wlogits, loss, seed += 10);
  check_gradient("dz", r.dz, in.z, loss, seed += 10);
  check_gradient("dgamma_g", r.dgamma_g, in.gamma_g, loss, seed += 10);
  check_gradient("dgamma_a", r.dgamma_a, in.gamma_a, loss, seed += 10);

  // Router gradients: derivative of the loss with respect to a multiplier on each chunk's contribution
  // (attention: its softmax weights for later queries; GDN: its state write), kept only for the selected op.
  Tensor mult = Tensor::full(m.softmax.shape(), 1.0, DType::f64);
  Tensor num_a = oracle::finite_difference([&] { return oracle::inner(oracle_y(c, in, m, mult), in.dy); }, mult);
  // The softmax side is 0 for unselected chunks by construction (the multiplier has nothing to scale). The
  // GDN kernel returns the derivative for every chunk (also where the write mask is 0); the router ignores
  // the unselected op's entries.
  for (int64_t n = 0; n < num_a.numel(); ++n) oracle::ptr(num_a)[n] *= oracle::cptr(m.softmax)[n];
  Tensor gmask = m.gdn.clone();
  Tensor num_g =
      oracle::finite_difference([&] { return oracle::inner(oracle_y(c, in, m, Tensor(), gmask), in.dy); }, gmask);
  EXPECT_CLOSE(r.dm_softmax, num_a, 1e-7, 1e-5);
  EXPECT_CLOSE(r.dm_gdn, num_g, 1e-7, 1e-5);

  // Straight-through chain: only the selected op's mask gradient counts, and the last chunk's logits get
  // none (natsl-layer.md §4.2): dlogits = p (dm_sel - <dm_sel, p>).
  Tensor dlogits = Tensor::empty(m.probs.shape(), DType::f64);
  router_choice_bwd({}, m.probs, m.softmax, m.gdn, r.dm_softmax, r.dm_gdn, dlogits);
  for (int64_t row = 0; row < m.softmax.numel(); ++row) {
    const bool last = (row / c.H) % c.NC() == c.NC() - 1;
    const double p0 = oracle::cptr(m.probs)[2 * row], p1 = oracle::cptr(m.probs)[2 * row + 1];
    const double d0 = last ? 0 : oracle::cptr(num_a)[row] * oracle::cptr(m.softmax)[row];
    const double d1 = last ? 0 : oracle::cptr(num_g)[row] * oracle::cptr(m.gdn)[row];
    EXPECT_NEAR(oracle::cptr(dlogits)[2 * row], p0 * (d0 - (p0 * d0 + p1 * d1)), 1e-6);
    EXPECT_NEAR(oracle::cptr(dlogits)[2 * row + 1], p1 * (d1 - (p0 * d0 + p1 * d1)), 1e-6);
    if (last) {
      EXPECT_EQ(oracle::cptr(dlogits)[2 * row], 0.0);
    }
  }
}

}  // namespace

TEST(NatslMixed, AllSoftmaxMatchesOracle) { expect_operator_matches_oracle({.sel = Selection::AllSoftmax, .seed = 1}); }
TEST(NatslMixed, AllGdnMatchesOracle) { expect_operator_matches_oracle({.sel = Selection::AllGdn, .seed = 2}); }
TEST(NatslMixed, RandomSelectionMatchesOracle) { expect_operator_matches_oracle({.sel = Selection::Random, .seed = 3}); }
TEST(NatslMixed, PerHeadSelectionMatchesOracle) {
  expect_operator_matches_oracle({.T = 180, .sel = Selection::PerHeadRandom, .seed = 4});
}
// G = 1 (one softmax head per router head, as a single-head model) and a three-way split (760M-style G = 3).
TEST(NatslMixed, OtherHeadGroupings) {
  expect_operator_matches_oracle({.B = 1, .T = 100, .H = 1, .G = 1, .K = 3, .V = 2, .seed = 5});
  expect_operator_matches_oracle({.B = 1, .T = 150, .H = 1, .G = 3, .K = 6, .V = 6, .sel = Selection::PerHeadRandom,
                                  .seed = 6});
}
