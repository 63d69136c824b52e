#pragma once
// Small ModelConfigs for the layer and model tests, one line a part: a test names its sizes and heads and then
// sets only the keys it is about; every key it does not name keeps ModelConfig's default. The parts are
// aggregates meant for designated initializers ({.vocab = 13, .hidden = 6, ...}), so each value says which key
// it is, and leaving one out is a -Wmissing-field-initializers warning rather than a silent default.
#include <cstdint>
#include <string>
#include <vector>

#include "layers/model/model_config.h"

namespace natsl::testing {

// vocab_size, hidden_size and intermediate_size (0: the hidden_ratio rule of ModelConfig::mlp_intermediate).
struct ModelSizes {
  int64_t vocab, hidden, intermediate;
};

// The attention mixer's heads: num_attn_heads, attn_head_dim (0: hidden / heads), attn_value_dim (0: the
// head dim), attn_qk_norm, attn_rope.
struct AttnHeads {
  int64_t heads, head_dim, value_dim;
  bool qk_norm, rope;
};

// The Gated DeltaNet mixer's heads: num_heads, head_dim (K), expand_v (V = expand_v K).
struct GdnHeads {
  int64_t heads, head_dim;
  double expand_v;
};

// `num_layers` layers of the default mixer.
inline ModelConfig sized_model(const ModelSizes& s, int64_t num_layers) {
  ModelConfig c;
  c.vocab_size = s.vocab;
  c.hidden_size = s.hidden;
  c.intermediate_size = s.intermediate;
  c.num_layers = num_layers;
  return c;
}

// One layer a mixer name of `layers` ("attn", "gdn", "natsl").
inline ModelConfig sized_model(const ModelSizes& s, const std::vector<std::string>& layers) {
  ModelConfig c = sized_model(s, int64_t(layers.size()));
  c.layers = layers;
  return c;
}

inline void set_attn_heads(ModelConfig& c, const AttnHeads& a) {
  c.num_attn_heads = a.heads;
  c.attn_head_dim = a.head_dim;
  c.attn_value_dim = a.value_dim;
  c.attn_qk_norm = a.qk_norm;
  c.attn_rope = a.rope;
}

inline void set_gdn_heads(ModelConfig& c, const GdnHeads& g) {
  c.num_heads = g.heads;
  c.head_dim = g.head_dim;
  c.expand_v = g.expand_v;
}

}  // namespace natsl::testing
