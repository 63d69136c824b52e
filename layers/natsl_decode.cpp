// NatslAttention's decoding state (layers/decode_cache.h), natsl-layer.md §6. With C = 64 and chunk c(i) = i / C:
//   conv tails        the last W - 1 projections of q, k, v (as plain GDN);
//   carried H         the GDN state entering the current chunk: completed chunks labelled GDN were committed
//                     (H <- S at their end), those labelled softmax only decayed it (H <- exp(sum of g) H);
//   running S         the state inside the current chunk, started from H: every token's GDN output reads it;
//   kept chunks       per (row, router head), the keys/values [G, 64 n, D] of the completed chunks labelled
//                     softmax: what later queries of that head's softmax heads attend to;
//   current chunk     its keys/values [B, Ha, n, D] (every query sees its own chunk causally, whatever the
//                     chunk's label) and its layer inputs [B, n, d], which the router reads when the 64th
//                     token arrives: that is when a chunk is labelled, from the chunk alone, as the forward
//                     labels it (route_chunk).
// prefill runs the forward's kernels over the prompt; the GDN branch is split at the last chunk boundary
// (completed chunks with their labels -> H, then the partial chunk from H -> S), which is the same function.
#include <cmath>

#include "autograd/engine.h"
#include "autograd/ops.h"
#include "autograd/ops_gdn.h"
#include "autograd/ops_natsl.h"
#include "layers/decode_cache.h"
#include "layers/natsl_attention.h"

namespace natsl {

class NatslDecodeCache final : public LayerDecodeCache<NatslAttention> {
 public:
  explicit NatslDecodeCache(NatslAttention& layer) : LayerDecodeCache(layer, "NatslDecodeCache"), n_(layer.ndims()) {}

  Tensor prefill(const Tensor& x) override {
    check_prefill_first();
    NATSL_CHECK(!layer_.training(), "NatslDecodeCache: decoding needs the model in evaluation mode");
    NoGradGuard no_grad;
    const int64_t B = x.size(0), P = x.size(1), C = n_.chunk, H = n_.gdn.heads, Hr = n_.router_heads;
    const int64_t NC = (P + C - 1) / C, done = P / C, Pc = done * C;  // completed chunks end at Pc
    start(B);
    GdnProjections projections;
    const GdnFrontEnd f = layer_.front_end(x, &projections);
    const RouterChoice choice = layer_.route(x, NC);
    const NatslAttention::AttnView a = layer_.attn_view(f);
    const Tensor oa = sparse_attention(a.q, a.k, a.v, choice.mask_softmax, attn_scale(), C);

    // GDN branch: the completed chunks with their labels give H; the partial one runs on from H to S.
    Tensor og;
    if (Pc > 0) {
      const Tensor mask = reshape(slice(choice.mask_gdn, 1, 0, done), {B * done, H});
      const GdnOpResult r = gated_delta_rule(cut(f.q, 0, Pc), cut(f.k, 0, Pc), cut(f.v, 0, Pc), cut(f.g, 0, Pc),
                                             cut(f.beta, 0, Pc), gdn_scale(), Tensor(), mask, true);
      og = r.o;
      carried_ = r.ht;
    }
    running_ = carried_;
    if (P > Pc) {
      const GdnOpResult r = gated_delta_rule(cut(f.q, Pc, P), cut(f.k, Pc, P), cut(f.v, Pc, P), cut(f.g, Pc, P),
                                             cut(f.beta, Pc, P), gdn_scale(), carried_, Tensor(), true);
      og = og.defined() ? concat({og, r.o}, 1) : r.o;
      running_ = r.ht;
      g_sum_ = sum(cut(f.g, Pc, P), {1});
    }

    // Softmax branch: the kept completed chunks per (row, router head), and the current chunk.
    const Tensor kh = permute(a.k, {0, 2, 1, 3}), vh = permute(a.v, {0, 2, 1, 3});  // [B, Ha, P, D]
    const std::vector<double> ms = choice.mask_softmax.to(DType::f64).to(kCPU).to_vector<double>();
    for (int64_t c = 0; c < done; ++c) {
      std::vector<int> labels(size_t(B * Hr));
      for (size_t i = 0; i < labels.size(); ++i) labels[i] = ms[size_t(c * Hr) + (i / size_t(Hr)) * size_t(NC * Hr) +
                                                                i % size_t(Hr)] > 0.5;
      keep(labels, cut(kh, c * C, (c + 1) * C, 2), cut(vh, c * C, (c + 1) * C, 2));
    }
    if (P > Pc) {
      cur_k_ = cut(kh, Pc, P, 2);
      cur_v_ = cut(vh, Pc, P, 2);
      cur_x_ = cut(x, Pc, P);
    }
    tails_ = layer_.conv_tails(projections);
    position_ = P;
    return layer_.mix_output(x, f, og, oa);
  }

