#include "layers/gated_deltanet.h"

#include <cmath>
#include <functional>

#include "autograd/ops.h"
#include "core/config_key_error.h"
#include "autograd/ops_gdn.h"
#include "layers/ssm_init.h"

namespace natsl {

GdnDims gdn_dims(const ModelConfig& c) {
  if (c.num_heads <= 0) throw ConfigKeyError("model.num_heads", "model.num_heads must be positive, got " + std::to_string(c.num_heads));
  if (c.head_dim <= 0) throw ConfigKeyError("model.head_dim", "model.head_dim must be positive, got " + std::to_string(c.head_dim));
  double v = c.expand_v * double(c.head_dim);
  if (v < 1 || std::abs(v - std::round(v)) > 1e-9)
    throw ConfigKeyError("model.expand_v",
                         "model.expand_v * model.head_dim must be a positive integer, got " + std::to_string(v));
  return {c.num_heads, c.head_dim, int64_t(std::llround(v))};
}

GatedDeltaNet::GatedDeltaNet(const ModelConfig& c, int64_t /*layer_idx*/, bool with_output_norm)
    : dims_(gdn_dims(c)), conv_size_(c.conv_size), use_conv_(c.use_short_conv), use_gate_(c.use_gate), neg_eigval_(c.allow_neg_eigval),
      norm_eps_(c.norm_eps) {
  const int64_t d = c.hidden_size, H = dims_.heads, K = dims_.key_dim, V = dims_.value_dim;
  const double std = c.initializer_range;
  q_proj_ = register_module("q_proj", std::make_shared<Linear>(d, H * K, false, std));
  k_proj_ = register_module("k_proj", std::make_shared<Linear>(d, H * K, false, std));
  v_proj_ = register_module("v_proj", std::make_shared<Linear>(d, H * V, false, std));
  a_proj_ = register_module("a_proj", std::make_shared<Linear>(d, H, false, std));
  b_proj_ = register_module("b_proj", std::make_shared<Linear>(d, H, false, std));
  ParamMeta a_meta{{H}, ParamInit::with(a_log_init()), /*no_decay=*/true, false};
  ParamMeta dt_meta{{H}, ParamInit::with(dt_bias_init()), /*no_decay=*/true, false};
  register_parameter("A_log", &A_log_, a_meta);
  register_parameter("dt_bias", &dt_bias_, dt_meta);
  if (use_conv_) {
    q_conv_ = register_module("q_conv1d", std::make_shared<ShortConv>(H * K, c.conv_size, true, std));
    k_conv_ = register_module("k_conv1d", std::make_shared<ShortConv>(H * K, c.conv_size, true, std));
    v_conv_ = register_module("v_conv1d", std::make_shared<ShortConv>(H * V, c.conv_size, true, std));
  }
  if (use_gate_) g_proj_ = register_module("g_proj", std::make_shared<Linear>(d, H * V, false, std));
  if (with_output_norm) o_norm_ = register_module("o_norm", std::make_shared<RMSNorm>(V, c.norm_eps));
  o_proj_ = register_module("o_proj", std::make_shared<Linear>(H * V, d, false, std));
}

GdnFrontEnd GatedDeltaNet::front_end(const Tensor& x, GdnProjections* projections, bool keep_act) const {
  NATSL_CHECK(x.dim() == 3, "GatedDeltaNet: expected x [B, T, d], got ", x.str());
  auto conv_or_silu = [&](const std::shared_ptr<Linear>& proj, const std::shared_ptr<ShortConv>& conv, Tensor* keep) {
    Tensor p = proj->forward(x);
    if (keep) *keep = p;
    return use_conv_ ? conv->forward(p) : silu(p);
  };
  // The order of the ops is the training graph's (their backward order fixes how gradients add up).
  GdnFrontEnd f;
  if (!keep_act && use_conv_) {
    const int64_t B = x.size(0), T = x.size(1), H = dims_.heads, K = dims_.key_dim;
    auto conv_norm = [&](const std::shared_ptr<Linear>& proj, const std::shared_ptr<ShortConv>& conv, Tensor* keep) {
      Tensor p = proj->forward(x);
      if (keep) *keep = p;
      return reshape(short_conv_l2norm(p, conv->weight(), conv->apply_silu(), K, 1e-6), {B, T, H, K});
    };
    f.q = conv_norm(q_proj_, q_conv_, projections ? &projections->q : nullptr);
    f.k = conv_norm(k_proj_, k_conv_, projections ? &projections->k : nullptr);
    finish_front_end(x, f, [&] { return conv_or_silu(v_proj_, v_conv_, projections ? &projections->v : nullptr); });
    return f;
  }
  f.q_act = conv_or_silu(q_proj_, q_conv_, projections ? &projections->q : nullptr);
  f.k_act = conv_or_silu(k_proj_, k_conv_, projections ? &projections->k : nullptr);
  finish_front_end(x, f, [&] { return conv_or_silu(v_proj_, v_conv_, projections ? &projections->v : nullptr); });
  return f;
}

GdnFrontEnd GatedDeltaNet::front_end_step(const Tensor& x, GdnProjections& tails) const {
  NATSL_CHECK(x.dim() == 3 && x.size(1) == 1, "GatedDeltaNet: a decoding step takes x [B, 1, d], got ", x.str());
  const int64_t B = x.size(0), W = conv_size_;
  // The conv of the newest position over the window [W - 1 earlier projections, this one]: the last row of
  // the causal conv of the window (its zero padding never reaches that row).
  auto step = [&](const std::shared_ptr<Linear>& proj, const std::shared_ptr<ShortConv>& conv, Tensor& tail) {
    Tensor p = proj->forward(x);
    if (!use_conv_) return silu(p);
    if (W == 1) return conv->forward(p);
    if (!tail.defined()) tail = Tensor::zeros({B, W - 1, p.size(2)}, p.dtype(), p.device());
    const Tensor window = concat({tail, p}, 1);
    tail = slice(window, 1, 1, W);
    return slice(conv->forward(window), 1, W - 1, W);
  };
  GdnFrontEnd f;
  f.q_act = step(q_proj_, q_conv_, tails.q);
  f.k_act = step(k_proj_, k_conv_, tails.k);
  finish_front_end(x, f, [&] { return step(v_proj_, v_conv_, tails.v); });
  return f;
}

GdnProjections GatedDeltaNet::conv_tails(const GdnProjections& p) const {
  if (!use_conv_ || conv_size_ == 1) return {};
  const int64_t n = conv_size_ - 1;
  auto tail = [&](const Tensor& t) {
    const int64_t T = t.size(1);
    if (T >= n) return slice(t, 1, T - n, T);
    return concat({Tensor::zeros({t.size(0), n - T, t.size(2)}, t.dtype(), t.device()), t}, 1);
  };
  return {tail(p.q), tail(p.k), tail(p.v)};
}

void GatedDeltaNet::finish_front_end(const Tensor& x, GdnFrontEnd& f, const std::function<Tensor()>& v_act) const {
  const int64_t B = x.size(0), T = x.size(1), H = dims_.heads, K = dims_.key_dim, V = dims_.value_dim;
  if (!f.q.defined()) {
    f.q = l2norm(reshape(f.q_act, {B, T, H, K}), 1e-6);
    f.k = l2norm(reshape(f.k_act, {B, T, H, K}), 1e-6);
  }
  f.v = reshape(v_act(), {B, T, H, V});
  // Gates in f32 whatever the compute dtype (DESIGN.md: gates stay f32), in one node (autograd/ops_gdn.h).
  // With the op's inputs in the order (a, b) the backward still adds b_proj's term of x's gradient before a_proj's,
  // as the composed ops did (the bits of x's gradient).
  const Tensor b = b_proj_->forward(x);
  const Tensor a = a_proj_->forward(x);
  GdnGates gates = gdn_gates(a, b, A_log_, dt_bias_, neg_eigval_ ? 2.0 : 1.0);
  f.g = gates.g;
  f.beta = gates.beta;
}

Tensor GatedDeltaNet::output(const Tensor& x, const Tensor& o, const Tensor& residual) const {
  const int64_t B = x.size(0), T = x.size(1), H = dims_.heads, V = dims_.value_dim;
  // Per head over V; with the gate, FLA's FusedRMSNormGated: rmsnorm(o) * silu(g) in one op.
  Tensor y = use_gate_ ? rmsnorm_gate(o, o_norm_->weight(), reshape(g_proj_->forward(x), {B, T, H, V}), o_norm_->eps())
                       : o_norm_->forward(o);
  return o_proj_->forward(reshape(y, {B, T, H * V}), residual);
}

Tensor GatedDeltaNet::forward(const Tensor& x) { return forward_residual(x, Tensor()); }

Tensor GatedDeltaNet::forward_residual(const Tensor& x, const Tensor& residual) {
  GdnFrontEnd f = front_end(x, nullptr, /*keep_act=*/false);
  double scale = 1.0 / std::sqrt(double(dims_.key_dim));
  Tensor o = gated_delta_rule(f.q, f.k, f.v, f.g, f.beta, scale).o;
  return output(x, o, residual);
}

int64_t GatedDeltaNet::num_params(const ModelConfig& c) {
  GdnDims g = gdn_dims(c);
  const int64_t d = c.hidden_size, H = g.heads, K = g.key_dim, V = g.value_dim;
  int64_t n = d * H * K * 2 + d * H * V + 2 * d * H + 2 * H + V + H * V * d;
  if (c.use_short_conv) n += (2 * H * K + H * V) * c.conv_size;
  if (c.use_gate) n += d * H * V;
  return n;
}

double GatedDeltaNet::extra_flops_per_token(const ModelConfig& c, int64_t /*seq_len*/) {
  // Chunked delta rule per token and head (C = 64): intra-chunk scores and their product with values
  // (2 C (K + V)), state read/write (4 K V) and the WY terms (2 C K + 2 C V); backward twice the forward.
  GdnDims g = gdn_dims(c);
  const double C = 64, K = double(g.key_dim), V = double(g.value_dim);
  double fwd = 2 * C * (K + V) + 4 * K * V + 2 * C * (K + V);
  return 3.0 * fwd * double(g.heads);
}

}  // namespace natsl
