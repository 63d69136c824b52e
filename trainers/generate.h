#pragma once
// Text generation (`natsl generate`, docs/training.md "Generation"): a checkpoint's model decoding with its
// mixers' caches (layers/model/lm_decoder.h), and the sampling rule that picks each next token.
//
// Sampling one token from logits z over the candidate ids (those below the tokenizer's vocabulary):
//   temperature 0:  argmax z (ties: the lowest id); top-k and top-p do not apply;
//   temperature T:  p ~ exp(z / T), then
//     top-k (k > 0):  only the k most likely ids stay (ties by lower id);
//     top-p (p < 1):  of those, by falling probability, the shortest prefix whose mass reaches p stays;
//   the rest renormalised, one id drawn by inverse CDF with u = philox_uniform(seed, offset) from a
//   Generator(seed): the same seed and logits give the same tokens on every machine.
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "core/philox.h"
#include "layers/model/causal_lm.h"
#include "layers/model/parameter_store.h"
#include "trainers/config.h"

namespace natsl {

struct SamplingOptions {
  double temperature = 1.0;  // 0: greedy
  int64_t top_k = 0;         // 0: off
  double top_p = 1.0;        // 1: off; in (0, 1]
  uint64_t seed = 0;
};
// InputError naming the option (--temperature, --top-k, --top-p) when out of range.
void validate_sampling(const SamplingOptions& o);

class Sampler {
 public:
  explicit Sampler(const SamplingOptions& o);
  // The next token from one row of logits; candidates are the ids below `candidates` (0: all).
  uint32_t sample(std::span<const float> logits, int64_t candidates = 0);
  // The probabilities sample() draws from (one per candidate id; greedy: 1 at the argmax).
  std::vector<double> distribution(std::span<const float> logits, int64_t candidates = 0) const;

 private:
  SamplingOptions o_;
  Generator gen_;
};

struct GenerateOptions {
  int64_t max_new_tokens = 128;
  SamplingOptions sampling;
  std::optional<uint32_t> stop_token;  // stop when it is drawn (it is not kept); none: run to max_new_tokens
  int64_t candidates = 0;              // sample ids below this (the tokenizer's vocabulary); 0: all
};

struct GenerateResult {
  std::vector<uint32_t> tokens;  // the new tokens
  bool stopped = false;          // the stop token was drawn
  int64_t prompt_tokens = 0, decode_steps = 0;
  double prefill_seconds = 0, decode_seconds = 0;  // prefill: up to the first logits on the host
  // At the end: the KV bytes held (kept softmax chunks, current chunks, attention caches), those of full
  // attention over the same layers' widths at the same length, and the other state held (GDN states, ...).
  int64_t kv_bytes = 0, full_attention_kv_bytes = 0, state_bytes = 0;
  double prefill_tokens_per_second() const { return prefill_seconds > 0 ? double(prompt_tokens) / prefill_seconds : 0; }
  double decode_tokens_per_second() const { return decode_seconds > 0 ? double(decode_steps) / decode_seconds : 0; }
};

// Prefills `prompt` (at least one token) with the chunk kernels, then decodes token by token: the first new
// token from the prefill's last logits, each further one from a step on the previous. The model must be in
// evaluation mode.
GenerateResult generate(const CausalLM& model, const std::vector<uint32_t>& prompt, const GenerateOptions& opts);

// A checkpoint's model, ready to generate: cfg.model on train.device in train.precision, the checkpoint's
// weights (InputError when the checkpoint was trained with another model config, or, given the identity of
// the tokenizer to generate with, another tokenizer), evaluation mode, router noise keyed by train.seed as
// in training.
struct InferenceModel {
  std::shared_ptr<CausalLM> model;
  std::unique_ptr<ParameterStore> store;  // after model: destroyed first
  Device device;
  int64_t step = 0;  // the checkpoint's
};
InferenceModel load_inference_model(const RunConfig& cfg, const std::string& checkpoint_dir,
                                    const nlohmann::json* tokenizer_identity = nullptr);

}  // namespace natsl
