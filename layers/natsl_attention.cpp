#include "layers/natsl_attention.h"

#include <algorithm>
#include <cmath>

#include "autograd/engine.h"
#include "autograd/ops.h"
#include "autograd/ops_gdn.h"
#include "autograd/ops_natsl.h"
#include "core/config_key_error.h"
#include "core/philox.h"
#include "kernels/gdn.h"

namespace natsl {
namespace {

std::string str(int64_t v) { return std::to_string(v); }

uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void collect_natsl_layers(const Module& m, const std::string& prefix,
                          std::vector<std::pair<std::string, NatslAttention*>>& out) {
  for (const auto& [name, child] : m.children()) {
    const std::string full = prefix.empty() ? name : prefix + "." + name;
    if (auto* layer = dynamic_cast<NatslAttention*>(child.get())) out.emplace_back(full, layer);
    collect_natsl_layers(*child, full, out);
  }
}

}  // namespace

uint64_t router_noise_seed(uint64_t run_seed, int64_t layer_idx) {
  // Two rounds: the run seed first, so seed s, layer l and seed s', layer l' collide only by chance.
  return splitmix64(splitmix64(0x4E4154534C000000ull ^ run_seed) + uint64_t(layer_idx) * 0x9E3779B97F4A7C15ull);
}

std::vector<std::pair<std::string, NatslAttention*>> natsl_layers(const Module& root) {
  std::vector<std::pair<std::string, NatslAttention*>> out;
  collect_natsl_layers(root, "", out);
  return out;
}

void NatslAttention::seed_noise(uint64_t run_seed) { noise_ = Generator(router_noise_seed(run_seed, layer_idx_), 0); }

namespace {

// The routing-sparsity options (model.nats_routing*, nats_frac_*, gumbel_tau_*).
void check_routing_controls(const ModelConfig& c) {
  auto fail = [](const char* key, const std::string& message) { throw ConfigKeyError(key, message); };
  const std::vector<std::string> kinds = {"learned", "topk", "all_softmax", "all_gdn", "every_nth", "random"};
  if (std::find(kinds.begin(), kinds.end(), c.nats_routing) == kinds.end())
    fail("model.nats_routing", "model.nats_routing must be one of learned, topk, all_softmax, all_gdn, every_nth, "
                               "random; got '" + c.nats_routing + "'");
  if (!(c.nats_routing_fraction >= 0 && c.nats_routing_fraction <= 1))
    fail("model.nats_routing_fraction",
         "model.nats_routing_fraction must be in [0, 1], got " + std::to_string(c.nats_routing_fraction));
  if (c.nats_routing_every < 1)
    fail("model.nats_routing_every", "model.nats_routing_every must be at least 1, got " + str(c.nats_routing_every));
  const bool penalised = c.nats_frac_penalty > 0 || !c.nats_frac_target.empty();
  if (penalised && c.nats_routing != "learned")
    fail(c.nats_frac_penalty > 0 ? "model.nats_frac_penalty" : "model.nats_frac_target",
         "model.nats_frac_penalty / model.nats_frac_target steer the learned router, but model.nats_routing is '" +
             c.nats_routing + "' (its fraction is fixed): use nats_routing: learned, or drop them");
  if (!(c.nats_frac_penalty >= 0 && std::isfinite(c.nats_frac_penalty)))
    fail("model.nats_frac_penalty", "model.nats_frac_penalty must be a finite number >= 0");
  if (!(c.nats_frac_target_coef >= 0 && std::isfinite(c.nats_frac_target_coef)))
    fail("model.nats_frac_target_coef", "model.nats_frac_target_coef must be a finite number >= 0");
  const auto kinds_of = c.mixer_kinds();
  const int64_t n_natsl = std::count(kinds_of.begin(), kinds_of.end(), std::string("natsl"));
  if (c.nats_frac_target.size() > 1 && int64_t(c.nats_frac_target.size()) != n_natsl)
    fail("model.nats_frac_target", "model.nats_frac_target has " + str(int64_t(c.nats_frac_target.size())) +
                                       " values but the model has " + str(n_natsl) +
                                       " natsl layers: give one value, or one per natsl layer");
  for (double t : c.nats_frac_target)
    if (!(t >= 0 && t <= 1))
      fail("model.nats_frac_target", "model.nats_frac_target values must be in [0, 1], got " + std::to_string(t));
  if (c.nats_frac_warmup_steps < 0) fail("model.nats_frac_warmup_steps", "model.nats_frac_warmup_steps must be >= 0");
  if (c.gumbel_tau_schedule != "constant" && c.gumbel_tau_schedule != "linear" && c.gumbel_tau_schedule != "exp")
    fail("model.gumbel_tau_schedule",
         "model.gumbel_tau_schedule must be constant, linear or exp; got '" + c.gumbel_tau_schedule + "'");
  if (c.gumbel_tau_schedule != "constant" && c.nats_sample != "gumbel")
    fail("model.gumbel_tau_schedule",
         "model.gumbel_tau_schedule '" + c.gumbel_tau_schedule + "' needs model.nats_sample: gumbel");
  if (!(c.gumbel_tau_end > 0)) fail("model.gumbel_tau_end", "model.gumbel_tau_end must be positive");
}

}  // namespace

void check_natsl_config(const ModelConfig& c) {
  auto fail = [](const char* key, const std::string& message) { throw ConfigKeyError(key, message); };
  const GdnDims g = gdn_dims(c);
  const int64_t H = g.heads, K = g.key_dim, V = g.value_dim, Ha = c.num_attn_heads;
  if (c.nats_block_size != kernels::kGdnChunk)
    fail("model.nats_block_size", "model.nats_block_size must be " + str(kernels::kGdnChunk) + " (the GDN chunk), got " +
                                      str(c.nats_block_size));
  if (!c.use_gate) fail("model.use_gate", "model.use_gate must be true for natsl layers (the output mixing is gated)");
  if (Ha <= 0 || Ha % H != 0)
    fail("model.num_attn_heads", "model.num_attn_heads (" + str(Ha) + ") must be a positive multiple of "
                                 "model.num_heads (" + str(H) + ") for natsl layers");
  const int64_t G = Ha / H;
  if (K % G != 0 || V % G != 0)
    fail("model.num_attn_heads", "natsl layers view each GDN head as num_attn_heads / num_heads = " + str(G) +
                                     " softmax heads: model.head_dim (" + str(K) + ") and the value dim (" + str(V) +
                                     ") must be divisible by it");
  if (c.attn_head_dim != 0 && c.attn_head_dim != K / G)
    fail("model.attn_head_dim", "model.attn_head_dim is " + str(c.attn_head_dim) + " but natsl layers use head_dim * "
                                "num_heads / num_attn_heads = " + str(K / G) + "; set it to 0 or " + str(K / G));
  if (c.attn_value_dim != 0 && c.attn_value_dim != V / G)
    fail("model.attn_value_dim", "model.attn_value_dim is " + str(c.attn_value_dim) + " but natsl layers use value "
                                 "dim * num_heads / num_attn_heads = " + str(V / G) + "; set it to 0 or " + str(V / G));
  if (c.num_nats_heads != 0 && c.num_nats_heads != H)
    fail("model.num_nats_heads", "model.num_nats_heads must be 0 or model.num_heads (" + str(H) + "), got " +
                                     str(c.num_nats_heads) + " (one router head per GDN head)");
  if (c.nats_sample != "argmax" && c.nats_sample != "gumbel")
    fail("model.nats_sample", "model.nats_sample must be 'argmax' or 'gumbel', got '" + c.nats_sample + "'");
  if (!(c.gumbel_tau > 0)) fail("model.gumbel_tau", "model.gumbel_tau must be positive, got " + std::to_string(c.gumbel_tau));
  check_routing_controls(c);
}

NatslDims natsl_dims(const ModelConfig& c) {
  const GdnDims g = gdn_dims(c);
  const int64_t H = g.heads, Ha = c.num_attn_heads;
  // check_natsl_config refused anything else with the key named; these guard the divisions below.
  NATSL_CHECK(c.nats_block_size == kernels::kGdnChunk && Ha > 0 && Ha % H == 0 && g.key_dim % (Ha / H) == 0 &&
                  g.value_dim % (Ha / H) == 0,
              "natsl_dims: a model config that validate_model_config refuses");
  const int64_t G = Ha / H;
  return NatslDims{g, Ha, g.key_dim / G, g.value_dim / G, G, H, c.nats_block_size};
}

TwoInputNorm::TwoInputNorm(int64_t dim) {
  register_parameter("weight1", &weight1_, ParamMeta{{dim}, ParamInit::ones(), /*no_decay=*/true});
  register_parameter("weight2", &weight2_, ParamMeta{{dim}, ParamInit::ones(), /*no_decay=*/true});
}

NatslAttention::NatslAttention(const ModelConfig& c, int64_t layer_idx)
    : GatedDeltaNet(c, layer_idx, /*with_output_norm=*/false), ndims_(natsl_dims(c)), layer_idx_(layer_idx),
      qk_norm_(c.attn_qk_norm),
      gumbel_(c.nats_sample == "gumbel"), drop_own_chunk_grad_(c.reference_attn_backward), tau_(c.gumbel_tau),
      routing_(c.nats_routing), tau_schedule_(c.gumbel_tau_schedule), routing_fraction_(c.nats_routing_fraction),
      penalty_(c.nats_frac_penalty), target_coef_(c.nats_frac_target_coef), tau0_(c.gumbel_tau),
      tau1_(c.gumbel_tau_end), routing_every_(c.nats_routing_every), warmup_(c.nats_frac_warmup_steps),
      noise_(router_noise_seed(0, layer_idx)) {
  if (!c.nats_frac_target.empty()) {
    // This layer's target: the only value, or the value of its place among the natsl layers.
    const auto kinds = c.mixer_kinds();
    const auto ordinal = std::count(kinds.begin(), kinds.begin() + layer_idx, std::string("natsl"));
    target_ = c.nats_frac_target.size() == 1 ? c.nats_frac_target[0] : c.nats_frac_target.at(size_t(ordinal));
  }
  const int64_t d = c.hidden_size, HK = dims_.heads * dims_.key_dim;
  const double std = c.initializer_range;
  nats_layer_ = register_module("nats_layer", std::make_shared<Linear>(d, 2 * ndims_.router_heads, false, std));
  nats_out_weights_layer_ =
      register_module("nats_out_weights_layer", std::make_shared<Linear>(HK, 2 * ndims_.attn_heads, false, std));
  if (qk_norm_) {
    q_norm_ = register_module("q_norm", std::make_shared<RMSNorm>(ndims_.attn_head_dim, c.norm_eps));
    k_norm_ = register_module("k_norm", std::make_shared<RMSNorm>(ndims_.attn_head_dim, c.norm_eps));
  }
  mix_norm_ = register_module("o_norm", std::make_shared<TwoInputNorm>(ndims_.attn_value_dim));
}

Tensor NatslAttention::forward(const Tensor& x) { return forward_residual(x, Tensor()); }

Tensor NatslAttention::forward_residual(const Tensor& x, const Tensor& residual) {
  NATSL_CHECK(x.dim() == 3, "NatslAttention: expected x [B, T, d], got ", x.str());
  const int64_t B = x.size(0), T = x.size(1), H = dims_.heads, K = dims_.key_dim;
  const int64_t Da = ndims_.attn_head_dim, C = ndims_.chunk, NC = (T + C - 1) / C;

  const GdnFrontEnd f = front_end(x);
  const RouterChoice choice = route(x, NC);

  // Softmax branch: the softmax view of the same q~, k~, v~ memory.
  const AttnView a = attn_view(f);
  const Tensor oa = sparse_attention(a.q, a.k, a.v, choice.mask_softmax, 1.0 / std::sqrt(double(Da)), C,
                                     drop_own_chunk_grad_);

  // GDN branch: only GDN-labelled chunks write the carried state; every chunk decays it.
  const Tensor og = gated_delta_rule(f.q, f.k, f.v, f.g, f.beta, 1.0 / std::sqrt(double(K)), Tensor(),
                                     reshape(choice.mask_gdn, {B * NC, H}))
                        .o;
  return mix_output(x, f, og, oa, residual);
}

RouterChoice NatslAttention::route(const Tensor& x, int64_t NC) {
  const int64_t B = x.size(0), Hr = ndims_.router_heads, C = ndims_.chunk;
  const bool train = training();
  // Router in f32 (f64 for f64 data): bf16 logits could tie (natsl-layer.md §3.2).
  const DType rdt = x.dtype() == DType::f64 ? DType::f64 : DType::f32;
  RouterChoice choice;
  Tensor logits;
  if (routing_ == "learned" || routing_ == "topk") {
    Tensor pooled = to_dtype(chunk_mean_pool(x, C), rdt);
    logits = reshape(linear(pooled, to_dtype(nats_layer_->weight(), rdt)), {B, NC, Hr, 2});
    kernels::RouterChoiceArgs args;
    args.tau = tau_;
    args.gumbel = gumbel_ && train;  // no noise at evaluation (§10.4)
    args.force_last_both = train;
    if (args.gumbel) {
      args.seed = noise_.seed;
      args.offset = noise_.reserve(uint64_t(logits.numel()));
    }
    choice = routing_ == "learned" ? router_choice(logits, args) : router_choice_topk(logits, args, routing_fraction_);
  } else {
    choice = fixed_routing(B, NC, rdt, x.device(), train);
  }
  last_mask_softmax_ = choice.mask_softmax.detach();
  last_mask_gdn_ = choice.mask_gdn.detach();
  if (train) {
    {
      NoGradGuard no_grad;
      attn_frac_ = mean(last_mask_softmax_);  // stays on the device: read only by collect_stats
      routed_frac_ = NC > 1 ? mean(slice(last_mask_softmax_, 1, 0, NC - 1)) : Tensor();
    }
    sparsity_penalty(choice, logits, NC);
  }
  return choice;
}

NatslAttention::AttnView NatslAttention::attn_view(const GdnFrontEnd& f) const {
  const int64_t B = f.q_act.size(0), T = f.q_act.size(1);
  const int64_t Ha = ndims_.attn_heads, Da = ndims_.attn_head_dim, Dav = ndims_.attn_value_dim;
  AttnView a;
  a.q = reshape(f.q_act, {B, T, Ha, Da});
  a.k = reshape(f.k_act, {B, T, Ha, Da});
  if (qk_norm_) {
    a.q = q_norm_->forward(a.q);
    a.k = k_norm_->forward(a.k);
  }
  a.v = reshape(f.v, {B, T, Ha, Dav});
  return a;
}

Tensor NatslAttention::mix_output(const Tensor& x, const GdnFrontEnd& f, const Tensor& og, const Tensor& oa,
                                  const Tensor& residual) const {
  // Output mixing: GDN output per d_av slot, weights from q~, SiLU gate.
  const int64_t B = x.size(0), T = x.size(1), H = dims_.heads, V = dims_.value_dim;
  const int64_t Ha = ndims_.attn_heads, Dav = ndims_.attn_value_dim;
  const Tensor wlogits = reshape(nats_out_weights_layer_->forward(f.q_act), {B, T, Ha, 2});
  const Tensor z = reshape(g_proj_->forward(x), {B, T, Ha, Dav});
  const Tensor y = mix_norm_gate(reshape(og, {B, T, Ha, Dav}), oa, wlogits, z, mix_norm_->weight1(),
                                 mix_norm_->weight2(), norm_eps_);
  return o_proj_->forward(reshape(y, {B, T, H * V}), residual);
}

void NatslAttention::check_decodable(int64_t B) const {
  if (routing_ == "topk")
    throw InputError("model.nats_routing topk labels a chunk by comparing it with later chunks (not causal, "
                     "docs/training.md), so a topk model cannot decode token by token");
  if (routing_ == "random" && B != 1)
    throw InputError("model.nats_routing random draws an evaluation label per (row, chunk, head) at an index that "
                     "depends on the sequence length for rows after the first, so decoding follows it for one "
                     "sequence at a time only (batch 1), got " + str(B));
}

std::vector<int> NatslAttention::route_chunk(const Tensor& x_chunk, int64_t chunk) {
  NATSL_CHECK(!training(), "NatslAttention::route_chunk: decoding needs the model in evaluation mode");
  const int64_t B = x_chunk.size(0), Hr = ndims_.router_heads, C = ndims_.chunk;
  NATSL_CHECK(x_chunk.dim() == 3 && x_chunk.size(1) == C, "NatslAttention::route_chunk: expected x [B, ", C,
              ", d], got ", x_chunk.str());
  std::vector<int> labels(size_t(B * Hr));
  if (routing_ == "learned") {
    // As route() at evaluation: the chunk's mean through W_r, argmax (no noise, nothing forced).
    const DType rdt = x_chunk.dtype() == DType::f64 ? DType::f64 : DType::f32;
    const Tensor pooled = to_dtype(chunk_mean_pool(x_chunk, C), rdt);
    const Tensor logits = reshape(linear(pooled, to_dtype(nats_layer_->weight(), rdt)), {B, 1, Hr, 2});
    kernels::RouterChoiceArgs args;
    args.tau = tau_;
    args.force_last_both = false;
    const std::vector<double> m = router_choice(logits, args).mask_softmax.to(DType::f64).to_vector<double>();
    for (size_t i = 0; i < labels.size(); ++i) labels[i] = m[i] > 0.5 ? 1 : 0;
    return labels;
  }
  check_decodable(B);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hr; ++h)
      labels[size_t(b * Hr + h)] = fixed_label(b, chunk, h, /*NC=*/chunk + 1, uint64_t(1) << 63) ? 1 : 0;
  return labels;
}

