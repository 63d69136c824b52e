#include "layers/model/model_size.h"

#include "layers/mixer.h"

namespace natsl {

int64_t count_parameters(const ModelConfig& c) {
  const int64_t d = c.hidden_size, V = c.vocab_size;
  int64_t n = V * d + d;                 // embeddings, final norm
  if (!c.tie_word_embeddings) n += V * d;  // lm_head
  for (const std::string& kind : c.mixer_kinds())
    n += 2 * d                          // attn_norm, mlp_norm
         + 3 * d * c.mlp_intermediate()  // gate, up, down
         + mixer_spec(kind).num_params(c);
  return n;
}

int64_t count_matmul_parameters(const ModelConfig& c) {
  const int64_t embed = c.vocab_size * c.hidden_size;
  // Untied: drop the embedding (the head is counted). Tied: the one matrix is the head.
  return c.tie_word_embeddings ? count_parameters(c) : count_parameters(c) - embed;
}

double model_flops_per_token(const ModelConfig& c, int64_t seq_len) {
  double f = 6.0 * double(count_matmul_parameters(c));
  for (const std::string& kind : c.mixer_kinds()) f += mixer_spec(kind).extra_flops_per_token(c, seq_len);
  return f;
}

}  // namespace natsl
