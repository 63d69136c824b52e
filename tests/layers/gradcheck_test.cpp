// Backward of the layers by f64 finite differences (all parameters and the input), and attention causality.
#include <gtest/gtest.h>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "layers/model/causal_lm.h"
#include "layers/gated_mlp.h"
#include "layers/softmax_attention.h"
#include "tests/layers/reference_model.h"

using namespace natsl;
using namespace natsl::testing;

namespace {

// Gradchecks `forward` with respect to the input x (if it requires grad) and every parameter of m.
void expect_layer_gradcheck(const Module& m, const Tensor& x, const std::function<Tensor(const Tensor&)>& forward) {
  std::vector<Tensor> inputs = {x};
  for (const ParameterRef& p : m.named_parameters()) inputs.push_back(*p.tensor);
  GradcheckResult r = gradcheck([&](const std::vector<Tensor>& in) { return forward(in[0]); }, inputs);
  EXPECT_TRUE(r.ok) << r.message;
}

ModelConfig attn_config(bool rope, bool qk_norm, int64_t value_dim) {
  ModelConfig c = sized_model({.vocab = 7, .hidden = 4, .intermediate = 3}, 1);
  set_attn_heads(c, {.heads = 2, .head_dim = 2, .value_dim = value_dim, .qk_norm = qk_norm, .rope = rope});
  c.rope_theta = 10.0;
  return c;
}

}  // namespace

TEST(LayerGradcheck, Linear) {
  for (bool bias : {false, true}) {
    Linear lin(3, 2, bias);
    randomize(lin, 1);
    Tensor x = randn({2, 3, 3}, 2).set_requires_grad(true);
    expect_layer_gradcheck(lin, x, [&](const Tensor& in) { return lin.forward(in); });
  }
}

TEST(LayerGradcheck, GatedMLP) {
  GatedMLP mlp(3, 5);
  randomize(mlp, 3);
  Tensor x = randn({2, 3, 3}, 4).set_requires_grad(true);
  expect_layer_gradcheck(mlp, x, [&](const Tensor& in) { return mlp.forward(in); });
}

TEST(LayerGradcheck, SoftmaxAttentionVariants) {
  for (bool rope : {false, true})
    for (bool qk_norm : {false, true})
      for (int64_t dv : {0, 3}) {
        SCOPED_TRACE("rope " + std::to_string(rope) + " qk_norm " + std::to_string(qk_norm) + " dv " + std::to_string(dv));
        SoftmaxAttention attn(attn_config(rope, qk_norm, dv), 0);
        randomize(attn, 5);
        Tensor x = randn({2, 3, 4}, 6).set_requires_grad(true);
        expect_layer_gradcheck(attn, x, [&](const Tensor& in) { return attn.forward(in); });
      }
}

TEST(LayerGradcheck, CausalLMLoss) {
  for (bool tied : {false, true}) {
    ModelConfig c = attn_config(true, true, 3);
    c.tie_word_embeddings = tied;
    CausalLM lm(c);
    randomize(lm, 7);
    Batch batch{Tensor::from_vector(std::vector<int32_t>{1, 6, 0, 2, 2, 5}, {2, 3}),
                Tensor::from_vector(std::vector<int32_t>{6, 0, -100, 2, 5, 1}, {2, 3})};
    expect_layer_gradcheck(lm, Tensor(), [&](const Tensor&) { return lm.loss(batch); });
  }
}

TEST(Attention, FutureTokensDoNotChangeEarlierOutputs) {
  ModelConfig c = attn_config(true, true, 3);
  c.hidden_size = 6;
  c.num_attn_heads = 3;
  SoftmaxAttention attn(c, 0);
  randomize(attn, 8);
  const int64_t T = 6, t0 = 3;
  Tensor x = randn({1, T, 6}, 9);
  Tensor y = attn.forward(x);
  Tensor x2 = x.clone();
  x2.slice(1, t0, T).copy_(randn({1, T - t0, 6}, 10));
  Tensor y2 = attn.forward(x2);
  EXPECT_CLOSE(y2.slice(1, 0, t0).contiguous(), y.slice(1, 0, t0).contiguous(), 0, 0);
  // ... while the changed positions do change (the test can fail).
  EXPECT_GT(compare(y2.slice(1, t0, T).contiguous(), y.slice(1, t0, T).contiguous()).max_abs, 1e-3);

  // The whole model: logits before t0 are unchanged by later tokens.
  CausalLM lm(c);
  randomize(lm, 11);
  Tensor ids = Tensor::from_vector(std::vector<int32_t>{1, 2, 3, 4, 5, 6}, {1, T});
  Tensor ids2 = Tensor::from_vector(std::vector<int32_t>{1, 2, 3, 0, 0, 0}, {1, T});
  Tensor l1 = lm.forward(ids), l2 = lm.forward(ids2);
  EXPECT_CLOSE(l2.slice(1, 0, t0).contiguous(), l1.slice(1, 0, t0).contiguous(), 0, 0);
  EXPECT_GT(compare(l2.slice(1, t0, T).contiguous(), l1.slice(1, t0, T).contiguous()).max_abs, 1e-3);
}
