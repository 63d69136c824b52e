// The checkpoint primitive (autograd/checkpoint.h) on small f64 functions: the same gradients, bit for bit,
// as the function recorded normally, for its inputs and its parameters; each parameter's accumulator runs
// once per backward (GradReadyHook); a parameter not declared is refused; state (a noise generator) is
// replayed in the recomputation and left as the forward left it; retain_graph; grad mode off.
#include <gtest/gtest.h>

#include <map>

#include "autograd/checkpoint.h"
#include "autograd/ops.h"
#include "core/philox.h"
#include "tests/test_util.h"

using namespace natsl;
using namespace natsl::testing;

namespace {

std::vector<double> host(const Tensor& t) { return t.to_vector<double>(); }

struct Params {
  Tensor w1 = randn({6, 4}, 11, DType::f64, 0.5).set_requires_grad(true);
  Tensor w2 = randn({4, 6}, 12, DType::f64, 0.5).set_requires_grad(true);
  Tensor x0 = randn({3, 5, 4}, 13).set_requires_grad(true);
  void zero() {
    for (Tensor* t : {&w1, &w2, &x0}) t->set_grad(Tensor());
  }
  // The gradients of w1, w2 and x0 on the host, to compare bit for bit.
  std::vector<std::vector<double>> grads() const { return {host(w1.grad()), host(w2.grad()), host(x0.grad())}; }
};

// A residual MLP; `noise` (when given) multiplies the hidden units by fresh uniform noise from `gen`.
Tensor mlp(const Params& p, const Tensor& x, Generator* gen) {
  Tensor h = silu(linear(x, p.w1));
  if (gen) {
    Tensor n = Tensor::empty(h.shape(), DType::f64);
    uniform_(n, *gen, 0.5, 1.5);
    h = mul(h, n);
  }
  return add(x, linear(h, p.w2));
}

// loss = sum(y^2) + sum(x0), y = mlp(2 x0): x0 also takes a gradient outside the checkpointed part. (Two
// contributions to one gradient add the same either way round; with three or more, checkpointing may regroup
// the sum, so the bits could differ where an input of the checkpointed part is used elsewhere too.)
Tensor loss_of(const Params& p, bool use_checkpoint, Generator* gen) {
  Tensor x = mul_scalar(p.x0, 2.0);
  StateCapture state;
  if (gen) state = [gen] { return std::function<void()>([gen, saved = *gen] { *gen = saved; }); };
  Tensor y = use_checkpoint ? checkpoint([&p, gen](const Tensor& in) { return mlp(p, in, gen); }, x, {p.w1, p.w2}, state)
                            : mlp(p, x, gen);
  return add(sum(square(y)), sum(p.x0));
}

}  // namespace

TEST(RecomputeCheckpoint, SameGradientsBitForBit) {
  Params p;
  Tensor plain = loss_of(p, false, nullptr);
  plain.backward();
  const auto plain_grads = p.grads();
  p.zero();
  Tensor ck = loss_of(p, true, nullptr);
  EXPECT_EQ(ck.item(), plain.item());
  ck.backward();
  EXPECT_EQ(p.grads(), plain_grads);
}

TEST(RecomputeCheckpoint, EachParameterIsReadyOnceWithItsFinalGradient) {
  Params p;
  Tensor ck = loss_of(p, true, nullptr);
  std::map<TensorImpl*, int> calls;
  std::map<TensorImpl*, std::vector<double>> at_hook;
  {
    GradReadyHookGuard hook([&](const Tensor& leaf) {
      ++calls[leaf.impl()];
      at_hook[leaf.impl()] = host(leaf.grad());
    });
    ck.backward();
  }
  ASSERT_EQ(calls.size(), 3u);  // w1, w2, x0
  for (const Tensor* t : {&p.w1, &p.w2, &p.x0}) {
    EXPECT_EQ(calls[t->impl()], 1);
    EXPECT_EQ(at_hook[t->impl()], host(t->grad()));
  }
}

