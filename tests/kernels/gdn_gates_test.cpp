// Gated DeltaNet's gates in one op (kernels/gdn_gates.h, autograd/ops_gdn.h gdn_gates): on the CPU the values and
// gradients of the composed ops it replaces, to the bit (f64, f32, bf16 data; f32, bf16, f64 parameters), the
// parameters' gradients added into a preset .grad (the engine's sink) as AccumulateGrad adds them, finite
// differences in f64, and bad arguments refused with the op's name; then the same on the GPU against the GPU's
// composed ops (GdnGatesCuda, skipped without a GPU).
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "autograd/ops.h"
#include "autograd/ops_gdn.h"
#include "kernels/gdn_gates.h"
#include "tests/cuda_test_util.h"
#include "tests/ops_test_util.h"

using namespace natsl;
using namespace natsl::testing;

namespace {

// The ops GatedDeltaNet::finish_front_end composed before gdn_gates (S: f64 for f64 data, else f32).
GdnGates composed_gates(const Tensor& a, const Tensor& b, const Tensor& A_log, const Tensor& dt_bias, double c) {
  const DType S = a.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Tensor beta = sigmoid(to_dtype(b, S));
  if (c != 1.0) beta = mul_scalar(beta, c);
  const Tensor A = exp(to_dtype(A_log, S));
  const Tensor g = neg(mul(A, softplus(add(to_dtype(a, S), to_dtype(dt_bias, S)))));
  return {g, beta};
}

// Bitwise equality (a NaN equals itself, -0 differs from +0), naming the first element that differs.
void expect_bits(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_TRUE(got.defined() && want.defined()) << what << ": undefined (got " << got.defined() << ", want "
                                               << want.defined() << ")";
  ASSERT_EQ(got.shape(), want.shape()) << what;
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  const Tensor g = got.contiguous().to(kCPU), w = want.contiguous().to(kCPU);
  const size_t es = dtype_size(g.dtype());
  const auto* pg = static_cast<const unsigned char*>(g.data_ptr());
  const auto* pw = static_cast<const unsigned char*>(w.data_ptr());
  for (int64_t i = 0; i < g.numel(); ++i)
    if (std::memcmp(pg + size_t(i) * es, pw + size_t(i) * es, es) != 0) {
      const auto gv = g.to_vector<double>(), wv = w.to_vector<double>();
      size_t n = 0;
      for (int64_t j = i; j < g.numel(); ++j) n += std::memcmp(pg + size_t(j) * es, pw + size_t(j) * es, es) != 0;
      ADD_FAILURE() << what << ": " << n << " of " << g.numel() << " elements differ, first at " << i << ": "
                    << gv[size_t(i)] << " vs " << wv[size_t(i)];
      return;
    }
}

// A gates problem: a, b [B, T, H] in D, A_log, dt_bias [H] in P (leaves), the output gradients in S. a spans both
// softplus branches (above 20, and far enough below that softplus underflows to 0 in f32, and in f64 for the
// -800), with a = 20 on a head whose dt_bias is 0 (the switch's edge); b saturates the sigmoid both ways; dg and
// dbeta hold signed zeros.
struct Problem {
  Tensor a, b, A_log, dt_bias, dg, dbeta;
};
Problem make_problem(int64_t B, int64_t T, int64_t H, DType D, DType P, uint64_t seed, Device dev = kCPU) {
  const DType S = D == DType::f64 ? DType::f64 : DType::f32;
  std::vector<double> a = randn({B, T, H}, seed, DType::f64, 12.0).to_vector<double>();
  std::vector<double> b = randn({B, T, H}, seed + 1, DType::f64, 6.0).to_vector<double>();
  std::vector<double> dt = randn({H}, seed + 2).to_vector<double>();
  const double extremes_a[] = {-800.0, 300.0, 20.0, -130.0, 25.0};
  const double extremes_b[] = {-200.0, 200.0, 0.0};
  for (size_t k = 0; k < 5 && k * 7 + 3 < a.size(); ++k) a[k * 7 + 3] = extremes_a[k];
  for (size_t k = 0; k < 3 && k * 5 + 1 < b.size(); ++k) b[k * 5 + 1] = extremes_b[k];
  dt[0] = 0.0;
  a[0] = 20.0;  // head 0: u = 20 exactly
  std::vector<double> dg = randn({B, T, H}, seed + 3).to_vector<double>();
  std::vector<double> dbeta = randn({B, T, H}, seed + 4).to_vector<double>();
  if (dg.size() > 2) dg[1] = -0.0, dg[2] = 0.0;
  if (dbeta.size() > 3) dbeta[3] = -0.0;
  auto make = [&](const std::vector<double>& v, const Shape& s, DType dt_) {
    return Tensor::from_vector(v, s, DType::f64).to(dt_).to(dev);
  };
  Problem p;
  p.a = make(a, {B, T, H}, D);
  p.b = make(b, {B, T, H}, D);
  p.A_log = rand_uniform({H}, seed + 5, -2.0, 3.0).to(P).to(dev);
  p.dt_bias = make(dt, {H}, P);
  p.dg = make(dg, {B, T, H}, S);
  p.dbeta = make(dbeta, {B, T, H}, S);
  for (Tensor* t : {&p.a, &p.b, &p.A_log, &p.dt_bias}) t->set_requires_grad(true);
  return p;
}

// Which outputs the loss reaches.
enum class Reach { Both, GOnly, BetaOnly };

struct GatesRun {
  Tensor g, beta, da, db, dA_log, ddt_bias;
};
// Values and gradients of one graph. With preset (defined) parameter gradients, the leaves' .grad start as copies of
// them (a parameter store's gradient views: the engine's sink), else empty.
GatesRun run_gates(const Problem& p, double c, bool fused, Reach reach, const Tensor& preset_A = Tensor(),
              const Tensor& preset_dt = Tensor()) {
  for (const Tensor* t : {&p.a, &p.b}) t->set_grad(Tensor());
  p.A_log.set_grad(preset_A.defined() ? preset_A.clone() : Tensor());
  p.dt_bias.set_grad(preset_dt.defined() ? preset_dt.clone() : Tensor());
  const void* A_grad_memory = preset_A.defined() ? p.A_log.grad().data_ptr() : nullptr;  // stays where it is
  const GdnGates r = fused ? gdn_gates(p.a, p.b, p.A_log, p.dt_bias, c) : composed_gates(p.a, p.b, p.A_log, p.dt_bias, c);
  if (reach == Reach::Both) run_backward({r.g, r.beta}, {p.dg, p.dbeta}, false);
  else if (reach == Reach::GOnly) r.g.backward(p.dg);
  else r.beta.backward(p.dbeta);
  if (A_grad_memory) {
    EXPECT_EQ(p.A_log.grad().data_ptr(), A_grad_memory) << "A_log.grad moved";
  }
  return {r.g.detach(), r.beta.detach(), p.a.grad(), p.b.grad(), p.A_log.grad(), p.dt_bias.grad()};
}

void expect_same_run(const GatesRun& fused, const GatesRun& composed, const std::string& what) {
  expect_bits(fused.g, composed.g, what + " g");
  expect_bits(fused.beta, composed.beta, what + " beta");
  const std::pair<const Tensor*, const Tensor*> grads[] = {{&fused.da, &composed.da},
                                                           {&fused.db, &composed.db},
                                                           {&fused.dA_log, &composed.dA_log},
                                                           {&fused.ddt_bias, &composed.ddt_bias}};
  const char* names[] = {" da", " db", " dA_log", " ddt_bias"};
  for (int k = 0; k < 4; ++k) {
    EXPECT_EQ(grads[k].first->defined(), grads[k].second->defined()) << what << names[k] << " defined";
    if (grads[k].first->defined() && grads[k].second->defined())
      expect_bits(*grads[k].first, *grads[k].second, what + names[k]);
  }
}

struct Dtypes {
  DType data, param;
};
const Dtypes kCpuDtypes[] = {{DType::f64, DType::f64}, {DType::f32, DType::f32}, {DType::bf16, DType::f32},
                             {DType::bf16, DType::bf16}, {DType::f32, DType::f64}};

struct Size {
  int64_t B, T, H;
};
const Size kSizes[] = {{2, 37, 5}, {1, 1, 1}, {3, 4, 16}, {1, 67, 3}, {2, 130, 7}};

std::string case_of(const Dtypes& d, const Size& s, double c, const char* extra = "") {
  std::ostringstream os;
  os << dtype_name(d.data) << " data, " << dtype_name(d.param) << " params, [" << s.B << ", " << s.T << ", " << s.H
     << "], beta_scale " << c << extra;
  return os.str();
}

// The gradient buffer a parameter store presets: f32 for f32 and bf16 parameters, f64 for f64 ones.
Tensor preset_grad(const Tensor& param, uint64_t seed) {
  return randn(param.shape(), seed).to(param.dtype() == DType::f64 ? DType::f64 : DType::f32).to(param.device());
}

}  // namespace

