// The gated delta rule as an autograd op: gradients through the node equal finite differences (f64),
// including the initial state, the final-state output and the NAtS-L state-write mask.
#include <gtest/gtest.h>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "autograd/ops_gdn.h"
#include "tests/test_util.h"

using namespace natsl;
using natsl::testing::rand_uniform;

namespace {
struct GdnInputsF64 {
  Tensor q, k, v, g, beta, h0, mask;
};
GdnInputsF64 make(int64_t B, int64_t T, int64_t H, int64_t HV, int64_t K, int64_t V, uint64_t seed) {
  GdnInputsF64 in;
  // q, k normalised inside the test function (as the layer does), so raw values are fine here.
  in.q = rand_uniform({B, T, H, K}, seed + 1, -1, 1).set_requires_grad(true);
  in.k = rand_uniform({B, T, H, K}, seed + 2, -1, 1).set_requires_grad(true);
  in.v = rand_uniform({B, T, HV, V}, seed + 3, -1, 1).set_requires_grad(true);
  in.g = rand_uniform({B, T, HV}, seed + 4, -0.5, -0.01).set_requires_grad(true);
  in.beta = rand_uniform({B, T, HV}, seed + 5, 0.1, 0.9).set_requires_grad(true);
  int64_t N = B;
  in.h0 = rand_uniform({N, HV, K, V}, seed + 6, -0.3, 0.3).set_requires_grad(true);
  int64_t NC = B * ((T + 63) / 64);
  in.mask = rand_uniform({NC, HV}, seed + 7, 0.2, 0.8).set_requires_grad(true);
  return in;
}
}  // namespace

TEST(GdnOp, GradcheckThroughAutograd) {
  GdnInputsF64 in = make(1, 70, 1, 2, 4, 3, 100);
  double scale = 0.5;
  auto f = [scale](const std::vector<Tensor>& x) {
    Tensor q = l2norm(x[0]), k = l2norm(x[1]);
    GdnOpResult r = gated_delta_rule(q, k, x[2], x[3], x[4], scale, x[5], Tensor(), /*final=*/true);
    // Both outputs feed the loss so that dht flows too.
    return concat({reshape(r.o, {-1}), reshape(r.ht, {-1})}, 0);
  };
  GradcheckOptions opt;
  opt.atol = 1e-6;
  opt.rtol = 1e-5;
  GradcheckResult res = gradcheck(f, {in.q, in.k, in.v, in.g, in.beta, in.h0}, opt);
  EXPECT_TRUE(res.ok) << res.message;
}

TEST(GdnOp, MaskGradientIsTheRouterGradient) {
  GdnInputsF64 in = make(1, 140, 1, 1, 3, 2, 200);
  auto f = [](const std::vector<Tensor>& x) {
    return gated_delta_rule(x[0], x[1], x[2], x[3], x[4], 0.7, Tensor(), x[5], false).o;
  };
  Tensor q = l2norm(in.q).detach(), k = l2norm(in.k).detach();
  GradcheckOptions opt;
  opt.atol = 1e-6;
  GradcheckResult res = gradcheck(f, {q, k, in.v.detach(), in.g.detach(), in.beta.detach(), in.mask}, opt);
  EXPECT_TRUE(res.ok) << res.message;
}

TEST(GdnOp, NoGraphWithoutGrad) {
  GdnInputsF64 in = make(1, 10, 1, 1, 4, 4, 300);
  NoGradGuard ng;
  GdnOpResult r = gated_delta_rule(in.q, in.k, in.v, in.g, in.beta, 0.5);
  EXPECT_EQ(r.o.grad_fn(), nullptr);
  EXPECT_FALSE(r.ht.defined());
}
