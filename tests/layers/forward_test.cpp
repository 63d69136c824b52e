// Each layer's forward against the plain-loop f64 references of reference_model.h.
#include <gtest/gtest.h>

#include "autograd/ops.h"
#include "layers/attention_core.h"
#include "layers/block.h"
#include "layers/model/causal_lm.h"
#include "layers/embedding.h"
#include "layers/gated_mlp.h"
#include "layers/rope.h"
#include "layers/short_conv.h"
#include "layers/softmax_attention.h"
#include "tests/layers/reference_model.h"

using namespace natsl;
using namespace natsl::testing;

namespace {

constexpr double kTol = 1e-12;

ModelConfig attn_config(bool rope, bool qk_norm, int64_t value_dim) {
  ModelConfig c = sized_model({.vocab = 13, .hidden = 6, .intermediate = 10}, 2);
  set_attn_heads(c, {.heads = 2, .head_dim = 4, .value_dim = value_dim, .qk_norm = qk_norm, .rope = rope});
  c.rope_theta = 100.0;  // short sequences still turn through several angles
  c.norm_eps = 1e-5;
  return c;
}

RefAttentionConfig ref_config(const ModelConfig& c) {
  int64_t dv = c.attn_value_dim ? c.attn_value_dim : c.attn_head_dim;
  return {c.hidden_size, c.num_attn_heads, c.attn_head_dim, dv, c.attn_qk_norm, c.attn_rope, c.rope_theta, c.norm_eps};
}

}  // namespace

TEST(LayerForward, Linear) {
  for (bool bias : {false, true}) {
    Linear lin(5, 3, bias);
    randomize(lin, 10);
    Tensor x = randn({2, 3, 5}, 11);
    Tensor y = lin.forward(x);
    Vec want = ref_linear(x.to_vector<double>(), param(lin, "weight"), 6, 5, 3);
    if (bias)
      for (size_t i = 0; i < want.size(); ++i) want[i] += param(lin, "bias")[i % 3];
    EXPECT_CLOSE(y, tensor(want, {2, 3, 3}), kTol, kTol);
  }
}

TEST(LayerForward, Embedding) {
  Embedding emb(7, 3);
  randomize(emb, 20);
  Tensor ids = Tensor::from_vector(std::vector<int32_t>{6, 0, 3, 3, 1}, {5});
  Vec w = param(emb, "weight"), want;
  for (int id : {6, 0, 3, 3, 1})
    for (int j = 0; j < 3; ++j) want.push_back(w[size_t(id * 3 + j)]);
  EXPECT_CLOSE(emb.forward(ids), tensor(want, {5, 3}), 0, 0);
}

TEST(LayerForward, RMSNorm) {
  RMSNorm norm(7, 1e-5);
  randomize(norm, 30);
  Tensor x = randn({3, 7}, 31);
  EXPECT_CLOSE(norm.forward(x), tensor(ref_rmsnorm(x.to_vector<double>(), param(norm, "weight"), 7, 1e-5), {3, 7}), kTol,
               kTol);
}

TEST(LayerForward, GatedMLP) {
  GatedMLP mlp(6, 9);
  randomize(mlp, 40);
  Tensor x = randn({2, 5, 6}, 41);
  Vec want = ref_mlp(x.to_vector<double>(), param(mlp, "gate_proj.weight"), param(mlp, "up_proj.weight"),
                     param(mlp, "down_proj.weight"), 10, 6, 9);
  EXPECT_CLOSE(mlp.forward(x), tensor(want, {2, 5, 6}), kTol, kTol);
}

TEST(LayerForward, ShortConv) {
  for (bool act : {false, true}) {
    const int64_t B = 2, T = 6, C = 3, W = 4;
    ShortConv conv(C, W, act);
    randomize(conv, 50);
    Tensor x = randn({B, T, C}, 51);
    Vec xv = x.to_vector<double>(), w = param(conv, "weight"), want(size_t(B * T * C));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t c = 0; c < C; ++c) {
          double s = 0;
          for (int64_t j = 0; j < W; ++j) {
            int64_t src = t - (W - 1) + j;
            if (src >= 0) s += w[size_t(c * W + j)] * xv[size_t((b * T + src) * C + c)];
          }
          want[size_t((b * T + t) * C + c)] = act ? ref_silu(s) : s;
        }
    EXPECT_CLOSE(conv.forward(x), tensor(want, {B, T, C}), kTol, kTol);
  }
}

TEST(LayerForward, RopeRotatesPairsHalfADimApart) {
  const int64_t B = 1, T = 5, H = 2, D = 6;
  Tensor x = randn({B, T, H, D}, 60);
  Vec want = x.to_vector<double>();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) ref_rope_inplace(&want[size_t((t * H + h) * D)], D, t, 50.0);
  EXPECT_CLOSE(apply_rope(x, 50.0), tensor(want, {B, T, H, D}), kTol, kTol);
  // Position 0 is the identity, and rotations keep each pair's norm.
  Tensor y = apply_rope(x, 50.0);
  EXPECT_CLOSE(y.slice(1, 0, 1).contiguous(), x.slice(1, 0, 1).contiguous(), 0, 1e-15);
}

