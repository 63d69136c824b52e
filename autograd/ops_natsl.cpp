#include "autograd/ops_natsl.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "autograd/function.h"
#include "kernels/mix_norm_gate.h"
#include "kernels/sparse_attention.h"

namespace natsl {
namespace {
DType stat_dtype(DType data) { return data == DType::f64 ? DType::f64 : DType::f32; }
}  // namespace

Tensor chunk_mean_pool(const Tensor& x, int64_t chunk_size) {
  NATSL_CHECK(x.dim() == 3 && chunk_size > 0, "chunk_mean_pool: x must be [B, T, d], got ", x.str());
  const Tensor xc = x.contiguous();
  Tensor out = Tensor::empty({x.size(0), (x.size(1) + chunk_size - 1) / chunk_size, x.size(2)}, x.dtype(), x.device());
  kernels::chunk_mean_pool_fwd(xc, chunk_size, out);
  const Shape xs = x.shape();
  const DType dt = x.dtype();
  const Device dev = x.device();
  record("chunk_mean_pool", {x}, {&out}, [=](std::vector<Tensor>& g) -> std::vector<Tensor> {
    // Straight into x's pending gradient when the engine offers it (engine.h, input_grad_sink): the layer input's
    // gradient from its other uses.
    const Tensor sink = input_grad_sink(0, xs, dt, dev);
    Tensor dx = sink.defined() ? sink : Tensor::empty(xs, dt, dev);
    kernels::chunk_mean_pool_bwd(g[0].contiguous(), chunk_size, dx, /*accumulate=*/sink.defined());
    return {dx};
  });
  return out;
}

namespace {

// The router's forward: probabilities and argmax masks (kernels/router.h), no history yet.
RouterChoice router_forward(const Tensor& lc, const kernels::RouterChoiceArgs& args) {
  NATSL_CHECK(lc.dim() == 4 && lc.size(3) == 2, "router_choice: logits must be [B, NC, Hr, 2], got ", lc.str());
  const DType st = stat_dtype(lc.dtype());
  const Device dev = lc.device();
  const Shape ms{lc.size(0), lc.size(1), lc.size(2)};
  RouterChoice r{Tensor::empty(ms, st, dev), Tensor::empty(ms, st, dev), Tensor::empty(lc.shape(), st, dev)};
  kernels::router_choice_fwd(args, lc, r.probs, r.mask_softmax, r.mask_gdn);
  return r;
}

// Records the straight-through backward of r's masks onto logits: kernels/router.h's, with r's masks
// choosing whose gradient counts.
void record_router(const Tensor& logits, const Tensor& lc, const kernels::RouterChoiceArgs& args, RouterChoice& r) {
  const Device dev = lc.device();
  const Tensor probs = r.probs, ms_saved = r.mask_softmax.detach(), mg_saved = r.mask_gdn.detach();
  const Shape ls = lc.shape();
  const DType dt = lc.dtype();
  record("router_choice", {logits}, {&r.mask_softmax, &r.mask_gdn},
         [=](std::vector<Tensor>& g) -> std::vector<Tensor> {
           Tensor ds = g.size() > 0 && g[0].defined() ? g[0].contiguous() : Tensor();
           Tensor dg = g.size() > 1 && g[1].defined() ? g[1].contiguous() : Tensor();
           Tensor dl = Tensor::empty(ls, dt, dev);
           kernels::router_choice_bwd(args, probs, ms_saved, mg_saved, ds, dg, dl);
           return {dl};
         });
}

// Top-k over the routable chunks of every (b, r) row, on the host: S is the masks' type (f32 or f64).
template <class S>
void topk_masks(const std::vector<double>& p, std::vector<S>& soft, std::vector<S>& gdn, int64_t B, int64_t NC,
                int64_t Hr, int64_t k) {
  std::vector<int64_t> order(size_t(NC > 0 ? NC - 1 : 0));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hr; ++h) {
      auto prob = [&](int64_t c) { return p[size_t(((b * NC + c) * Hr + h) * 2)]; };
      for (size_t c = 0; c < order.size(); ++c) order[c] = int64_t(c);
      // Highest softmax probability first; ties: the earlier chunk.
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t c) { return prob(a) > prob(c); });
      for (size_t i = 0; i < order.size(); ++i) {
        const size_t at = size_t((b * NC + order[i]) * Hr + h);
        soft[at] = S(int64_t(i) < k ? 1 : 0);
        gdn[at] = S(int64_t(i) < k ? 0 : 1);
      }
    }
}

}  // namespace

RouterChoice router_choice(const Tensor& logits, const kernels::RouterChoiceArgs& args) {
  const Tensor lc = logits.contiguous();
  RouterChoice r = router_forward(lc, args);
  record_router(logits, lc, args, r);
  return r;
}

int64_t router_topk_count(int64_t num_chunks, double fraction) {
  return num_chunks <= 1 ? 0 : int64_t(std::floor(fraction * double(num_chunks - 1) + 0.5));
}