TEST(GdnGates, IsTheComposedOpsBitForBit) {
  uint64_t seed = 100;
  for (const Dtypes& d : kCpuDtypes)
    for (const Size& s : kSizes)
      for (double c : {1.0, 2.0}) {
        const Problem p = make_problem(s.B, s.T, s.H, d.data, d.param, seed += 10);
        for (Reach reach : {Reach::Both, Reach::GOnly, Reach::BetaOnly}) {
          const char* which = reach == Reach::Both ? "" : reach == Reach::GOnly ? ", g only" : ", beta only";
          const std::string what = case_of(d, s, c, which);
          expect_same_run(run_gates(p, c, true, reach), run_gates(p, c, false, reach), what);
        }
      }
}

// Parameters with a preset .grad (a parameter store's gradient views): the op adds into it (the engine's sink),
// and the result is the composed ops' gradient added by AccumulateGrad, to the bit, also over two backwards.
TEST(GdnGates, AddsIntoAPresetGradAsAccumulateGradDoes) {
  uint64_t seed = 900;
  for (const Dtypes& d : kCpuDtypes)
    for (const Size& s : {Size{2, 37, 5}, Size{1, 3, 4}}) {
      const Problem p = make_problem(s.B, s.T, s.H, d.data, d.param, seed += 10);
      const Tensor pA = preset_grad(p.A_log, seed + 1), pdt = preset_grad(p.dt_bias, seed + 2);
      const std::string what = case_of(d, s, 2.0, ", preset .grad");
      const GatesRun fused = run_gates(p, 2.0, true, Reach::Both, pA, pdt);
      expect_same_run(fused, run_gates(p, 2.0, false, Reach::Both, pA, pdt), what);
      // Only one of the two with a preset .grad (the other a fresh gradient).
      expect_same_run(run_gates(p, 2.0, true, Reach::Both, pA, Tensor()),
                      run_gates(p, 2.0, false, Reach::Both, pA, Tensor()), what + " (A_log only)");
      // Two backwards into the same .grad.
      auto twice = [&](bool fused_op) {
        p.A_log.set_grad(pA.clone());
        p.dt_bias.set_grad(pdt.clone());
        for (int k = 0; k < 2; ++k) {
          for (const Tensor* t : {&p.a, &p.b}) t->set_grad(Tensor());
          const GdnGates r = fused_op ? gdn_gates(p.a, p.b, p.A_log, p.dt_bias, 1.0)
                                      : composed_gates(p.a, p.b, p.A_log, p.dt_bias, 1.0);
          run_backward({r.g, r.beta}, {p.dg, p.dbeta}, false);
        }
        return std::pair<Tensor, Tensor>{p.A_log.grad().clone(), p.dt_bias.grad().clone()};
      };
      const auto f2 = twice(true), c2 = twice(false);
      expect_bits(f2.first, c2.first, what + " dA_log after two backwards");
      expect_bits(f2.second, c2.second, what + " ddt_bias after two backwards");
    }
}

