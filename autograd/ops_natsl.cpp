#include "autograd/ops_natsl.h"

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
    Tensor dx = Tensor::empty(xs, dt, dev);
    kernels::chunk_mean_pool_bwd(g[0].contiguous(), chunk_size, dx);
    return {dx};
  });
  return out;
}

RouterChoice router_choice(const Tensor& logits, const kernels::RouterChoiceArgs& args) {
  const Tensor lc = logits.contiguous();
  NATSL_CHECK(lc.dim() == 4, "router_choice: logits must be [B, NC, Hr, 2], got ", lc.str());
  const DType st = stat_dtype(lc.dtype());
  const Device dev = lc.device();
  const Shape ms{lc.size(0), lc.size(1), lc.size(2)};
  RouterChoice r{Tensor::empty(ms, st, dev), Tensor::empty(ms, st, dev), Tensor::empty(lc.shape(), st, dev)};
  kernels::router_choice_fwd(args, lc, r.probs, r.mask_softmax, r.mask_gdn);
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
  record("mix_norm_gate", {og, oa, wlogits, z, gamma_g, gamma_a}, {&y},
         [=](std::vector<Tensor>& g) -> std::vector<Tensor> {
           auto like = [&](const Tensor& t) { return Tensor::empty(t.shape(), t.dtype(), dev); };
           Tensor dog = like(s_og), doa = like(s_oa), dw = like(s_w), dz = like(s_z), dgg = like(s_gg),
                  dga = like(s_ga);
           kernels::mix_norm_gate_bwd(s_og, s_oa, s_w, s_z, s_gg, s_ga, rstd_g, rstd_a, grad_or_zeros(g, 0, s_og), dog,
                                      doa, dw, dz, dgg, dga);
           return {dog, doa, dw, dz, dgg, dga};
         });
  return y;
}

}  // namespace natsl
