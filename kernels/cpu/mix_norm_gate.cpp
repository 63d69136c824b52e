// CPU reference of the NAtS-L output mixing and of GDN's gated output norm (kernels/mix_norm_gate.h), one row at
// a time.
#include <cmath>
#include <type_traits>
#include <vector>

#include "kernels/cpu/math.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/weight_grad.h"
#include "kernels/mix_norm_gate.h"

namespace natsl::kernels::cpu {
namespace {

template <class T> using Stat = std::conditional_t<std::is_same_v<T, double>, double, float>;

// w = softmax of two logits.
template <class A>
void softmax2(A l0, A l1, A& w0, A& w1) {
  w1 = A(1) / (A(1) + std::exp(l0 - l1));
  w0 = A(1) - w1;
}

template <class T>
void fwd_impl(const Tensor& og, const Tensor& oa, const Tensor& wlogits, const Tensor& z, const Tensor& gamma_g,
              const Tensor& gamma_a, double eps, const Tensor& y, const Tensor& rstd_g, const Tensor& rstd_a) {
  using A = acc_t<T>;
  using S = Stat<T>;
  const int64_t D = og.size(-1), R = og.numel() / D;
  const T *gp = og.data<T>(), *ap = oa.data<T>(), *wp = wlogits.data<T>(), *zp = z.data<T>();
  const T *ggp = gamma_g.data<T>(), *gap = gamma_a.data<T>();
  T* yp = y.data<T>();
  S *rgp = rstd_g.data<S>(), *rap = rstd_a.data<S>();
  auto rstd_of = [&](const T* x) {
    A ss = 0;
    for (int64_t e = 0; e < D; ++e) ss += convert<A>(x[e]) * convert<A>(x[e]);
    return A(1) / std::sqrt(ss / A(D) + A(eps));
  };
  for (int64_t row = 0; row < R; ++row) {
    const T *g = gp + row * D, *a = ap + row * D, *zr = zp + row * D;
    const A rg = rstd_of(g), ra = rstd_of(a);
    A w0, w1;
    softmax2(convert<A>(wp[2 * row]), convert<A>(wp[2 * row + 1]), w0, w1);
    for (int64_t e = 0; e < D; ++e) {
      const A u = w0 * convert<A>(g[e]) * rg * convert<A>(ggp[e]) + w1 * convert<A>(a[e]) * ra * convert<A>(gap[e]);
      yp[row * D + e] = convert<T>(u * silu(convert<A>(zr[e])));
    }
    rgp[row] = S(rg);
    rap[row] = S(ra);
  }
}

template <class T>
void bwd_impl(const Tensor& og, const Tensor& oa, const Tensor& wlogits, const Tensor& z, const Tensor& gamma_g,
              const Tensor& gamma_a, const Tensor& rstd_g, const Tensor& rstd_a, const Tensor& dy, const Tensor& dog,
              const Tensor& doa, const Tensor& dwlogits, const Tensor& dz, const Tensor& dgamma_g,
              const Tensor& dgamma_a, bool accumulate_dgamma) {
  using A = acc_t<T>;
  using S = Stat<T>;
  const int64_t D = og.size(-1), R = og.numel() / D;
  const T *gp = og.data<T>(), *ap = oa.data<T>(), *wp = wlogits.data<T>(), *zp = z.data<T>(), *dyp = dy.data<T>();
  const T *ggp = gamma_g.data<T>(), *gap = gamma_a.data<T>();
  const S *rgp = rstd_g.data<S>(), *rap = rstd_a.data<S>();
  T *dgp = dog.data<T>(), *dap = doa.data<T>(), *dwp = dwlogits.data<T>(), *dzp = dz.data<T>();
  std::vector<A> dgg(static_cast<size_t>(D), A(0)), dga(static_cast<size_t>(D), A(0));
  std::vector<A> ng(static_cast<size_t>(D)), na(static_cast<size_t>(D)), du(static_cast<size_t>(D));
  for (int64_t row = 0; row < R; ++row) {
    const int64_t o = row * D;
    const A rg = A(rgp[row]), ra = A(rap[row]);
    A w0, w1;
    softmax2(convert<A>(wp[2 * row]), convert<A>(wp[2 * row + 1]), w0, w1);
    A dw0 = 0, dw1 = 0;
    for (int64_t e = 0; e < D; ++e) {
      ng[e] = convert<A>(gp[o + e]) * rg;
      na[e] = convert<A>(ap[o + e]) * ra;
      const A hg = ng[e] * convert<A>(ggp[e]), ha = na[e] * convert<A>(gap[e]);
      const A ze = convert<A>(zp[o + e]), dye = convert<A>(dyp[o + e]);
      dzp[o + e] = convert<T>(dye * (w0 * hg + w1 * ha) * silu_grad(ze));
      du[e] = dye * silu(ze);
      dw0 += du[e] * hg;
      dw1 += du[e] * ha;
      dgg[e] += w0 * du[e] * ng[e];
      dga[e] += w1 * du[e] * na[e];
    }
    const A mean_dw = w0 * dw0 + w1 * dw1;
    dwp[2 * row] = convert<T>(w0 * (dw0 - mean_dw));
    dwp[2 * row + 1] = convert<T>(w1 * (dw1 - mean_dw));
    // RMSNorm backward: dx = rstd (dn - x_hat mean(dn x_hat)), dn = w du gamma.
    A cg = 0, ca = 0;
    for (int64_t e = 0; e < D; ++e) {
      cg += w0 * du[e] * convert<A>(ggp[e]) * ng[e];
      ca += w1 * du[e] * convert<A>(gap[e]) * na[e];
    }
    cg /= A(D);
    ca /= A(D);
    for (int64_t e = 0; e < D; ++e) {
      dgp[o + e] = convert<T>(rg * (w0 * du[e] * convert<A>(ggp[e]) - ng[e] * cg));
      dap[o + e] = convert<T>(ra * (w1 * du[e] * convert<A>(gap[e]) - na[e] * ca));
    }
  }
  // The sums in dgamma's dtype (store_weight_grad: overwritten, or added into with accumulate_dgamma).
  if (dgamma_g.defined()) store_weight_grad(dgg, dgamma_g, accumulate_dgamma);
  if (dgamma_a.defined()) store_weight_grad(dga, dgamma_a, accumulate_dgamma);
}

template <class T>
void ng_fwd_impl(const Tensor& o, const Tensor& z, const Tensor& gamma, double eps, const Tensor& y,
                 const Tensor& rstd) {
  using A = acc_t<T>;
  using S = Stat<T>;
  const int64_t D = o.size(-1), R = D > 0 ? o.numel() / D : 0;
  const T *op = o.data<T>(), *zp = z.data<T>(), *gp = gamma.data<T>();
  T* yp = y.data<T>();
  S* rp = rstd.data<S>();
  parallel_for(R, [&](int64_t row) {  // each row writes only its own outputs
    const T *x = op + row * D, *zr = zp + row * D;
    A ss = 0;
    for (int64_t e = 0; e < D; ++e) ss += convert<A>(x[e]) * convert<A>(x[e]);
    const A r = A(1) / std::sqrt(ss / A(D) + A(eps));
    for (int64_t e = 0; e < D; ++e)
      yp[row * D + e] = convert<T>(convert<A>(x[e]) * r * convert<A>(gp[e]) * silu(convert<A>(zr[e])));
    rp[row] = S(r);
  });
}

template <class T>
void ng_bwd_impl(const Tensor& o, const Tensor& z, const Tensor& gamma, const Tensor& rstd, const Tensor& dy,
                 const Tensor& do_, const Tensor& dz, const Tensor& dgamma, bool accumulate_dgamma) {
  using A = acc_t<T>;
  using S = Stat<T>;
  const int64_t D = o.size(-1), R = D > 0 ? o.numel() / D : 0;
  const T *op = o.data<T>(), *zp = z.data<T>(), *gp = gamma.data<T>(), *dyp = dy.data<T>();
  const S* rp = rstd.data<S>();
  T *dop = do_.data<T>(), *dzp = dz.data<T>();
  std::vector<A> dg(static_cast<size_t>(D), A(0)), n(static_cast<size_t>(D)), dn(static_cast<size_t>(D));
  for (int64_t row = 0; row < R; ++row) {
    const int64_t off = row * D;
    const A r = A(rp[row]);
    A c = 0;  // <du gamma, n>
    for (int64_t e = 0; e < D; ++e) {
      n[e] = convert<A>(op[off + e]) * r;
      const A ze = convert<A>(zp[off + e]), dye = convert<A>(dyp[off + e]), ge = convert<A>(gp[e]);
      dzp[off + e] = convert<T>(dye * n[e] * ge * silu_grad(ze));
      const A du = dye * silu(ze);
      dg[e] += du * n[e];
      dn[e] = du * ge;
      c += dn[e] * n[e];
    }
    c /= A(D);
    for (int64_t e = 0; e < D; ++e) dop[off + e] = convert<T>(r * (dn[e] - n[e] * c));
  }
  if (dgamma.defined()) store_weight_grad(dg, dgamma, accumulate_dgamma);
}

}  // namespace

void mix_norm_gate_fwd(const Tensor& og, const Tensor& oa, const Tensor& wlogits, const Tensor& z,
                       const Tensor& gamma_g, const Tensor& gamma_a, double eps, const Tensor& y,
                       const Tensor& rstd_g, const Tensor& rstd_a) {
  NATSL_DISPATCH_FLOAT(og.dtype(), T,
                       [&] { fwd_impl<T>(og, oa, wlogits, z, gamma_g, gamma_a, eps, y, rstd_g, rstd_a); });
}

void mix_norm_gate_bwd(const Tensor& og, const Tensor& oa, const Tensor& wlogits, const Tensor& z,
                       const Tensor& gamma_g, const Tensor& gamma_a, const Tensor& rstd_g, const Tensor& rstd_a,
                       const Tensor& dy, const Tensor& dog, const Tensor& doa, const Tensor& dwlogits,
                       const Tensor& dz, const Tensor& dgamma_g, const Tensor& dgamma_a, bool accumulate_dgamma) {
  NATSL_DISPATCH_FLOAT(og.dtype(), T, [&] {
    bwd_impl<T>(og, oa, wlogits, z, gamma_g, gamma_a, rstd_g, rstd_a, dy, dog, doa, dwlogits, dz, dgamma_g, dgamma_a,
                accumulate_dgamma);
  });
}

void norm_gate_fwd(const Tensor& o, const Tensor& z, const Tensor& gamma, double eps, const Tensor& y,
                   const Tensor& rstd) {
  NATSL_DISPATCH_FLOAT(o.dtype(), T, [&] { ng_fwd_impl<T>(o, z, gamma, eps, y, rstd); });
}

void norm_gate_bwd(const Tensor& o, const Tensor& z, const Tensor& gamma, const Tensor& rstd, const Tensor& dy,
                   const Tensor& do_, const Tensor& dz, const Tensor& dgamma, bool accumulate_dgamma) {
  NATSL_DISPATCH_FLOAT(o.dtype(), T,
                       [&] { ng_bwd_impl<T>(o, z, gamma, rstd, dy, do_, dz, dgamma, accumulate_dgamma); });
}

}  // namespace natsl::kernels::cpu
