#pragma once
// NatslAttention (mixer kind "natsl"): the NAtS-L layer of docs/natsl-layer.md §3, as the
// reference's NeuralAttentionSearchLinearAttnGDN computes it with the released settings (shared q/k/v with
// short conv for both branches, QK-RMSNorm, no positional encoding, decay through softmax chunks, weighted
// outputs, output gate). With C = 64, chunk c(i) = i / C, NC chunks (a partial last one allowed):
//
//   q~, k~, v~ = SiLU(conv4(x W_q)), ...          shared by both branches (GatedDeltaNet's front end)
//   beta, g                                        GDN gates, f32 (as GatedDeltaNet)
//   logits     = mean_{i in c}(x_i) W_r^T          [B, NC, Hr, 2] (f32 router; index 0 softmax, 1 GDN)
//   m          = straight-through hard choice       argmax, or Gumbel (tau) in training; last chunk forced to
//                                                   both ops in training (its logits get no gradient)
//   o_a        = sparse_attention(RMSNorm_q(q~_a), RMSNorm_k(k~_a), v~_a; m[softmax])   scale d_a^-1/2
//   o_g        = gated delta rule(l2(q~), l2(k~), v~, g, beta; state-write mask m[GDN])  scale K^-1/2
//   y          = (w0 RMSNorm(o_g slot) gamma_1 + w1 RMSNorm(o_a) gamma_2) * SiLU(x W_g),
//                w = softmax(q~ W_w^T) per token and softmax head (index 0 weights the GDN output)
//   out        = y W_o
// Heads: H GDN heads (K, V), Ha = G H softmax heads with d_a = K / G, d_av = V / G viewing the same memory
// (head a = slice a mod G of GDN head a / G); Hr = H router heads (router head h labels GDN head h and
// softmax heads hG .. hG+G-1).
//
// Parameter names follow the reference checkpoint: GatedDeltaNet's (q_proj, k_proj, v_proj, a_proj, b_proj,
// A_log, dt_bias, q/k/v_conv1d, g_proj, o_proj) plus nats_layer (W_r), nats_out_weights_layer (W_w),
// q_norm / k_norm (when attn_qk_norm), o_norm.weight1 (GDN side) / o_norm.weight2 (softmax side).
//
// Config: nats_sample (argmax | gumbel), gumbel_tau, reference_attn_backward (drop the own-chunk dq/dk/dv
// terms as the reference's released backward does, §4.1). Routing-sparsity controls (defaults = the
// reference): nats_routing (learned | topk | all_softmax | all_gdn | every_nth | random), the softmax-fraction
// penalty and target, the Gumbel temperature schedule; their formulas are in docs/training.md. attn_rope is ignored: the branch has no
// positional encoding. Requires use_gate, nats_block_size 64, num_nats_heads 0 or num_heads, num_attn_heads
// a multiple of num_heads dividing K and V; attn_head_dim / attn_value_dim, when set, must equal K / G, V / G.
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "autograd/ops_natsl.h"
#include "layers/gated_deltanet.h"

namespace natsl {

struct NatslDims {
  GdnDims gdn;
  int64_t attn_heads, attn_head_dim, attn_value_dim;  // Ha, d_a, d_av
  int64_t groups;                                     // G = Ha / H
  int64_t router_heads;                               // Hr = H
  int64_t chunk;                                      // C = 64
};
// The options natsl layers read, checked: the arrangement above, the chunk, the sampling and the
// routing-sparsity controls (model.nats_routing*, nats_frac_*, gumbel_tau_*). Throws ConfigKeyError naming
// the key; the registry's check of kind "natsl", reached from validate_model_config.
void check_natsl_config(const ModelConfig& config);
// The NAtS-L dims of a config that passed check_natsl_config.
NatslDims natsl_dims(const ModelConfig& config);

// The Philox key of a layer's Gumbel noise: a splitmix64 mix of the run seed and the layer index, so runs of
// different seeds and different layers never share noise.
uint64_t router_noise_seed(uint64_t run_seed, int64_t layer_idx);

// The two RMSNorm weights of the output mixing (the reference's FusedMultiInputRMSNormGated).
class TwoInputNorm : public Module {
 public:
  explicit TwoInputNorm(int64_t dim);
  const Tensor& weight1() const { return weight1_; }  // GDN output
  const Tensor& weight2() const { return weight2_; }  // softmax output

 private:
  Tensor weight1_, weight2_;
};

class NatslAttention : public GatedDeltaNet {
 public:
  NatslAttention(const ModelConfig& config, int64_t layer_idx);
  Tensor forward(const Tensor& x) override;
  Tensor forward_residual(const Tensor& x, const Tensor& residual) override;
  // "attn_frac": fraction of (batch, chunk, router head) labels that are softmax in the last training
  // forward, the forced last chunk counted as softmax (as the reference logs it). Reads a device scalar.
  void collect_stats(std::map<std::string, double>& stats) const override;
  const NatslDims& ndims() const { return ndims_; }
  // The decoding state of one generation (layers/decode_cache.h, natsl_decode.cpp): conv tails, the GDN
  // carried and running states, the kept softmax chunks' keys/values and the current chunk's.
  std::unique_ptr<DecodeCache> decode_cache() override;
  // Decoding: the labels of chunk `chunk` (1 = softmax, 0 = GDN, [B * Hr] in (row, router head) order) from
  // its C layer inputs x_chunk [B, C, d], as an evaluation forward labels it. The learned router and the
  // fixed routings are causal; topk is not (InputError), random only for batch 1 (InputError otherwise).
  std::vector<int> route_chunk(const Tensor& x_chunk, int64_t chunk);
  // Whether this layer's routing can be followed token by token for B rows; InputError saying why not.
  void check_decodable(int64_t B) const;

