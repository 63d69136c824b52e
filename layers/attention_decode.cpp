// SoftmaxAttention's decoding state (layers/decode_cache.h): a full KV cache. Keys (normed and rotated at
// their own positions) and values of every position, [B, H, N, D]; a step attends its query to all N.
#include <cmath>

#include "autograd/engine.h"
#include "autograd/ops.h"
#include "layers/attention_core.h"
#include "layers/decode_cache.h"
#include "layers/softmax_attention.h"

namespace natsl {

class AttentionDecodeCache final : public LayerDecodeCache<SoftmaxAttention> {
 public:
  explicit AttentionDecodeCache(SoftmaxAttention& layer) : LayerDecodeCache(layer, "AttentionDecodeCache") {}

  Tensor prefill(const Tensor& x) override {
    check_prefill_first();
    NoGradGuard no_grad;
    const SoftmaxAttention::Qkv p = layer_.project(x, 0);
    keys_ = permute(p.k, {0, 2, 1, 3});
    values_ = permute(p.v, {0, 2, 1, 3});
    position_ = x.size(1);
    return layer_.output(attention_core(p.q, p.k, p.v, /*causal=*/true));
  }

  Tensor step(const Tensor& x) override {
    NoGradGuard no_grad;
    const SoftmaxAttention::Qkv p = layer_.project(x, position_);
    const Tensor k = permute(p.k, {0, 2, 1, 3}), v = permute(p.v, {0, 2, 1, 3});  // [B, H, 1, D]
    keys_ = keys_.defined() ? concat({keys_, k}, 2) : k;
    values_ = values_.defined() ? concat({values_, v}, 2) : v;
    ++position_;
    // softmax(q K^T / sqrt(Dk)) V over every cached position (all earlier, and this one).
    const Tensor q = permute(p.q, {0, 2, 1, 3});  // [B, H, 1, Dk]
    const double scale = 1.0 / std::sqrt(double(layer_.dims().head_dim));
    const Tensor o = matmul(softmax(mul_scalar(matmul(q, keys_, false, true), scale)), values_);  // [B, H, 1, Dv]
    return layer_.output(permute(o, {0, 2, 1, 3}));
  }

  int64_t kv_bytes() const override { return held_bytes({keys_, values_}); }
  int64_t state_bytes() const override { return 0; }
  int64_t full_attention_width() const override {
    const AttentionDims& d = layer_.dims();
    return d.heads * (d.head_dim + d.value_dim);
  }

 private:
  Tensor keys_, values_;  // [B, H, N, Dk], [B, H, N, Dv]
};

std::unique_ptr<DecodeCache> SoftmaxAttention::decode_cache() { return std::make_unique<AttentionDecodeCache>(*this); }

}  // namespace natsl
