#pragma once
// The model description, filled from the `model:` section of a config (trainers/config) and read by
// layers/ to build a CausalLM. Field names follow the reference configs (FLA / NAtS-L HF configs).
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/chunk.h"

namespace natsl {

struct ModelConfig {
  std::string name = "tiny";
  int64_t vocab_size = 258;   // byte tokenizer: 256 bytes + BOS + EOS
  int64_t hidden_size = 128;  // d
  int64_t num_layers = 2;
  // Mixer kind of every layer: "attn" (softmax attention), "gdn", "natsl". Either given explicitly
  // (size num_layers) or built from `default_mixer` plus per-kind index lists below.
  std::vector<std::string> layers;
  std::string default_mixer = "attn";
  std::vector<int64_t> attn_layers;   // indices that use "attn" (when `layers` is empty)
  std::vector<int64_t> natsl_layers;  // indices that use "natsl" (when `layers` is empty)

  // Softmax attention (mixer "attn", and the softmax branch of "natsl").
  int64_t num_attn_heads = 4;
  int64_t attn_head_dim = 0;    // q/k head dim; 0 = hidden_size / num_attn_heads
  int64_t attn_value_dim = 0;   // v head dim; 0 = attn_head_dim
  bool attn_qk_norm = false;
  bool attn_rope = true;
  double rope_theta = 10000.0;

  // Gated DeltaNet (mixer "gdn", and the GDN branch of "natsl").
  int64_t num_heads = 4;   // GDN q/k/v heads
  int64_t head_dim = 32;   // K
  double expand_v = 2.0;   // V = expand_v * K
  bool use_short_conv = true;
  int64_t conv_size = 4;
  bool use_gate = true;
  bool allow_neg_eigval = false;

  // NAtS-L.
  int64_t nats_block_size = kernels::kChunk;
  int64_t num_nats_heads = 0;      // router heads; 0 = num_heads
  std::string nats_sample = "argmax";  // argmax | gumbel
  double gumbel_tau = 1.0;
  bool reference_attn_backward = false;  // drop the own-chunk dq/dk/dv terms as the reference does
  // Routing-sparsity controls (docs/training.md, "Routing-sparsity controls"); the defaults are the
  // reference's behaviour. nats_routing: learned (the router) | topk (the router's best
  // nats_routing_fraction of the routable chunks per row and head) | all_softmax | all_gdn | every_nth
  // (chunk c is softmax iff c % nats_routing_every == 0) | random (each chunk softmax with probability
  // nats_routing_fraction).
  std::string nats_routing = "learned";
  double nats_routing_fraction = 0.25;
  int64_t nats_routing_every = 4;
  double nats_frac_penalty = 0.0;          // lambda: + lambda f, f = the routed softmax fraction of a layer
  std::vector<double> nats_frac_target;    // [] off; [t] every NAtS-L layer; [t_1, ..] one per NAtS-L layer
  double nats_frac_target_coef = 1.0;      // mu: + mu w(s) (f - t)^2
  int64_t nats_frac_warmup_steps = 0;      // w(s) = min(1, (s + 1) / warmup): the target's weight ramps up
  std::string gumbel_tau_schedule = "constant";  // constant | linear | exp, from gumbel_tau to gumbel_tau_end
  double gumbel_tau_end = 1.0;

  // MLP and norms.
  double hidden_ratio = 4.0;
  int64_t intermediate_size = 0;  // 0 = 256 * ceil(int(hidden_size * hidden_ratio * 2 / 3) / 256)
  double norm_eps = 1e-6;
  double initializer_range = 0.02;
  bool tie_word_embeddings = false;

  // Resolved per-layer mixer kinds (size num_layers); the config must be valid (validate_model_config).
  std::vector<std::string> mixer_kinds() const;
  int64_t mlp_intermediate() const;
};

// Every check of a model config, in one place: sizes, the layer lists, and each used mixer kind's own
// options (MixerSpec::check: head arrangements, NAtS-L's chunk and routing controls). Throws ConfigKeyError
// (core/config_key_error.h) naming the key at fault; the config loader adds where that key was set. The
// layers assume a config that passed (CausalLM's constructor calls this for configs built in code).
void validate_model_config(const ModelConfig& config);

}  // namespace natsl