void NatslAttention::collect_stats(std::map<std::string, double>& stats) const {
  if (attn_frac_.defined()) stats["attn_frac"] = attn_frac_.item();
  if (routed_frac_.defined()) stats["routed_frac"] = routed_frac_.item();
  if (aux_.defined()) stats["router_penalty"] = aux_.item();
}

std::function<void()> NatslAttention::capture_forward_state() {
  return [this, noise = noise_, aux = aux_, routed = routed_frac_, frac = attn_frac_, ms = last_mask_softmax_,
          mg = last_mask_gdn_] {
    noise_ = noise;
    aux_ = aux;
    routed_frac_ = routed;
    attn_frac_ = frac;
    last_mask_softmax_ = ms;
    last_mask_gdn_ = mg;
  };
}

void NatslAttention::set_progress(int64_t step, int64_t total_steps) {
  step_ = step;
  const double x = total_steps > 1 ? std::clamp(double(step) / double(total_steps - 1), 0.0, 1.0) : 1.0;
  if (tau_schedule_ == "linear") tau_ = tau0_ + (tau1_ - tau0_) * x;
  else if (tau_schedule_ == "exp") tau_ = tau0_ * std::pow(tau1_ / tau0_, x);
}

std::string NatslAttention::graph_blocker(int64_t step, bool* never) const {
  *never = true;
  if (gumbel_) return "model.nats_sample gumbel draws the routers' noise at a host-kept offset each step";
  if (routing_ == "random") return "model.nats_routing random draws the routing on the host each step";
  if (routing_ == "topk") return "model.nats_routing topk reads the routers' probabilities back to the host";
  if (tau_schedule_ != "constant" && tau0_ != tau1_) return "the router temperature follows a schedule";
  *never = false;
  if (target_ >= 0 && target_coef_ > 0 && warmup_ > 0 && step + 1 < warmup_)
    return "the routing penalty warms up until step " + std::to_string(warmup_);
  return {};
}