RouterChoice router_choice_topk(const Tensor& logits, const kernels::RouterChoiceArgs& args, double fraction) {
  const Tensor lc = logits.contiguous();
  RouterChoice r = router_forward(lc, args);
  const int64_t B = lc.size(0), NC = lc.size(1), Hr = lc.size(2);
  const std::vector<double> p = r.probs.to_vector<double>();
  const Device dev = lc.device();
  const DType st = r.mask_softmax.dtype();
  const int64_t k = router_topk_count(NC, fraction);
  if (st == DType::f64) {
    std::vector<double> soft = r.mask_softmax.to_vector<double>(), gdn = r.mask_gdn.to_vector<double>();
    topk_masks(p, soft, gdn, B, NC, Hr, k);
    r.mask_softmax = Tensor::from_vector(soft, r.mask_softmax.shape(), st, dev);
    r.mask_gdn = Tensor::from_vector(gdn, r.mask_gdn.shape(), st, dev);
  } else {
    std::vector<float> soft = r.mask_softmax.to_vector<float>(), gdn = r.mask_gdn.to_vector<float>();
    topk_masks(p, soft, gdn, B, NC, Hr, k);
    r.mask_softmax = Tensor::from_vector(soft, r.mask_softmax.shape(), st, dev);
    r.mask_gdn = Tensor::from_vector(gdn, r.mask_gdn.shape(), st, dev);
  }
  record_router(logits, lc, args, r);
  return r;
}

Tensor sparse_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask_softmax, double scale,
                        int64_t chunk_size, bool drop_own_chunk_grad) {
  const Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous(), mc = mask_softmax.contiguous();
  const kernels::SparseAttentionIndex index = kernels::sparse_attention_index(mc, chunk_size);
  const kernels::SparseAttentionArgs args{scale, drop_own_chunk_grad, {}};
  const Device dev = q.device();
  Tensor o = Tensor::empty(vc.shape(), vc.dtype(), dev);
  Tensor lse = Tensor::empty({q.size(0), q.size(1), q.size(2)}, stat_dtype(q.dtype()), dev);
  kernels::sparse_attention_fwd(args, index, qc, kc, vc, o, lse);
  const bool want_mask = mask_softmax.requires_grad();
  const Tensor sq = qc.detach(), sk = kc.detach(), sv = vc.detach(), so = o.detach();
  const Shape mshape = mc.shape();
  const DType mdt = mc.dtype();
  record("sparse_attention", {q, k, v, mask_softmax}, {&o}, [=](std::vector<Tensor>& g) -> std::vector<Tensor> {
    Tensor dq = Tensor::empty(sq.shape(), sq.dtype(), dev), dk = Tensor::empty(sk.shape(), sk.dtype(), dev);
    Tensor dv = Tensor::empty(sv.shape(), sv.dtype(), dev);
    Tensor dm = want_mask ? Tensor::empty(mshape, stat_dtype(sq.dtype()), dev) : Tensor();
    kernels::sparse_attention_bwd(args, index, sq, sk, sv, so, lse, grad_or_zeros(g, 0, so), dq, dk, dv, dm);
    if (dm.defined() && dm.dtype() != mdt) dm = dm.to(mdt);
    return {dq, dk, dv, dm};
  });
  return o;
}

Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale, int64_t chunk_size) {
  const int64_t NC = (q.size(1) + chunk_size - 1) / chunk_size;
  Tensor all = Tensor::full({q.size(0), NC, 1}, 1.0, stat_dtype(q.dtype()), q.device());
  return sparse_attention(q, k, v, all, scale, chunk_size);
}

Tensor mix_norm_gate(const Tensor& og, const Tensor& oa, const Tensor& wlogits, const Tensor& z,
                     const Tensor& gamma_g, const Tensor& gamma_a, double eps) {
  const Tensor ogc = og.contiguous(), oac = oa.contiguous(), wc = wlogits.contiguous(), zc = z.contiguous();
  const Tensor ggc = gamma_g.contiguous(), gac = gamma_a.contiguous();
  const Device dev = og.device();
  Shape rows(og.shape().begin(), og.shape().end() - 1);
  const DType st = stat_dtype(og.dtype());
  Tensor y = Tensor::empty(og.shape(), og.dtype(), dev);
  Tensor rstd_g = Tensor::empty(rows, st, dev), rstd_a = Tensor::empty(rows, st, dev);
  kernels::mix_norm_gate_fwd(ogc, oac, wc, zc, ggc, gac, eps, y, rstd_g, rstd_a);
  const Tensor s_og = ogc.detach(), s_oa = oac.detach(), s_w = wc.detach(), s_z = zc.detach();
  const Tensor s_gg = ggc.detach(), s_ga = gac.detach();
  const Tensor gg_param = parameter_or_null(gamma_g), ga_param = parameter_or_null(gamma_a);
  record("mix_norm_gate", {og, oa, wlogits, z, gamma_g, gamma_a}, {&y},
         [=](std::vector<Tensor>& g) -> std::vector<Tensor> {
           auto like = [&](const Tensor& t) { return Tensor::empty(t.shape(), t.dtype(), dev); };
           // The gammas' gradients straight into their .grad when the engine offers both, two distinct tensors
           // (function.h, weight_grad_sink; the kernel's one accumulate flag serves both): else fresh tensors.
           const Tensor gg_sink = weight_grad_sink(gg_param, s_og.dtype());
           const Tensor ga_sink = weight_grad_sink(ga_param, s_og.dtype());
           const bool sinks = gg_sink.defined() && ga_sink.defined() && !gg_sink.same(ga_sink);
           Tensor dog = like(s_og), doa = like(s_oa), dw = like(s_w), dz = like(s_z);
           Tensor dgg = sinks ? gg_sink : like(s_gg), dga = sinks ? ga_sink : like(s_ga);
           kernels::mix_norm_gate_bwd(s_og, s_oa, s_w, s_z, s_gg, s_ga, rstd_g, rstd_a, grad_or_zeros(g, 0, s_og), dog,
                                      doa, dw, dz, dgg, dga, /*accumulate_dgamma=*/sinks);
           return {dog, doa, dw, dz, dgg, dga};
         });
  return y;
}

}  // namespace natsl
