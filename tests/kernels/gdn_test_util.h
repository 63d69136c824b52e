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

// An output tensor on `device` filled with NaN, so that any element a kernel forgets to write shows.
inline Tensor poisoned(const Shape& s, DType dt, Device device = kCPU) {
  Tensor t = Tensor::empty(s, dt, device);
  poison(t);
  return t;
}

struct FwdResult {
  Tensor o, ht;
  GdnSaved saved;
};

// NaN-filled outputs of a forward on the device of `in`: o and ht, and the saved tensors when `saving`.
inline FwdResult poisoned_forward(const GdnArgs& a, const GdnInputs& in, bool saving) {
  const GdnShape s = GdnShape::of(in.q, in.v, a);
  const Device d = in.q.device();
  FwdResult r;
  r.o = poisoned(in.v.shape(), in.q.dtype(), d);
  r.ht = poisoned({s.N, s.HV, s.K, s.V}, state_dtype(in), d);
  if (saving) {
    r.saved.g_cumsum = poisoned({s.B, s.T, s.HV}, state_dtype(in), d);
    r.saved.a_inv = poisoned({s.B, s.T, s.HV, kernels::kGdnChunk}, in.q.dtype(), d);
  }
  return r;
}

// NaN-filled gradients of the backward on the device of `in`: dh0 always, dmask when the inputs carry a mask.
inline GdnGrads poisoned_grads(const GdnArgs& a, const GdnInputs& in) {
  const GdnShape s = GdnShape::of(in.q, in.v, a);
  const Device d = in.q.device();
  const DType D = in.q.dtype(), S = state_dtype(in);
  GdnGrads g;
  g.dq = poisoned(in.q.shape(), D, d);
  g.dk = poisoned(in.k.shape(), D, d);
  g.dv = poisoned(in.v.shape(), D, d);
  g.dg = poisoned(in.g.shape(), S, d);
  g.dbeta = poisoned(in.beta.shape(), S, d);
  g.dh0 = poisoned({s.N, s.HV, s.K, s.V}, S, d);
  if (in.mask.defined()) g.dmask = poisoned(in.mask.shape(), S, d);
  return g;
}

inline FwdResult run_recurrent(const GdnArgs& a, const GdnInputs& in) {
  FwdResult r = poisoned_forward(a, in, /*saving=*/false);
  kernels::gdn_recurrent_fwd(a, in, r.o, r.ht);
  return r;
}

inline FwdResult run_chunk_fwd(const GdnArgs& a, const GdnInputs& in) {
  FwdResult r = poisoned_forward(a, in, /*saving=*/true);
  kernels::gdn_chunk_fwd(a, in, r.o, r.ht, r.saved);
  return r;
}

// Backward of the chunked kernel (running its forward for the saved tensors).
inline GdnGrads run_chunk_bwd(const GdnArgs& a, const GdnInputs& in, const Tensor& dout, const Tensor& dht) {
  const FwdResult f = run_chunk_fwd(a, in);
  GdnGrads g = poisoned_grads(a, in);
  kernels::gdn_chunk_bwd(a, in, f.saved, dout, dht, g);
  return g;
}

// The chunked forward of case `c` equals the f64 token recurrence (output and final state).
inline void expect_chunked_equals_recurrence(const GdnCase& c, double tol = 1e-12) {
  const GdnArgs a = args_of(c);
  const GdnInputs in = make_inputs(c);
  const FwdResult ref = run_recurrent(a, in), got = run_chunk_fwd(a, in);
  EXPECT_CLOSE(got.o, ref.o, tol, tol);
  EXPECT_CLOSE(got.ht, ref.ht, tol, tol);
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

// Random cotangents dO (seed) and dht (seed + 1) of the loss L = <o, dO> + <ht, dht>.
struct Cotangents {
  Tensor dout, dht;
};
inline Cotangents cotangents(const GdnArgs& a, const GdnInputs& in, uint64_t seed) {
  const GdnShape s = GdnShape::of(in.q, in.v, a);
  return {randn(in.v.shape(), seed), randn({s.N, s.HV, s.K, s.V}, seed + 1)};
}

// Every gradient of the chunked backward of case `c` (dh0 with an initial state, dmask with a mask) equals
// finite differences of the f64 recurrence, cotangents from `cotangent_seed` (relative RMS 1e-7: the
// differences themselves carry about 1e-9).
inline void expect_gradients_match_differences(const GdnCase& c, uint64_t cotangent_seed) {
  const GdnArgs a = args_of(c);
  const GdnInputs in = make_inputs(c);
  const Cotangents ct = cotangents(a, in, cotangent_seed);
  const GdnGrads g = run_chunk_bwd(a, in, ct.dout, ct.dht);
  auto check = [&](const char* name, const Tensor& mine, const Tensor& x) {
    SCOPED_TRACE(name);
    EXPECT_CLOSE(mine, finite_difference(a, in, x, ct.dout, ct.dht), 1e-7, 1e-6);
  };
  check("dq", g.dq, in.q);
  check("dk", g.dk, in.k);
  check("dv", g.dv, in.v);
  check("dg", g.dg, in.g);
  check("dbeta", g.dbeta, in.beta);
  if (in.h0.defined()) check("dh0", g.dh0, in.h0);
  if (in.mask.defined()) check("dmask", g.dmask, in.mask);
}

}  // namespace natsl::testing::gdn