// The fixed routings (controls): exact 0/1 masks without history, from the rule alone. random draws from
// the layer's noise stream in training (advancing it, so checkpoints carry it) and from a fixed stream at
// evaluation (offset 2^63, which training never reaches), so evaluations see the same routing every time.
RouterChoice NatslAttention::fixed_routing(int64_t B, int64_t NC, DType dt, Device dev, bool train) {
  const int64_t Hr = ndims_.router_heads, n = B * NC * Hr;
  // all_softmax, all_gdn and every_nth depend on the shape alone: built once, not at every forward.
  const bool deterministic = routing_ != "random";
  if (deterministic && fixed_.mask_softmax.defined() && fixed_.mask_softmax.shape() == Shape{B, NC, Hr} &&
      fixed_.mask_softmax.dtype() == dt && fixed_.mask_softmax.device() == dev)
    return fixed_;
  std::vector<double> soft(size_t(n), 0.0);
  uint64_t offset = 0;
  if (routing_ == "random") offset = train ? noise_.reserve(uint64_t(n)) : uint64_t(1) << 63;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < NC; ++c)
      for (int64_t h = 0; h < Hr; ++h) {
        const int64_t i = (b * NC + c) * Hr + h;
        soft[size_t(i)] = fixed_label(b, c, h, NC, offset) ? 1.0 : 0.0;
      }
  std::vector<double> gdn(soft.size());
  for (size_t i = 0; i < soft.size(); ++i) gdn[i] = 1.0 - soft[i];
  RouterChoice r;
  r.mask_softmax = Tensor::from_vector(soft, {B, NC, Hr}, dt, dev);
  r.mask_gdn = Tensor::from_vector(gdn, {B, NC, Hr}, dt, dev);
  if (deterministic) fixed_ = r;
  return r;
}