TEST(LayerForward, AttentionCoreCausalAndFull) {
  const int64_t B = 2, T = 7, H = 3, Dk = 4, Dv = 5;
  Tensor q = randn({B, T, H, Dk}, 70), k = randn({B, T, H, Dk}, 71), v = randn({B, T, H, Dv}, 72);
  for (bool causal : {true, false}) {
    Vec want = ref_attention_core(q.to_vector<double>(), k.to_vector<double>(), v.to_vector<double>(), B, T, H, Dk,
                                  Dv, causal);
    EXPECT_CLOSE(attention_core(q, k, v, causal), tensor(want, {B, T, H, Dv}), kTol, kTol);
  }
}

TEST(LayerForward, SoftmaxAttentionVariants) {
  for (bool rope : {false, true})
    for (bool qk_norm : {false, true})
      for (int64_t dv : {0, 3}) {
        SCOPED_TRACE("rope " + std::to_string(rope) + " qk_norm " + std::to_string(qk_norm) + " dv " + std::to_string(dv));
        ModelConfig c = attn_config(rope, qk_norm, dv);
        SoftmaxAttention attn(c, 0);
        randomize(attn, 80);
        Tensor x = randn({2, 5, 6}, 81);
        Vec want = ref_attention(attn, x.to_vector<double>(), 2, 5, ref_config(c));
        EXPECT_CLOSE(attn.forward(x), tensor(want, {2, 5, 6}), kTol, kTol);
        // A different length afterwards (the RoPE tables are rebuilt, not reused).
        Tensor x3 = randn({1, 3, 6}, 82);
        Vec want3 = ref_attention(attn, x3.to_vector<double>(), 1, 3, ref_config(c));
        EXPECT_CLOSE(attn.forward(x3), tensor(want3, {1, 3, 6}), kTol, kTol);
      }
}

TEST(LayerForward, CausalLMMatchesTheComposedReference) {
  for (bool tied : {false, true}) {
    ModelConfig c = attn_config(true, true, 3);
    c.tie_word_embeddings = tied;
    CausalLM lm(c);
    randomize(lm, 90);
    const int64_t B = 2, T = 5, d = c.hidden_size, V = c.vocab_size, n = B * T;
    std::vector<int32_t> ids_v = {1, 12, 0, 5, 5, 7, 3, 9, 11, 2};
    Tensor ids = Tensor::from_vector(ids_v, {B, T});

    Vec emb = param(lm, "model.embeddings.weight"), h;
    for (int32_t id : ids_v)
      for (int64_t j = 0; j < d; ++j) h.push_back(emb[size_t(id * d + j)]);
    for (int l = 0; l < c.num_layers; ++l) {
      std::string p = "model.layers." + std::to_string(l) + ".";
      Vec a = ref_attention(lm.backbone().layer(size_t(l)).mixer(),
                            ref_rmsnorm(h, param(lm, p + "attn_norm.weight"), d, c.norm_eps), B, T, ref_config(c));
      for (size_t i = 0; i < h.size(); ++i) h[i] += a[i];
      Vec m = ref_mlp(ref_rmsnorm(h, param(lm, p + "mlp_norm.weight"), d, c.norm_eps), param(lm, p + "mlp.gate_proj.weight"),
                      param(lm, p + "mlp.up_proj.weight"), param(lm, p + "mlp.down_proj.weight"), n, d,
                      c.intermediate_size);
      for (size_t i = 0; i < h.size(); ++i) h[i] += m[i];
    }
    h = ref_rmsnorm(h, param(lm, "model.norm.weight"), d, c.norm_eps);
    Vec logits = ref_linear(h, tied ? emb : param(lm, "lm_head.weight"), n, d, V);
    EXPECT_CLOSE(lm.forward(ids), tensor(logits, {B, T, V}), 1e-11, 1e-11);

    // loss: mean over non-ignored targets of logsumexp - logit[target].
    std::vector<int32_t> tg = {3, -100, 0, 12, 4, -100, -100, 8, 1, 6};
    double total = 0;
    int count = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (tg[size_t(i)] == -100) continue;
      double mx = -1e300, z = 0;
      for (int64_t v = 0; v < V; ++v) mx = std::max(mx, logits[size_t(i * V + v)]);
      for (int64_t v = 0; v < V; ++v) z += std::exp(logits[size_t(i * V + v)] - mx);
      total += mx + std::log(z) - logits[size_t(i * V + tg[size_t(i)])];
      ++count;
    }
    Batch batch{ids, Tensor::from_vector(tg, {B, T})};
    EXPECT_NEAR(lm.loss(batch).item(), total / count, 1e-11);
  }
}
