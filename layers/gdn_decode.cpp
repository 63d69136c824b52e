// GatedDeltaNet's decoding state (layers/decode_cache.h): the conv tails and the recurrent state
//   prefill: the chunked forward over the prompt, keeping its final state h_P [B, H, K, V];
//   step:    one token of the recurrence h = exp(g) h; u = beta (v - h^T k); h += k u^T; o = scale h^T q.
#include <cmath>

#include "autograd/engine.h"
#include "autograd/ops.h"
#include "autograd/ops_gdn.h"
#include "layers/decode_cache.h"
#include "layers/gated_deltanet.h"

namespace natsl {

class GdnDecodeCache final : public LayerDecodeCache<GatedDeltaNet> {
 public:
  explicit GdnDecodeCache(GatedDeltaNet& layer) : LayerDecodeCache(layer, "GdnDecodeCache") {}

  Tensor prefill(const Tensor& x) override {
    check_prefill_first();
    NoGradGuard no_grad;
    GdnProjections projections;
    const GdnFrontEnd f = layer_.front_end(x, &projections);
    const GdnOpResult r = gated_delta_rule(f.q, f.k, f.v, f.g, f.beta, scale(), Tensor(), Tensor(), true);
    tails_ = layer_.conv_tails(projections);
    state_ = r.ht;
    position_ = x.size(1);
    return layer_.output(x, r.o);
  }

  Tensor step(const Tensor& x) override {
    NoGradGuard no_grad;
    const GdnFrontEnd f = layer_.front_end_step(x, tails_);
    const GdnOpResult r = gated_delta_rule_recurrent(f.q, f.k, f.v, f.g, f.beta, scale(), state_);
    state_ = r.ht;
    ++position_;
    return layer_.output(x, r.o);
  }

  int64_t kv_bytes() const override { return 0; }
  int64_t state_bytes() const override { return held_bytes({state_, tails_.q, tails_.k, tails_.v}); }
  int64_t full_attention_width() const override {
    const GdnDims& d = layer_.dims();
    return d.heads * (d.key_dim + d.value_dim);
  }

 private:
  double scale() const { return 1.0 / std::sqrt(double(layer_.dims().key_dim)); }

  GdnProjections tails_;
  Tensor state_;  // [B, H, K, V] f32 (f64 for f64 data); undefined = zeros
};

std::unique_ptr<DecodeCache> GatedDeltaNet::decode_cache() { return std::make_unique<GdnDecodeCache>(*this); }

}  // namespace natsl