TEST(GdnGates, Gradcheck) {
  for (double c : {1.0, 2.0}) {
    auto f = [c](const std::vector<Tensor>& v) {
      const GdnGates r = gdn_gates(v[0], v[1], v[2], v[3], c);
      return concat({r.g, r.beta}, 0);
    };
    // a spans softplus's switch at 20 only away from it (finite differences across it would see the kink's
    // 2e-9 jump); |values| up to 3.
    expect_gradcheck(f, {leaf({2, 5, 3}, 1, -3, 3), leaf({2, 5, 3}, 2, -3, 3), leaf({3}, 3), leaf({3}, 4)},
                     c == 1.0 ? "gdn_gates" : "gdn_gates beta_scale 2");
    expect_gradcheck(f, {leaf({1, 1, 1}, 5), leaf({1, 1, 1}, 6), leaf({1}, 7), leaf({1}, 8)}, "gdn_gates one element");
    expect_gradcheck(f, {leaf({4, 2}, 9, 18, 24), leaf({4, 2}, 10), leaf({2}, 11), leaf({2}, 12, 3, 4)},
                     "gdn_gates softplus's linear side");
  }
}

// The kernels write every element of poisoned outputs, and leave undefined ones alone.
TEST(GdnGates, KernelsWriteEveryOutput) {
  for (DType D : {DType::f64, DType::f32, DType::bf16}) {
    const DType S = D == DType::f64 ? DType::f64 : DType::f32;
    const Problem p = make_problem(2, 9, 3, D, D == DType::f64 ? DType::f64 : DType::f32, 40);
    Tensor g = poisoned({2, 9, 3}, S), beta = poisoned({2, 9, 3}, S);
    kernels::gdn_gates_fwd(p.a, p.b, p.A_log, p.dt_bias, 2.0, g, beta);
    expect_all_finite(g, "g");
    expect_all_finite(beta, "beta");
    kernels::GdnGatesGrads gr;
    gr.da = poisoned({2, 9, 3}, D);
    gr.db = poisoned({2, 9, 3}, D);
    gr.dA_log = poisoned({3}, p.A_log.dtype());
    gr.ddt_bias = poisoned({3}, p.A_log.dtype());
    kernels::gdn_gates_bwd(p.a, p.b, p.A_log, p.dt_bias, 2.0, p.dg, p.dbeta, gr);
    for (const Tensor* t : {&gr.da, &gr.db, &gr.dA_log, &gr.ddt_bias}) expect_all_finite(*t, dtype_name(D).data());
    // Only ddt_bias (and only db from dbeta).
    kernels::GdnGatesGrads some;
    some.ddt_bias = poisoned({3}, p.A_log.dtype());
    kernels::gdn_gates_bwd(p.a, p.b, p.A_log, p.dt_bias, 1.0, p.dg, Tensor(), some);
    expect_bits(some.ddt_bias, gr.ddt_bias, "ddt_bias alone");
  }
}