  // The Gumbel noise stream: Philox key router_noise_seed(run seed, layer index) (run seed 0 until
  // seed_noise is called; the Trainer passes train.seed), offset advanced by every training forward that
  // samples. Checkpoints save it and resume restores it, so a resumed run draws the same noise.
  const Generator& noise_generator() const { return noise_; }
  void set_noise_generator(const Generator& g) { noise_ = g; }
  void seed_noise(uint64_t run_seed);  // restarts the stream at offset 0

  // The router's masks of the last forward ([B, NC, Hr], exact 0/1, no history), for tests and diagnostics.
  const Tensor& last_mask_softmax() const { return last_mask_softmax_; }
  const Tensor& last_mask_gdn() const { return last_mask_gdn_; }

  // The routing-sparsity penalty of the last training forward (undefined when the config sets none):
  //   lambda f + mu w(s) (f - t)^2, f = the mean of the straight-through softmax mask over the routable
  //   chunks (c < NC - 1; the last is forced to both in training), w(s) = min(1, (s + 1) / warmup).
  Tensor aux_loss() const override { return aux_; }
  void set_progress(int64_t step, int64_t total_steps) override;
  std::string graph_blocker(int64_t step, bool* never) const override;
  double tau() const { return tau_; }  // the Gumbel temperature in force

  // Recomputation (layers/recompute.h): the noise stream's offset (so a recomputed forward draws the same
  // Gumbel / random-routing noise) and the last forward's masks, fractions and penalty (so stats and the aux
  // loss stay those of the real forward).
  std::function<void()> capture_forward_state() override;

  static int64_t num_params(const ModelConfig& config);
  static double extra_flops_per_token(const ModelConfig& config, int64_t seq_len);

 private:
  friend class NatslDecodeCache;
  struct AttnView {
    Tensor q, k, v;  // [B, T, Ha, Da] (q/k-normed), [B, T, Ha, Dav]
  };
  // The pieces of forward, shared with decoding. route: the labels of x's NC chunks (and, in training, the
  // logged fractions and the penalty); attn_view: the softmax branch's view of q~, k~, v~; mix_output: the
  // output mixing and o_proj of the two branch outputs.
  RouterChoice route(const Tensor& x, int64_t NC);
  AttnView attn_view(const GdnFrontEnd& f) const;
  Tensor mix_output(const Tensor& x, const GdnFrontEnd& f, const Tensor& og, const Tensor& oa,
                    const Tensor& residual = Tensor()) const;

  NatslDims ndims_;
  int64_t layer_idx_;
  RouterChoice fixed_routing(int64_t B, int64_t NC, DType dt, Device dev, bool train);
  // A fixed routing's label of (row b, chunk c, router head h) in a forward of NC chunks; `offset` is the
  // noise-stream offset of random routing.
  bool fixed_label(int64_t b, int64_t c, int64_t h, int64_t NC, uint64_t offset) const;
  // The softmax-fraction penalty and target of one training forward (docs/training.md, "Routing-sparsity controls"):
  // logits [B, NC, Hr, 2] are the router's noiseless logits (undefined for fixed routings).
  void sparsity_penalty(const RouterChoice& choice, const Tensor& logits, int64_t NC);

  bool qk_norm_, gumbel_, drop_own_chunk_grad_;
  double tau_;
  std::string routing_, tau_schedule_;
  double routing_fraction_, penalty_, target_ = -1.0, target_coef_, tau0_, tau1_;
  int64_t routing_every_, warmup_, step_ = 0;
  Tensor aux_;          // the last training forward's penalty (undefined: none configured)
  Tensor routed_frac_;  // 0-d: f of the last training forward
  RouterChoice fixed_;  // the last deterministic fixed routing's masks, reused while B, NC, dtype, device hold
  std::shared_ptr<Linear> nats_layer_, nats_out_weights_layer_;
  std::shared_ptr<RMSNorm> q_norm_, k_norm_;
  std::shared_ptr<TwoInputNorm> mix_norm_;
  Generator noise_;
  Tensor attn_frac_;  // 0-d device scalar of the last training forward (undefined before the first)
  Tensor last_mask_softmax_, last_mask_gdn_;
};

// The NAtS-L layers under `root` with their dotted module names ("model.layers.1.attn"), in module order.
std::vector<std::pair<std::string, NatslAttention*>> natsl_layers(const Module& root);

}  // namespace natsl