bool NatslAttention::fixed_label(int64_t b, int64_t c, int64_t h, int64_t NC, uint64_t offset) const {
  if (routing_ == "every_nth") return c % routing_every_ == 0;
  if (routing_ == "random") {
    const int64_t i = (b * NC + c) * ndims_.router_heads + h;
    return double(philox_uniform(noise_.seed, offset + uint64_t(i))) < routing_fraction_;
  }
  return routing_ == "all_softmax";
}

void NatslAttention::sparsity_penalty(const RouterChoice& choice, const Tensor& logits, int64_t NC) {
  aux_ = Tensor();
  if ((penalty_ == 0 && target_ < 0) || NC <= 1) return;
  // f with the straight-through gradient of the masks (kernels/router.h): its value is the routed fraction,
  // its gradient reaches only the chunks labelled softmax (the selected op's mask gradient alone counts).
  const Tensor f = mean(slice(choice.mask_softmax, 1, 0, NC - 1));
  Tensor loss;
  if (penalty_ > 0) loss = mul_scalar(f, penalty_);
  if (target_ >= 0 && target_coef_ > 0) {
    // mu w (f - t)^2 in value; its gradient 2 mu w (f - t) reaches every routable chunk through the soft
    // fraction f_p = mean sigmoid((z_softmax - z_gdn) / tau): the term is mu w [(f - t)^2 + 2 (f - t)(f_p - f_p')]
    // with f and f_p' held constant. Through f's own (straight-through) gradient a layer whose router labels every
    // chunk GDN would get no pull back up at all, and stay at 0 whatever its target.
    const double w = warmup_ > 0 ? std::min(1.0, double(step_ + 1) / double(warmup_)) : 1.0;
    const Tensor d = add_scalar(f.detach(), -target_);
    const Tensor margin = sub(slice(logits, 3, 0, 1), slice(logits, 3, 1, 2));
    const Tensor fp = mean(sigmoid(mul_scalar(slice(margin, 1, 0, NC - 1), 1.0 / tau_)));
    const Tensor t = mul_scalar(add(square(d), mul_scalar(mul(d, sub(fp, fp.detach())), 2.0)), target_coef_ * w);
    loss = loss.defined() ? add(loss, t) : t;
  }
  aux_ = loss;
}