TEST(RecomputeCheckpoint, ReplaysNoiseAndLeavesTheGeneratorWhereTheForwardLeftIt) {
  Params p;
  Generator gen(7, 100);
  Tensor plain = loss_of(p, false, &gen);
  const Generator after_plain = gen;
  plain.backward();
  const auto g1 = host(p.w1.grad()), gx = host(p.x0.grad());
  p.zero();
  Generator gen2(7, 100);
  Tensor ck = loss_of(p, true, &gen2);
  EXPECT_EQ(gen2.offset, after_plain.offset);
  EXPECT_EQ(ck.item(), plain.item());
  ck.backward();
  EXPECT_EQ(gen2.offset, after_plain.offset);  // the recomputation drew again from the saved offset, then restored
  EXPECT_EQ(host(p.w1.grad()), g1);
  EXPECT_EQ(host(p.x0.grad()), gx);
}

TEST(RecomputeCheckpoint, RefusesAParameterItWasNotGiven) {
  Params p;
  Tensor x = mul_scalar(p.x0, 2.0);
  Tensor y = checkpoint([&](const Tensor& in) { return mlp(p, in, nullptr); }, x, {p.w1});  // w2 missing
  try {
    sum(y).backward();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not among the requested inputs"), std::string::npos) << e.what();
  }
}

TEST(RecomputeCheckpoint, RetainGraphRecomputesAgain) {
  Params p;
  Tensor ck = loss_of(p, true, nullptr);
  ck.backward(Tensor(), /*retain_graph=*/true);
  const auto g1 = host(p.w1.grad());
  ck.backward();
  const auto g2 = host(p.w1.grad());
  for (size_t i = 0; i < g1.size(); ++i) EXPECT_EQ(g2[i], 2 * g1[i]);
  EXPECT_THROW(ck.backward(), Error);  // released now
}

TEST(RecomputeCheckpoint, WithoutGradModeJustRuns) {
  Params p;
  NoGradGuard no_grad;
  Tensor y = checkpoint([&](const Tensor& in) { return mlp(p, in, nullptr); }, p.x0, {p.w1, p.w2});
  EXPECT_FALSE(y.requires_grad());
  EXPECT_EQ(y.grad_fn(), nullptr);
}

TEST(RecomputeCheckpoint, UndefinedOutputsPassThroughAndUnusedOutputsNeedNoGradient) {
  Params p;
  auto outs = checkpoint(
      [&](const std::vector<Tensor>& in) {
        return std::vector<Tensor>{mlp(p, in[0], nullptr), Tensor(), sum(linear(in[0], p.w1))};
      },
      {p.x0}, {p.w1, p.w2});
  ASSERT_EQ(outs.size(), 3u);
  EXPECT_FALSE(outs[1].defined());
  sum(outs[0]).backward();  // output 2 gets no gradient
  const auto gx = host(p.x0.grad());
  p.zero();
  sum(mlp(p, p.x0, nullptr)).backward();
  EXPECT_EQ(host(p.x0.grad()), gx);
}

// CheckpointKeep::Matmuls: the recomputation takes the first run's products back (the same storage, no GEMM)
// and the gradients are the same bits as without recomputation; a recomputation that asks for other products
// than the first run kept is refused.
TEST(RecomputeCheckpoint, KeptProductsAreTakenBackNotRecomputed) {
  Params p;
  // The first product of each run of f (the first run, then the recomputation), held so that a recomputed
  // product cannot reuse the first one's buffer.
  auto first_product = std::make_shared<std::vector<Tensor>>();
  auto f = [&p, first_product](const Tensor& in) {
    Tensor a = linear(in, p.w1);
    first_product->push_back(a);
    // a matmul too (b 2-D, shared by the batch): kept like linear's product
    return add(in, matmul(silu(a), p.w2, false, true));
  };
  auto loss_with = [&](const Tensor& y) { return add(sum(square(y)), sum(p.x0)); };
  Tensor plain = loss_with(f(mul_scalar(p.x0, 2.0)));
  plain.backward();
  const auto plain_grads = p.grads();
  for (CheckpointKeep keep : {CheckpointKeep::Inputs, CheckpointKeep::Matmuls}) {
    SCOPED_TRACE(keep == CheckpointKeep::Matmuls ? "keep matmuls" : "keep inputs");
    p.zero();
    first_product->clear();
    Tensor loss = loss_with(checkpoint(f, mul_scalar(p.x0, 2.0), {p.w1, p.w2}, nullptr, keep));
    EXPECT_EQ(loss.item(), plain.item());
    loss.backward();
    ASSERT_EQ(first_product->size(), 2u);
    const void* first = (*first_product)[0].data_ptr();
    const void* again = (*first_product)[1].data_ptr();
    if (keep == CheckpointKeep::Matmuls) EXPECT_EQ(again, first);  // taken back
    else EXPECT_NE(again, first);                                  // multiplied again into a new buffer
    EXPECT_EQ(p.grads(), plain_grads);
  }
}

