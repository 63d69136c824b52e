#include "layers/softmax_attention.h"

#include <tuple>

#include "autograd/ops.h"
#include "core/config_key_error.h"
#include "layers/attention_core.h"
#include "layers/rope.h"

namespace natsl {

AttentionDims attention_dims(const ModelConfig& c) {
  if (c.num_attn_heads <= 0)
    throw ConfigKeyError("model.num_attn_heads", "model.num_attn_heads must be positive, got " + std::to_string(c.num_attn_heads));
  int64_t dk = c.attn_head_dim;
  if (dk == 0) {
    if (c.hidden_size % c.num_attn_heads != 0)
      throw ConfigKeyError("model.num_attn_heads", "model.hidden_size (" + std::to_string(c.hidden_size) +
                                                       ") is not divisible by model.num_attn_heads (" +
                                                       std::to_string(c.num_attn_heads) +
                                                       "); set model.attn_head_dim or change the head count");
    dk = c.hidden_size / c.num_attn_heads;
  }
  if (dk <= 0) throw ConfigKeyError("model.attn_head_dim", "model.attn_head_dim must be positive, got " + std::to_string(dk));
  int64_t dv = c.attn_value_dim == 0 ? dk : c.attn_value_dim;
  if (dv <= 0)
    throw ConfigKeyError("model.attn_value_dim", "model.attn_value_dim must be positive, got " + std::to_string(dv));
  if (c.attn_rope && dk % 2 != 0)
    throw ConfigKeyError("model.attn_rope", "model.attn_rope needs an even attention head dim, got " + std::to_string(dk));
  return {c.num_attn_heads, dk, dv};
}

SoftmaxAttention::SoftmaxAttention(const ModelConfig& c, int64_t /*layer_idx*/)
    : dims_(attention_dims(c)), qk_norm_(c.attn_qk_norm), rope_(c.attn_rope), rope_theta_(c.rope_theta) {
  const int64_t d = c.hidden_size, H = dims_.heads, Dk = dims_.head_dim, Dv = dims_.value_dim;
  const double std = c.initializer_range;
  q_proj_ = register_module("q_proj", std::make_shared<Linear>(d, H * Dk, false, std));
  k_proj_ = register_module("k_proj", std::make_shared<Linear>(d, H * Dk, false, std));
  v_proj_ = register_module("v_proj", std::make_shared<Linear>(d, H * Dv, false, std));
  o_proj_ = register_module("o_proj", std::make_shared<Linear>(H * Dv, d, false, std));
  if (qk_norm_) {
    q_norm_ = register_module("q_norm", std::make_shared<RMSNorm>(Dk, c.norm_eps));
    k_norm_ = register_module("k_norm", std::make_shared<RMSNorm>(Dk, c.norm_eps));
  }
}

SoftmaxAttention::Qkv SoftmaxAttention::project(const Tensor& x, int64_t start) {
  NATSL_CHECK(x.dim() == 3, "SoftmaxAttention: expected x [B, T, d], got ", x.str());
  const int64_t B = x.size(0), T = x.size(1), H = dims_.heads;
  Tensor q = reshape(q_proj_->forward(x), {B, T, H, dims_.head_dim});
  Tensor k = reshape(k_proj_->forward(x), {B, T, H, dims_.head_dim});
  Tensor v = reshape(v_proj_->forward(x), {B, T, H, dims_.value_dim});
  if (qk_norm_) {
    q = q_norm_->forward(q);
    k = k_norm_->forward(k);
  }
  if (rope_ && start > 0) {  // decoding: positions start .. start + T - 1
    q = apply_rope(q, rope_theta_, start);
    k = apply_rope(k, rope_theta_, start);
  } else if (rope_) {
    RopeCache& rc = rope_cache_;
    if (rc.T != T || rc.D != dims_.head_dim || rc.dtype != q.dtype() || rc.device != q.device()) {
      std::tie(rc.cos, rc.sin) = rope_tables(T, dims_.head_dim, rope_theta_, 0, q.dtype(), q.device());
      rc.T = T;
      rc.D = dims_.head_dim;
      rc.dtype = q.dtype();
      rc.device = q.device();
    }
    q = apply_rope(q, rc.cos, rc.sin);
    k = apply_rope(k, rc.cos, rc.sin);
  }
  return {q, k, v};
}

Tensor SoftmaxAttention::output(const Tensor& o, const Tensor& residual) const {
  return o_proj_->forward(reshape(o, {o.size(0), o.size(1), dims_.heads * dims_.value_dim}), residual);
}

Tensor SoftmaxAttention::forward(const Tensor& x) { return forward_residual(x, Tensor()); }

Tensor SoftmaxAttention::forward_residual(const Tensor& x, const Tensor& residual) {
  const Qkv p = project(x, 0);
  return output(attention_core(p.q, p.k, p.v, /*causal=*/true), residual);
}

int64_t SoftmaxAttention::num_params(const ModelConfig& c) {
  AttentionDims a = attention_dims(c);
  const int64_t d = c.hidden_size;
  int64_t n = 2 * d * a.heads * a.head_dim  // q, k
              + d * a.heads * a.value_dim   // v
              + a.heads * a.value_dim * d;  // o
  if (c.attn_qk_norm) n += 2 * a.head_dim;
  return n;
}

double SoftmaxAttention::extra_flops_per_token(const ModelConfig& c, int64_t seq_len) {
  // Causal: query t attends to t + 1 keys; Q K^T costs 2 Dk and P V 2 Dv per (query, key, head), so the
  // forward averages H (Dk + Dv) (T + 1) per token; the backward does twice the forward's work.
  AttentionDims a = attention_dims(c);
  return 3.0 * double(a.heads) * double(a.head_dim + a.value_dim) * double(seq_len + 1);
}

}  // namespace natsl