TEST(GdnGates, RejectsBadArguments) {
  const Problem p = make_problem(2, 3, 4, DType::f32, DType::f32, 7);
  const Tensor g = Tensor::empty({2, 3, 4}, DType::f32), beta = Tensor::empty({2, 3, 4}, DType::f32);
  auto expect_error = [](const std::function<void()>& f, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "accepted; expected an error containing \"" << needle << "\"";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("gdn_gates"), std::string::npos) << e.what();
    }
  };
  expect_error([&] { kernels::gdn_gates_fwd(p.a, Tensor::empty({2, 3, 5}, DType::f32), p.A_log, p.dt_bias, 1, g, beta); },
               "b Tensor[2, 3, 5]");
  expect_error([&] { kernels::gdn_gates_fwd(p.a, p.b.to(DType::bf16), p.A_log, p.dt_bias, 1, g, beta); },
               "same shape and dtype");
  expect_error([&] { kernels::gdn_gates_fwd(p.a, p.b, Tensor::empty({5}, DType::f32), p.dt_bias, 1, g, beta); },
               "A_log must be floating [4]");
  expect_error([&] { kernels::gdn_gates_fwd(p.a, p.b, p.A_log, p.dt_bias.to(DType::bf16), 1, g, beta); },
               "dt_bias must be [4] in A_log's dtype f32");
  expect_error([&] { kernels::gdn_gates_fwd(p.a, p.b, p.A_log, p.dt_bias, 1, g.to(DType::bf16), beta); },
               "g must be [2, 3, 4] f32");
  expect_error([&] { kernels::gdn_gates_fwd(p.a, p.b, p.A_log, p.dt_bias, 0.0, g, beta); },
               "beta_scale must be positive");
  expect_error([&] { kernels::gdn_gates_fwd(p.a, p.b, p.A_log, p.dt_bias, std::nan(""), g, beta); },
               "beta_scale must be positive");
  expect_error([&] { kernels::gdn_gates_fwd(p.a.to(DType::i32), p.b, p.A_log, p.dt_bias, 1, g, beta); },
               "a must be floating");
  kernels::GdnGatesGrads gr;
  gr.da = Tensor::empty({2, 3, 4}, DType::f32);
  expect_error([&] { kernels::gdn_gates_bwd(p.a, p.b, p.A_log, p.dt_bias, 1, Tensor(), p.dbeta, gr); }, "need dg");
  gr.da = Tensor::empty({2, 3, 4}, DType::bf16);
  expect_error([&] { kernels::gdn_gates_bwd(p.a, p.b, p.A_log, p.dt_bias, 1, p.dg, p.dbeta, gr); }, "da ");
  gr.da = Tensor();
  gr.dA_log = Tensor::empty({3}, DType::f32);
  expect_error([&] { kernels::gdn_gates_bwd(p.a, p.b, p.A_log, p.dt_bias, 1, p.dg, p.dbeta, gr); },
               "parameter gradients must be floating [4]");
  // The op: a and b of different dtypes.
  expect_error([&] { gdn_gates(p.a, p.b.to(DType::f64), p.A_log, p.dt_bias, 1.0); }, "same shape and dtype");
}

