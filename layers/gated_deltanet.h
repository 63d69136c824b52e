#pragma once
// GatedDeltaNet (mixer kind "gdn"), as FLA's GatedDeltaNet layer (docs/gdn-algorithm.md §1):
//   q = SiLU(conv4(x Wq)), k = SiLU(conv4(x Wk)), v = SiLU(conv4(x Wv))     (conv optional: use_short_conv)
//   q, k L2-normalised per head (eps 1e-6 inside the root)
//   beta = sigmoid(x Wb)  (x2 when allow_neg_eigval),  g = -exp(A_log) * softplus(x Wa + dt_bias)   (f32)
//   o = gated delta rule(q, k, v, g, beta, scale K^-1/2)                   [B, T, HV, V]
//   y = RMSNorm_V(o) * SiLU(x Wg)   (per head over V; without use_gate: RMSNorm_V(o))
//   out = flatten(y) Wo
// Heads: H = num_heads q/k heads and as many v heads, K = head_dim, V = expand_v * K.
#include <functional>
#include <memory>

#include "layers/linear.h"
#include "layers/mixer.h"
#include "layers/rmsnorm.h"
#include "layers/short_conv.h"

namespace natsl {

struct GdnDims {
  int64_t heads, key_dim, value_dim;  // H, K, V
};
// Resolves and checks the GDN dims of a config (ConfigKeyError naming the key); the registry's check of kind
// "gdn".
GdnDims gdn_dims(const ModelConfig& config);

// The shared front end of GDN and NAtS-L: projections, short convs, L2 norm, gates.
struct GdnFrontEnd {
  Tensor q_act, k_act;  // [B, T, H * K] after projection, conv and SiLU, before the L2 norm (NAtS-L's softmax view)
  Tensor q, k;   // [B, T, H, K] L2-normalised
  Tensor v;      // [B, T, H, V]
  Tensor g;      // [B, T, H] f32 log decay
  Tensor beta;   // [B, T, H] f32
};

// The projections x W_q, x W_k, x W_v [B, T, .] before the short convs. Decoding keeps the last W - 1 of them
// (the conv tails): what the convs of the next token read.
struct GdnProjections {
  Tensor q, k, v;
};

class DecodeCache;

class GatedDeltaNet : public Mixer {
 public:
  GatedDeltaNet(const ModelConfig& config, int64_t layer_idx) : GatedDeltaNet(config, layer_idx, true) {}
  Tensor forward(const Tensor& x) override;
  Tensor forward_residual(const Tensor& x, const Tensor& residual) override;
  const GdnDims& dims() const { return dims_; }
  // The decoding state of one generation (layers/decode_cache.h): conv tails and the recurrent state.
  std::unique_ptr<DecodeCache> decode_cache() override;

  static int64_t num_params(const ModelConfig& config);
  static double extra_flops_per_token(const ModelConfig& config, int64_t seq_len);

 protected:
  // with_output_norm = false leaves out o_norm (NAtS-L registers its own two-input norm in its place).
  GatedDeltaNet(const ModelConfig& config, int64_t layer_idx, bool with_output_norm);
  // Exposed for NAtS-L, which shares the whole front end (projections, convs, gates) and g_proj / o_proj.
  // `projections`, when given, receives the pre-conv projections (for the conv tails of decoding). keep_act =
  // false (GDN's own training forward) leaves f.q_act and f.k_act undefined: with the short convs on, q and k then
  // come from one short_conv_l2norm node each (the same bits, without the activations in memory).
  GdnFrontEnd front_end(const Tensor& x, GdnProjections* projections = nullptr, bool keep_act = true) const;
  // Decoding, x [B, 1, d]: the same front end for one more position. `tails` [B, W - 1, .] hold the W - 1
  // projections before it (undefined: the sequence starts here, zeros) and are advanced by one.
  GdnFrontEnd front_end_step(const Tensor& x, GdnProjections& tails) const;
  // The conv tails after a prompt's projections [B, T, .]: their last W - 1 rows, zeros in front when T < W - 1.
  GdnProjections conv_tails(const GdnProjections& projections) const;
  // norm, gate, o_proj of o [B, T, H, V] (+ residual, added by o_proj's GEMM when given)
  Tensor output(const Tensor& x, const Tensor& o, const Tensor& residual = Tensor()) const;

  GdnDims dims_;
  int64_t conv_size_;
  bool use_conv_, use_gate_, neg_eigval_;
  double norm_eps_;
  std::shared_ptr<Linear> q_proj_, k_proj_, v_proj_, a_proj_, b_proj_, g_proj_, o_proj_;
  std::shared_ptr<ShortConv> q_conv_, k_conv_, v_conv_;
  std::shared_ptr<RMSNorm> o_norm_;
  Tensor A_log_, dt_bias_;

 private:
  friend class GdnDecodeCache;
  friend class NatslDecodeCache;
  // The front end after f.q_act and f.k_act (or f.q and f.k): their L2 norms (unless f.q and f.k are given), v
  // (from v_act, called in between, as the training graph orders it) and the gates.
  void finish_front_end(const Tensor& x, GdnFrontEnd& f, const std::function<Tensor()>& v_act) const;
};

}  // namespace natsl