  Tensor step(const Tensor& x) override {
    NATSL_CHECK(!layer_.training(), "NatslDecodeCache: decoding needs the model in evaluation mode");
    NoGradGuard no_grad;
    const int64_t B = x.size(0), H = n_.gdn.heads;
    start(B);
    const GdnFrontEnd f = layer_.front_end_step(x, tails_);

    // GDN branch: one token of the rule from the running state.
    const GdnOpResult r = gated_delta_rule_recurrent(f.q, f.k, f.v, f.g, f.beta, gdn_scale(), running_);
    running_ = r.ht;
    const Tensor g = reshape(f.g, {B, H});
    g_sum_ = g_sum_.defined() ? add(g_sum_, g) : g;

    // Softmax branch: the token joins its chunk, then attends to the kept chunks and its chunk so far.
    const NatslAttention::AttnView a = layer_.attn_view(f);
    const Tensor k = permute(a.k, {0, 2, 1, 3}), v = permute(a.v, {0, 2, 1, 3});  // [B, Ha, 1, D]
    cur_k_ = cur_k_.defined() ? concat({cur_k_, k}, 2) : k;
    cur_v_ = cur_v_.defined() ? concat({cur_v_, v}, 2) : v;
    cur_x_ = cur_x_.defined() ? concat({cur_x_, x}, 1) : x.contiguous();
    const Tensor oa = attend(permute(a.q, {0, 2, 1, 3}));

    const Tensor out = layer_.mix_output(x, f, r.o, oa);
    if (++position_ % n_.chunk == 0) complete_chunk();
    return out;
  }

  int64_t kv_bytes() const override {
    int64_t n = held_bytes({cur_k_, cur_v_});
    for (size_t i = 0; i < kept_k_.size(); ++i) n += held_bytes({kept_k_[i], kept_v_[i]});
    return n;
  }
  int64_t state_bytes() const override {
    return held_bytes({carried_, running_, g_sum_, cur_x_, tails_.q, tails_.k, tails_.v});
  }
  int64_t full_attention_width() const override { return n_.attn_heads * (n_.attn_head_dim + n_.attn_value_dim); }
  std::vector<std::vector<int>> chunk_labels() const override { return labels_; }

 private:
  double attn_scale() const { return 1.0 / std::sqrt(double(n_.attn_head_dim)); }
  double gdn_scale() const { return 1.0 / std::sqrt(double(n_.gdn.key_dim)); }

  // Positions [t0, t1) of t along dim (a copy).
  static Tensor cut(const Tensor& t, int64_t t0, int64_t t1, int64_t dim = 1) { return slice(t, dim, t0, t1); }

  void start(int64_t B) {
    if (B_ < 0) {
      layer_.check_decodable(B);
      B_ = B;
      kept_k_.assign(size_t(B * n_.router_heads), Tensor());
      kept_v_.assign(size_t(B * n_.router_heads), Tensor());
    }
    NATSL_CHECK(B == B_, "NatslDecodeCache: batch ", B, " after batch ", B_);
  }

  // Rows [hG, hG + G) of t [B, Ha, n, D] at row b: router head h's softmax heads, [G, n, D].
  Tensor heads_of(const Tensor& t, int64_t b, int64_t h) const {
    return t.select(0, b).slice(0, h * n_.groups, (h + 1) * n_.groups);
  }