// ---- CUDA ----

namespace {
// The largest over heads of the sum of |term| behind dA_log and ddt_bias (f64, from the problem's values).
struct SumScales {
  double dA_log = 0, ddt_bias = 0;
};
SumScales sum_scales(const Problem& p) {
  const auto a = f64(p.a).to_vector<double>(), dg = f64(p.dg).to_vector<double>();
  const auto A_log = f64(p.A_log).to_vector<double>(), dt = f64(p.dt_bias).to_vector<double>();
  const size_t H = A_log.size();
  std::vector<double> sA(H, 0.0), sdt(H, 0.0);
  for (size_t i = 0; i < a.size(); ++i) {
    const size_t h = i % H;
    const double u = a[i] + dt[h], A = std::exp(A_log[h]);
    const double sp = u > 20 ? u : std::log1p(std::exp(u)), dsp = u > 20 ? 1.0 : 1.0 / (1.0 + std::exp(-u));
    sA[h] += std::abs(dg[i] * sp) * A;
    sdt[h] += std::abs(dg[i] * A * dsp);
  }
  SumScales s;
  for (size_t h = 0; h < H; ++h) s.dA_log = std::max(s.dA_log, sA[h]), s.ddt_bias = std::max(s.ddt_bias, sdt[h]);
  return s;
}

Problem to_device(const Problem& p, Device dev) {
  Problem q{p.a.detach().to(dev), p.b.detach().to(dev), p.A_log.detach().to(dev), p.dt_bias.detach().to(dev),
            p.dg.to(dev), p.dbeta.to(dev)};
  for (Tensor* t : {&q.a, &q.b, &q.A_log, &q.dt_bias}) t->set_requires_grad(true);
  return q;
}
}  // namespace

