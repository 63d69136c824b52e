#pragma once
// LMDecoder: a CausalLM generating token by token with its mixers' decoding caches (layers/decode_cache.h):
// prefill runs the prompt through every layer's chunked forward and keeps each mixer's state, step feeds one
// more token. The logits of a step at position p equal those of one full forward over the same sequence at p,
// up to rounding (tests/layers/decode_test.cpp). The model must be in evaluation mode and outlive the decoder;
// one decoder serves one batch of sequences.
#include <memory>
#include <vector>

#include "layers/model/causal_lm.h"
#include "layers/decode_cache.h"

namespace natsl {

class LMDecoder {
 public:
  explicit LMDecoder(const CausalLM& model);
  // ids [B, P] (P >= 1, i32/i64): the prompt -> logits [B, P, V], or [B, 1, V] of its last position when
  // all_positions is false. Only before any step.
  Tensor prefill(const Tensor& ids, bool all_positions = true);
  // ids [B, 1]: the next token -> logits [B, 1, V]. A decoder may start here (an empty prompt).
  Tensor step(const Tensor& ids);

  int64_t position() const { return position_; }  // tokens seen
  // Bytes of attention keys and values the caches hold now, all layers.
  int64_t kv_bytes() const;
  // Bytes of the other decoding state held now (recurrent states, conv tails, router inputs), all layers.
  int64_t state_bytes() const;
  // What full causal attention over every layer's q/k/v widths would hold at this position: keys and values
  // of every layer, row and position seen, in the model's compute dtype (the KV cache of a Transformer of the
  // same size).
  int64_t full_attention_kv_bytes() const;
  size_t num_layers() const { return caches_.size(); }
  const DecodeCache& cache(size_t layer) const { return *caches_.at(layer); }

 private:
  Tensor embed(const Tensor& ids);
  const CausalLM& model_;
  std::vector<std::unique_ptr<DecodeCache>> caches_;
  int64_t batch_ = 0, position_ = 0;
};

}  // namespace natsl