  // Appends one completed chunk's keys/values [B, Ha, C, D] to the kept ones of each (row, router head)
  // labelled softmax (labels [B * Hr]); the others drop them.
  void keep(const std::vector<int>& labels, const Tensor& k, const Tensor& v) {
    labels_.push_back(labels);
    const int64_t Hr = n_.router_heads;
    for (int64_t b = 0; b < B_; ++b)
      for (int64_t h = 0; h < Hr; ++h) {
        const size_t i = size_t(b * Hr + h);
        if (!labels[i]) continue;
        const Tensor kc = heads_of(k, b, h), vc = heads_of(v, b, h);
        kept_k_[i] = kept_k_[i].defined() ? concat({kept_k_[i], kc}, 1) : kc.clone();
        kept_v_[i] = kept_v_[i].defined() ? concat({kept_v_[i], vc}, 1) : vc.clone();
      }
  }

  // q [B, Ha, 1, Da] -> [B, 1, Ha, Dav]: per (row, router head), softmax(q K^T / sqrt(Da)) V over the kept
  // chunks' keys and the current chunk's (this token included).
  Tensor attend(const Tensor& q) const {
    const int64_t Hr = n_.router_heads;
    std::vector<Tensor> outs;
    for (int64_t b = 0; b < B_; ++b)
      for (int64_t h = 0; h < Hr; ++h) {
        const size_t i = size_t(b * Hr + h);
        const Tensor kc = heads_of(cur_k_, b, h), vc = heads_of(cur_v_, b, h);
        const Tensor keys = kept_k_[i].defined() ? concat({kept_k_[i], kc}, 1) : kc;
        const Tensor values = kept_v_[i].defined() ? concat({kept_v_[i], vc}, 1) : vc;
        const Tensor scores = mul_scalar(matmul(heads_of(q, b, h), keys, false, true), attn_scale());  // [G, 1, N]
        outs.push_back(matmul(softmax(scores), values));                                           // [G, 1, Dav]
      }
    const Tensor o = reshape(concat(outs, 0), {B_, n_.attn_heads, 1, n_.attn_value_dim});
    return permute(o, {0, 2, 1, 3});
  }

  // The 64th token of the current chunk has arrived: label the chunk, keep or drop its keys/values, and
  // commit its GDN writes (label GDN: H <- S) or only its decay (label softmax: H <- exp(sum of g) H).
  void complete_chunk() {
    const int64_t chunk = position_ / n_.chunk - 1, H = n_.gdn.heads;
    const std::vector<int> labels = layer_.route_chunk(cur_x_, chunk);
    keep(labels, cur_k_, cur_v_);
    const DType sdt = running_.dtype();
    if (!carried_.defined()) carried_ = Tensor::zeros(running_.shape(), sdt, running_.device());
    std::vector<double> gdn(labels.size());
    for (size_t i = 0; i < labels.size(); ++i) gdn[i] = labels[i] ? 0.0 : 1.0;
    const Tensor m = Tensor::from_vector(gdn, {B_, H, 1, 1}, sdt, running_.device());
    const Tensor decay = exp(reshape(g_sum_, {B_, H, 1, 1}));
    carried_ = add(mul(m, running_), mul(add_scalar(neg(m), 1.0), mul(decay, carried_)));
    running_ = carried_;
    g_sum_ = cur_k_ = cur_v_ = cur_x_ = Tensor();
  }

  const NatslDims n_;
  int64_t B_ = -1;
  GdnProjections tails_;
  Tensor carried_, running_;        // [B, H, K, V] f32 (f64 for f64 data); undefined = zeros
  Tensor g_sum_;                    // [B, H]: sum of g over the current chunk so far
  Tensor cur_k_, cur_v_, cur_x_;    // the current chunk: [B, Ha, n, Da], [B, Ha, n, Dav], [B, n, d]
  std::vector<Tensor> kept_k_, kept_v_;  // per (row, router head): [G, 64 kept, Da], [G, 64 kept, Dav]
  std::vector<std::vector<int>> labels_;
};

std::unique_ptr<DecodeCache> NatslAttention::decode_cache() { return std::make_unique<NatslDecodeCache>(*this); }

}  // namespace natsl
