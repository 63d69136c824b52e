#pragma once
// Helpers for the GDN kernel tests: random inputs in the layer's ranges, runs of each kernel into
// NaN-poisoned outputs, and central finite differences of the f64 token recurrence.
#include <cmath>
#include <functional>
#include <vector>

#include "kernels/gdn.h"
#include "tests/test_util.h"

namespace natsl::testing::gdn {

using kernels::GdnArgs;
using kernels::GdnGrads;
using kernels::GdnInputs;
using kernels::GdnSaved;
using kernels::GdnShape;

enum class MaskKind { None, Binary, Continuous, Ones, Zeros };

struct GdnCase {
  int64_t B = 1, T = 1, H = 1, HV = 1, K = 16, V = 32;
  bool h0 = false;
  std::vector<int64_t> cu_seqlens = {};  // empty: not packed
  MaskKind mask = MaskKind::None;
  double g_min = -0.3;  // g ~ U(g_min, -0.01)
  uint64_t seed = 1;
};

inline GdnArgs args_of(const GdnCase& c) {
  GdnArgs a;
  a.scale = 1.0 / std::sqrt(double(c.K));
  a.cu_seqlens = c.cu_seqlens;
  return a;
}

// Rows of the last dim scaled to unit length, as the layer hands q and k to the kernels.
inline Tensor l2_rows(const Tensor& x) {
  std::vector<double> h = x.to_vector<double>();
  const int64_t d = x.size(-1);
  for (size_t r = 0; r < h.size(); r += size_t(d)) {
    double ss = 0;
    for (int64_t j = 0; j < d; ++j) ss += h[r + size_t(j)] * h[r + size_t(j)];
    for (int64_t j = 0; j < d; ++j) h[r + size_t(j)] /= std::sqrt(ss);
  }
  return Tensor::from_vector(h, x.shape(), DType::f64);
}

// f64 inputs (the oracle's dtype); tests convert with `converted` for f32 / bf16 runs.
inline GdnInputs make_inputs(const GdnCase& c) {
  GdnInputs in;
  const uint64_t s = c.seed * 100;
  in.q = l2_rows(randn({c.B, c.T, c.H, c.K}, s + 1));
  in.k = l2_rows(randn({c.B, c.T, c.H, c.K}, s + 2));
  in.v = randn({c.B, c.T, c.HV, c.V}, s + 3);
  in.g = rand_uniform({c.B, c.T, c.HV}, s + 4, c.g_min, -0.01);
  in.beta = rand_uniform({c.B, c.T, c.HV}, s + 5, 0.05, 0.95);
  const GdnShape sh = GdnShape::of(in.q, in.v, args_of(c));
  if (c.h0) in.h0 = randn({sh.N, c.HV, c.K, c.V}, s + 6, DType::f64, 0.5);
  switch (c.mask) {
    case MaskKind::None: break;
    case MaskKind::Binary: {
      in.mask = rand_uniform({sh.NC, c.HV}, s + 7, 0, 1);
      std::vector<double> m = in.mask.to_vector<double>();
      for (double& x : m) x = x < 0.5 ? 0.0 : 1.0;
      in.mask = Tensor::from_vector(m, in.mask.shape(), DType::f64);
      break;
    }
    case MaskKind::Continuous: in.mask = rand_uniform({sh.NC, c.HV}, s + 7, 0.1, 0.9); break;
    case MaskKind::Ones: in.mask = Tensor::full({sh.NC, c.HV}, 1.0, DType::f64); break;
    case MaskKind::Zeros: in.mask = Tensor::zeros({sh.NC, c.HV}, DType::f64); break;
  }
  return in;
}

inline Tensor maybe_to(const Tensor& t, DType dt) { return t.defined() ? t.to(dt) : Tensor(); }

// The same inputs with data in `data` and gates/states in the matching state dtype.
inline GdnInputs converted(const GdnInputs& in, DType data) {
  const DType state = data == DType::f64 ? DType::f64 : DType::f32;
  return {in.q.to(data), in.k.to(data), in.v.to(data), in.g.to(state), in.beta.to(state),
          maybe_to(in.h0, state), maybe_to(in.mask, state)};
}

inline DType state_dtype(const GdnInputs& in) { return in.g.dtype(); }

inline Tensor poisoned(const Shape& s, DType dt) {
  Tensor t = Tensor::empty(s, dt);
  poison(t);
  return t;
}

struct FwdResult {
  Tensor o, ht;
  GdnSaved saved;
};

inline FwdResult run_recurrent(const GdnArgs& a, const GdnInputs& in) {
  const GdnShape s = GdnShape::of(in.q, in.v, a);
  FwdResult r;
  r.o = poisoned(in.v.shape(), in.q.dtype());
  r.ht = poisoned({s.N, s.HV, s.K, s.V}, state_dtype(in));
  kernels::gdn_recurrent_fwd(a, in, r.o, r.ht);
  return r;
}

inline FwdResult run_chunk_fwd(const GdnArgs& a, const GdnInputs& in) {
  const GdnShape s = GdnShape::of(in.q, in.v, a);
  FwdResult r;
  r.o = poisoned(in.v.shape(), in.q.dtype());
  r.ht = poisoned({s.N, s.HV, s.K, s.V}, state_dtype(in));
  r.saved.g_cumsum = poisoned({s.B, s.T, s.HV}, state_dtype(in));
  r.saved.a_inv = poisoned({s.B, s.T, s.HV, kernels::kGdnChunk}, in.q.dtype());
  kernels::gdn_chunk_fwd(a, in, r.o, r.ht, r.saved);
  return r;
}

// Backward of the chunked kernel (running its forward for the saved tensors); dh0 always, dmask when the
// inputs carry a mask.
inline GdnGrads run_chunk_bwd(const GdnArgs& a, const GdnInputs& in, const Tensor& dout, const Tensor& dht) {
  const GdnShape s = GdnShape::of(in.q, in.v, a);
  const FwdResult f = run_chunk_fwd(a, in);
  const DType D = in.q.dtype(), S = state_dtype(in);
  GdnGrads g;
  g.dq = poisoned(in.q.shape(), D);
  g.dk = poisoned(in.k.shape(), D);
  g.dv = poisoned(in.v.shape(), D);
  g.dg = poisoned(in.g.shape(), S);
  g.dbeta = poisoned(in.beta.shape(), S);
  g.dh0 = poisoned({s.N, s.HV, s.K, s.V}, S);
  if (in.mask.defined()) g.dmask = poisoned(in.mask.shape(), S);
  kernels::gdn_chunk_bwd(a, in, f.saved, dout, dht, g);
  return g;
}

inline double dot(const Tensor& a, const Tensor& b) {
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double s = 0;
  for (size_t i = 0; i < x.size(); ++i) s += x[i] * y[i];
  return s;
}

// L = <o, dout> + <ht, dht> of the f64 recurrence.
inline double recurrent_loss(const GdnArgs& a, const GdnInputs& in, const Tensor& dout, const Tensor& dht) {
  FwdResult r = run_recurrent(a, in);
  return dot(r.o, dout) + dot(r.ht, dht);
}

// dL/dx by central differences, x one of the (f64) input tensors of `in` (perturbed in place, restored).
inline Tensor finite_difference(const GdnArgs& a, const GdnInputs& in, const Tensor& x, const Tensor& dout,
                                const Tensor& dht, double eps = 1e-6) {
  Tensor grad = Tensor::zeros(x.shape(), DType::f64);
  double* p = x.data<double>();
  double* gp = grad.data<double>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double keep = p[i];
    p[i] = keep + eps;
    const double up = recurrent_loss(a, in, dout, dht);
    p[i] = keep - eps;
    const double down = recurrent_loss(a, in, dout, dht);
    p[i] = keep;
    gp[i] = (up - down) / (2 * eps);
  }
  return grad;
}

}  // namespace natsl::testing::gdn
