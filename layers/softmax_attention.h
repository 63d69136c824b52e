#pragma once
// SoftmaxAttention (mixer kind "attn"): causal multi-head attention as in FLA's Attention layer.
//   q = x Wq -> [B,T,H,Dk], k = x Wk -> [B,T,H,Dk], v = x Wv -> [B,T,H,Dv]
//   optional per-head RMSNorm of q and k (q_norm, k_norm, weight [Dk]), then optional RoPE on q and k,
//   o = attention_core(q, k, v, causal) -> [B,T,H*Dv], out = o Wo.
// Dk = config.attn_head_dim (0: hidden_size / num_attn_heads), Dv = config.attn_value_dim (0: Dk).
#include <memory>

#include "layers/linear.h"
#include "layers/mixer.h"
#include "layers/rmsnorm.h"

namespace natsl {

struct AttentionDims {
  int64_t heads, head_dim, value_dim;
};
// Resolves and checks the attention dims of a config (ConfigKeyError naming the key when inconsistent); the
// registry's check of kind "attn".
AttentionDims attention_dims(const ModelConfig& config);

class SoftmaxAttention : public Mixer {
 public:
  SoftmaxAttention(const ModelConfig& config, int64_t layer_idx);
  Tensor forward(const Tensor& x) override;
  Tensor forward_residual(const Tensor& x, const Tensor& residual) override;
  const AttentionDims& dims() const { return dims_; }
  // The decoding state of one generation (layers/decode_cache.h): every position's keys and values.
  std::unique_ptr<DecodeCache> decode_cache() override;

  // Closed-form parameter count and attention FLOPs per token (see docs/flops.md).
  static int64_t num_params(const ModelConfig& config);
  static double extra_flops_per_token(const ModelConfig& config, int64_t seq_len);

 private:
  friend class AttentionDecodeCache;
  struct Qkv {
    Tensor q, k, v;  // [B, T, H, Dk] normed and rotated, [B, T, H, Dv]
  };
  // q, k, v of x [B, T, d] at positions start .. start + T - 1.
  Qkv project(const Tensor& x, int64_t start);
  // o [B, T, H, Dv] -> o_proj (+ residual, added by o_proj's GEMM when given)
  Tensor output(const Tensor& o, const Tensor& residual = Tensor()) const;

  AttentionDims dims_;
  bool qk_norm_, rope_;
  double rope_theta_;
  std::shared_ptr<Linear> q_proj_, k_proj_, v_proj_, o_proj_;
  std::shared_ptr<RMSNorm> q_norm_, k_norm_;
  // RoPE tables of the last (T, dtype, device) seen, so a training run builds them once.
  struct RopeCache {
    int64_t T = -1, D = -1;
    DType dtype = DType::f32;
    Device device;
    Tensor cos, sin;
  } rope_cache_;
};

}  // namespace natsl