int64_t NatslAttention::num_params(const ModelConfig& c) {
  const NatslDims n = natsl_dims(c);
  const int64_t d = c.hidden_size, HK = n.gdn.heads * n.gdn.key_dim;
  int64_t p = GatedDeltaNet::num_params(c) - n.gdn.value_dim;  // no per-head o_norm ...
  p += 2 * n.attn_value_dim;                                  // ... two per-slot norm weights instead
  p += d * 2 * n.router_heads + HK * 2 * n.attn_heads;         // nats_layer, nats_out_weights_layer
  if (c.attn_qk_norm) p += 2 * n.attn_head_dim;
  return p;
}

double NatslAttention::extra_flops_per_token(const ModelConfig& c, int64_t seq_len) {
  // The GDN branch as a plain GDN layer, plus the softmax branch's own-chunk causal attention: a query at
  // position j of its chunk sees j + 1 keys, (C + 1) / 2 on average, each costing 2 (d_a + d_av) per head in
  // the forward; backward twice that. Keys of earlier selected chunks are not counted: the fraction is
  // learned, so this is a lower bound of the work and MFU never overstates.
  const NatslDims n = natsl_dims(c);
  const double C = double(n.chunk);
  const double attn_fwd = double(n.attn_heads) * 2.0 * double(n.attn_head_dim + n.attn_value_dim) * (C + 1) / 2;
  return GatedDeltaNet::extra_flops_per_token(c, seq_len) + 3.0 * attn_fwd;
}

}  // namespace natsl