// On the GPU: the fused op against the GPU's composed ops, to the bit (f32 and bf16 data; f32 and bf16 parameters,
// the latter a bf16 model's compute copy with f32 gradient views), with and without preset .grad; and against the
// CPU reference within f32 tolerance (the GPU's expf / log1pf are not the CPU's libm).
TEST(GdnGatesCuda, TheComposedOpsBitsOnTheGpu) {
  NATSL_REQUIRE_GPU();
  const Dtypes dtypes[] = {{DType::f32, DType::f32}, {DType::bf16, DType::f32}, {DType::bf16, DType::bf16}};
  const Size sizes[] = {{2, 37, 5}, {1, 1, 1}, {3, 4, 16}, {2, 130, 7}, {8, 2048, 16}, {1, 4099, 3}};
  uint64_t seed = 5000;
  for (const Dtypes& d : dtypes)
    for (const Size& s : sizes)
      for (double c : {1.0, 2.0}) {
        const Problem host_p = make_problem(s.B, s.T, s.H, d.data, d.param, seed += 10);
        const Problem p = to_device(host_p, gpu());
        for (Reach reach : {Reach::Both, Reach::GOnly, Reach::BetaOnly}) {
          const char* which = reach == Reach::Both ? "" : reach == Reach::GOnly ? ", g only" : ", beta only";
          const std::string what = case_of(d, s, c, which);
          const GatesRun fused = run_gates(p, c, true, reach);
          expect_same_run(fused, run_gates(p, c, false, reach), "GPU " + what);
          if (reach != Reach::Both) continue;
          // Against the CPU reference on the same (rounded) inputs.
          const GatesRun cpu = run_gates(host_p, c, true, reach);
          expect_match(fused.g, f64(cpu.g), kF32, "g " + what);
          expect_match(fused.beta, f64(cpu.beta), kF32, "beta " + what);
          // Sums over B T rows in f32 (the CPU's in f64): measured against the sum of the terms' magnitudes.
          const SumScales sc = sum_scales(host_p);
          expect_match(fused.dA_log, f64(cpu.dA_log), tol_for(d.param), "dA_log " + what, sc.dA_log);
          expect_match(fused.ddt_bias, f64(cpu.ddt_bias), tol_for(d.param), "ddt_bias " + what, sc.ddt_bias);
          expect_match(fused.da, f64(cpu.da), tol_for(d.data), "da " + what);
          expect_match(fused.db, f64(cpu.db), tol_for(d.data), "db " + what);
        }
        const Tensor pA = preset_grad(p.A_log, seed + 1), pdt = preset_grad(p.dt_bias, seed + 2);
        expect_same_run(run_gates(p, c, true, Reach::Both, pA, pdt), run_gates(p, c, false, Reach::Both, pA, pdt),
                        "GPU " + case_of(d, s, c, ", preset .grad"));
      }
}

// The GPU kernels write every element of poisoned outputs.
TEST(GdnGatesCuda, KernelsWriteEveryOutput) {
  NATSL_REQUIRE_GPU();
  for (DType D : {DType::f32, DType::bf16}) {
    const Problem p = to_device(make_problem(3, 41, 5, D, DType::f32, 77), gpu());
    Tensor g = gpu_poisoned({3, 41, 5}, DType::f32), beta = gpu_poisoned({3, 41, 5}, DType::f32);
    kernels::gdn_gates_fwd(p.a, p.b, p.A_log, p.dt_bias, 2.0, g, beta);
    kernels::GdnGatesGrads gr;
    gr.da = gpu_poisoned({3, 41, 5}, D);
    gr.db = gpu_poisoned({3, 41, 5}, D);
    gr.dA_log = gpu_poisoned({5}, DType::f32);
    gr.ddt_bias = gpu_poisoned({5}, DType::f32);
    kernels::gdn_gates_bwd(p.a, p.b, p.A_log, p.dt_bias, 2.0, p.dg, p.dbeta, gr);
    for (const Tensor* t : {&g, &beta, &gr.da, &gr.db, &gr.dA_log, &gr.ddt_bias})
      expect_all_finite(t->to(kCPU), dtype_name(D).data());
  }
}
