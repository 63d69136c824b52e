// Parameter count (closed form vs the built model, and vs the formula written out here) and FLOPs per token.
#include <gtest/gtest.h>

#include "layers/model/causal_lm.h"
#include "layers/model/model_size.h"
#include "tests/layers/model/model_test_util.h"

using namespace natsl;
using namespace natsl::testing;

namespace {
ModelConfig config(bool tied, bool qk_norm, int64_t dk, int64_t dv) {
  ModelConfig c = sized_model({.vocab = 37, .hidden = 12, .intermediate = 0}, 3);
  set_attn_heads(c, {.heads = 3, .head_dim = dk, .value_dim = dv, .qk_norm = qk_norm, .rope = true});
  c.tie_word_embeddings = tied;
  return c;
}
}  // namespace

TEST(ModelSize, ParameterCountMatchesTheModelAndTheClosedForm) {
  for (bool tied : {false, true})
    for (bool qk_norm : {false, true})
      for (auto [dk, dv] : {std::pair<int64_t, int64_t>{0, 0}, {6, 10}}) {
        ModelConfig c = config(tied, qk_norm, dk, dv);
        const int64_t d = 12, V = 37, L = 3, H = 3, K = dk ? dk : 4, Dv = dv ? dv : K;
        const int64_t I = 256;  // 256 * ceil(int(12 * 8 / 3) / 256)
        ASSERT_EQ(c.mlp_intermediate(), I);
        int64_t per_layer = 2 * d + 3 * d * I + 2 * d * H * K + 2 * d * H * Dv + (qk_norm ? 2 * K : 0);
        int64_t want = V * d * (tied ? 1 : 2) + d + L * per_layer;
        EXPECT_EQ(count_parameters(c), want);
        EXPECT_EQ(CausalLM(c).num_parameters(), want);
      }
}

TEST(ModelSize, IntermediateSizeFollowsFLA) {
  ModelConfig c;
  c.hidden_size = 1024;
  EXPECT_EQ(c.mlp_intermediate(), 2816);
  c.hidden_size = 1536;
  EXPECT_EQ(c.mlp_intermediate(), 4096);
}

TEST(ModelSize, FlopsPerTokenIsSixNPlusCausalAttention) {
  for (bool tied : {false, true}) {
    ModelConfig c = config(tied, true, 6, 10);
    const int64_t T = 100, V = 37, d = 12;
    // Matmul weights: everything but the input embedding lookup; the head counts even when tied.
    int64_t n_matmul = count_parameters(c) - V * d + (tied ? V * d : 0);
    EXPECT_EQ(count_matmul_parameters(c), n_matmul);
    // Per layer: QK^T and PV over (T+1)/2 keys on average, 2 FLOPs per multiply-add, x3 for fwd+bwd.
    double attn = 3 * (2.0 * 3 * (6 + 10) * (T + 1) / 2.0);
    EXPECT_DOUBLE_EQ(model_flops_per_token(c, T), 6.0 * double(n_matmul) + 3 * attn);
  }
}
