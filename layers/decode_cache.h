#pragma once
// DecodeCache: what one mixer keeps between tokens while a model generates (docs/training.md, "Generation").
// A Mixer makes one per generated sequence batch (Mixer::decode_cache); the cache then sees the mixer's
// normed input twice over:
//   prefill(x [B, P, d])  the prompt, through the mixer's chunked forward (the training kernels), returning
//                         the mixer's output [B, P, d] and keeping the state after position P - 1;
//   step(x [B, 1, d])     one more token, with small tensor ops on the model's device, returning [B, 1, d].
// A cache may also start with step() (an empty prompt). Position p of a step sees exactly what position p of
// one full forward over the same sequence sees, so the outputs agree up to rounding
// (tests/layers/decode_test.cpp states the tolerances).
//
// What each kind keeps:
//   gdn    the short-conv tails (last W - 1 projections of q, k, v) and the recurrent state [B, H, K, V];
//   attn   every position's keys and values (a full KV cache);
//   natsl  the short-conv tails, the GDN carried state (only chunks the router labelled GDN are folded in),
//          the running state inside the current chunk, the keys/values of the completed chunks the router
//          kept for softmax (per router head), and the keys/values and layer inputs of the current chunk.
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace natsl {

class DecodeCache {
 public:
  virtual ~DecodeCache() = default;
  // x [B, P, d] (P >= 1), the mixer's input for the prompt; called at most once, before any step.
  virtual Tensor prefill(const Tensor& x) = 0;
  // x [B, 1, d], the mixer's input for the next position.
  virtual Tensor step(const Tensor& x) = 0;
  // Positions seen so far.
  virtual int64_t position() const = 0;
  // Bytes of attention keys and values held now.
  virtual int64_t kv_bytes() const = 0;
  // Bytes of every other tensor held now (recurrent states, conv tails, the current chunk's router inputs).
  virtual int64_t state_bytes() const = 0;
  // Keys plus values per position and batch row, in elements, that full causal attention over this layer's
  // q/k/v widths would keep: what a full-attention model of the same size holds per layer and token.
  virtual int64_t full_attention_width() const = 0;
  // NAtS-L: the labels of the chunks completed so far, chunk after chunk, each [B * Hr] (1 = softmax,
  // 0 = GDN) in (row, router head) order. Empty for the other kinds.
  virtual std::vector<std::vector<int>> chunk_labels() const { return {}; }
};

// What the caches share: the layer they decode for, the positions seen so far and the check that prefill
// comes first; `name` (the cache's) starts its error messages.
template <class Layer>
class LayerDecodeCache : public DecodeCache {
 public:
  int64_t position() const override { return position_; }

 protected:
  LayerDecodeCache(Layer& layer, const char* name) : layer_(layer), name_(name) {}
  void check_prefill_first() const { NATSL_CHECK(position_ == 0, name_, ": prefill after decoding started"); }

  Layer& layer_;
  int64_t position_ = 0;

 private:
  const char* name_;
};

// Sum of t.nbytes() over the defined tensors.
int64_t held_bytes(const std::vector<Tensor>& ts);

}  // namespace natsl
