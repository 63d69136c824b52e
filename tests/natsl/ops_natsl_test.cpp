// The NAtS-L autograd ops (autograd/ops_natsl.h): gradcheck of each node, and the router gradient flowing
// from the branches' mask gradients back to the logits.
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "autograd/ops_natsl.h"
#include "kernels/sparse_attention.h"
#include "tests/natsl/oracle.h"
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