TEST(RecomputeCheckpoint, KeptProductsMustBeAskedForInTheSameOrderAndShapes) {
  Params p;
  Tensor w3 = randn({6, 4}, 14, DType::f64, 0.5).set_requires_grad(true);  // w1's shape
  // The recomputation runs one product fewer, one more, one of another shape, or the same-shaped products of two
  // weights in the other order than the first run.
  for (int variant = 0; variant < 4; ++variant) {
    SCOPED_TRACE(variant);
    auto runs = std::make_shared<int>(0);
    Tensor y = checkpoint(
        [&p, &w3, runs, variant](const Tensor& in) {
          const bool again = (*runs)++ > 0;
          if (variant == 3) {
            Tensor a = again ? linear(in, w3) : linear(in, p.w1);
            Tensor b = again ? linear(in, p.w1) : linear(in, w3);
            return add(a, mul(b, b));
          }
          Tensor h = linear(in, p.w1);
          if (variant == 0 && again) return h;
          Tensor out = linear(h, p.w2);
          if (variant == 1 && again) out = add(out, linear(h, p.w2));
          if (variant == 2 && again) return linear(in, p.w2.transpose(0, 1));  // [.., 4] x [6, 4]^T: other shape
          return out;
        },
        p.x0, {p.w1, p.w2, w3}, nullptr, CheckpointKeep::Matmuls);
    try {
      sum(y).backward();
      FAIL() << "expected an error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("kept"), std::string::npos) << e.what();
    }
    p.zero();
  }
}

// A checkpoint inside a keeping one (either kind) keeps into the outer tape: the same gradients as without any.
TEST(RecomputeCheckpoint, NestedCheckpointsInsideAKeepingOneGiveTheSameGradients) {
  Params p;
  auto inner_fn = [&p](const Tensor& in) { return silu(linear(in, p.w1)); };
  auto f = [&p, inner_fn](const Tensor& in, int inner) {
    Tensor h = inner == 0 ? inner_fn(in)
                          : checkpoint(inner_fn, in, {p.w1}, nullptr,
                                       inner == 1 ? CheckpointKeep::Inputs : CheckpointKeep::Matmuls);
    return add(in, linear(h, p.w2));
  };
  auto loss_with = [&](const Tensor& y) { return add(sum(square(y)), sum(p.x0)); };
  Tensor plain = loss_with(f(mul_scalar(p.x0, 2.0), 0));
  plain.backward();
  const auto plain_grads = p.grads();
  for (int inner : {1, 2}) {
    SCOPED_TRACE(inner == 1 ? "inner keeps inputs" : "inner keeps matmuls");
    p.zero();
    Tensor loss = loss_with(checkpoint([f, inner](const Tensor& in) { return f(in, inner); }, mul_scalar(p.x0, 2.0),
                                       {p.w1, p.w2}, nullptr, CheckpointKeep::Matmuls));
    EXPECT_EQ(loss.item(), plain.item());
    loss.backward();
    EXPECT_EQ(p.grads(), plain_grads);
  }
}

// NoKeepGuard: the products of its scope are multiplied again in the recomputation, the others taken back.
TEST(RecomputeCheckpoint, NoKeepGuardLeavesItsProductsToTheRecomputation) {
  Params p;
  auto products = std::make_shared<std::vector<Tensor>>();
  Tensor y = checkpoint(
      [&p, products](const Tensor& in) {
        Tensor a;
        {
          NoKeepGuard no_keep;
          a = linear(in, p.w1);
        }
        Tensor b = linear(silu(a), p.w2);
        products->push_back(a);
        products->push_back(b);
        return b;
      },
      p.x0, {p.w1, p.w2}, nullptr, CheckpointKeep::Matmuls);
  sum(y).backward();
  ASSERT_EQ(products->size(), 4u);                               // a, b of the first run, then of the recomputation
  EXPECT_NE((*products)[2].data_ptr(), (*products)[0].data_ptr());  // a: multiplied again
  EXPECT_EQ((*products)[3].data_ptr(), (*products)[1].data_ptr());  // b: taken back
}
