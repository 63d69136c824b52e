// The mix_norm_gate family (kernels/mix_norm_gate.h, kernels/cpu/mix_norm_gate.cpp,
// kernels/cuda/mix_norm_gate.cu): the CPU kernel against the oracle, then the CUDA kernel against the CPU
// reference (NatslCuda, skipped without a GPU).
//
// Output mixing (kernels/mix_norm_gate.h): forward against the f64 oracle, backward against finite
// differences of <y, dy>, low precision against f64. Likewise GDN's gated output norm (norm_gate).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/mix_norm_gate_plan.h"
#include "kernels/elementwise.h"
#include "kernels/mix_norm_gate.h"
#include "kernels/router.h"
#include "tests/kernels/oracle.h"
#include "tests/test_util.h"
#include "tests/kernels/router_mix_test_util.h"

using namespace natsl;
using namespace natsl::kernels;
using namespace natsl::testing;
using namespace natsl::testing::router_mix;  // the CPU-against-GPU cases' inputs and checks

namespace {

constexpr double kEps = 1e-6;

struct Inputs {
  Tensor og, oa, wlogits, z, gamma_g, gamma_a, dy;
};
Inputs make_inputs(const Shape& rows, int64_t D, uint64_t seed) {
  Shape s = rows, w = rows;
  s.push_back(D);
  w.push_back(2);
  return {randn(s, seed), randn(s, seed + 1, DType::f64, 3.0), randn(w, seed + 2), randn(s, seed + 3),
          natsl::testing::rand_uniform({D}, seed + 4, 0.5, 1.5), natsl::testing::rand_uniform({D}, seed + 5, 0.5, 1.5),
          randn(s, seed + 6)};
}

Inputs cast(const Inputs& in, DType dt) {
  return {in.og.to(dt), in.oa.to(dt), in.wlogits.to(dt), in.z.to(dt), in.gamma_g.to(dt), in.gamma_a.to(dt),
          in.dy.to(dt)};
}

struct Out {
  Tensor y, rstd_g, rstd_a;
};
Out forward(const Inputs& in) {
  const DType st = in.og.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Shape rows(in.og.shape().begin(), in.og.shape().end() - 1);
  Out o{Tensor::empty(in.og.shape(), in.og.dtype()), Tensor::empty(rows, st), Tensor::empty(rows, st)};
  poison(o.y);
  poison(o.rstd_g);
  poison(o.rstd_a);
  mix_norm_gate_fwd(in.og, in.oa, in.wlogits, in.z, in.gamma_g, in.gamma_a, kEps, o.y, o.rstd_g, o.rstd_a);
  return o;
}

struct Grads {
  Tensor dog, doa, dwlogits, dz, dgamma_g, dgamma_a;
};
Grads backward(const Inputs& in, const Out& o) {
  auto e = [](const Tensor& like) {
    Tensor t = Tensor::empty(like.shape(), like.dtype());
    poison(t);
    return t;
  };
  Grads g{e(in.og), e(in.oa), e(in.wlogits), e(in.z), e(in.gamma_g), e(in.gamma_a)};
  mix_norm_gate_bwd(in.og, in.oa, in.wlogits, in.z, in.gamma_g, in.gamma_a, o.rstd_g, o.rstd_a, in.dy, g.dog, g.doa,
                    g.dwlogits, g.dz, g.dgamma_g, g.dgamma_a);
  return g;
}

}  // namespace

TEST(MixNormGate, ForwardMatchesOracle) {
  const Inputs in = make_inputs({2, 7, 3}, 5, 1);
  const Out o = forward(in);
  EXPECT_CLOSE(o.y, oracle::mix_fwd(in.og, in.oa, in.wlogits, in.z, in.gamma_g, in.gamma_a, kEps), 1e-14, 1e-13);
  // rstd of the first row, directly.
  double s = 0;
  for (int64_t e = 0; e < 5; ++e) s += oracle::cptr(in.og)[e] * oracle::cptr(in.og)[e];
  EXPECT_NEAR(oracle::cptr(o.rstd_g)[0], 1 / std::sqrt(s / 5 + kEps), 1e-14);
}

TEST(MixNormGate, BackwardMatchesFiniteDifferences) {
  for (int64_t D : {5, 2}) {
    const Inputs in = make_inputs({3, 2}, D, 10 + uint64_t(D));
    const Grads g = backward(in, forward(in));
    auto loss = [&] {
      return oracle::inner(oracle::mix_fwd(in.og, in.oa, in.wlogits, in.z, in.gamma_g, in.gamma_a, kEps), in.dy);
    };
    EXPECT_CLOSE(g.dog, oracle::finite_difference(loss, in.og), 1e-7, 1e-7);
    EXPECT_CLOSE(g.doa, oracle::finite_difference(loss, in.oa), 1e-7, 1e-7);
    EXPECT_CLOSE(g.dwlogits, oracle::finite_difference(loss, in.wlogits), 1e-7, 1e-7);
    EXPECT_CLOSE(g.dz, oracle::finite_difference(loss, in.z), 1e-7, 1e-7);
    EXPECT_CLOSE(g.dgamma_g, oracle::finite_difference(loss, in.gamma_g), 1e-7, 1e-7);
    EXPECT_CLOSE(g.dgamma_a, oracle::finite_difference(loss, in.gamma_a), 1e-7, 1e-7);
  }
}

TEST(MixNormGate, LowPrecisionCloseToF64) {
  const Inputs in = make_inputs({4, 6}, 16, 20);
  const Out ref = forward(in);
  const Grads gref = backward(in, ref);
  for (DType dt : {DType::f32, DType::bf16}) {
    const Inputs low = cast(in, dt);
    const Out o = forward(low);
    const Grads g = backward(low, o);
    const double tol = dt == DType::f32 ? 1e-5 : 2e-2;
    EXPECT_CLOSE(o.y.to(DType::f64), ref.y, tol, 10 * tol);
    EXPECT_CLOSE(g.dog.to(DType::f64), gref.dog, 2 * tol, 20 * tol);
    EXPECT_CLOSE(g.doa.to(DType::f64), gref.doa, 2 * tol, 20 * tol);
    EXPECT_CLOSE(g.dwlogits.to(DType::f64), gref.dwlogits, 2 * tol, 20 * tol);
    EXPECT_CLOSE(g.dz.to(DType::f64), gref.dz, 2 * tol, 20 * tol);
    EXPECT_CLOSE(g.dgamma_g.to(DType::f64), gref.dgamma_g, 2 * tol, 100 * tol);
  }
}

TEST(MixNormGate, RejectsMismatchedShapes) {
  const Inputs in = make_inputs({2, 3}, 4, 30);
  Out o = forward(in);
  EXPECT_THROW(mix_norm_gate_fwd(in.og, in.oa, randn({2, 3, 3}, 1), in.z, in.gamma_g, in.gamma_a, kEps, o.y,
                                 o.rstd_g, o.rstd_a),
               Error);
  EXPECT_THROW(mix_norm_gate_fwd(in.og, in.oa, in.wlogits, in.z, randn({5}, 2), in.gamma_a, kEps, o.y, o.rstd_g,
                                 o.rstd_a),
               Error);
}

// ---- norm_gate: GDN's gated output norm ----
namespace {
struct NgIn {
  Tensor o, z, gamma, dy;
};
NgIn ng_inputs(const Shape& rows, int64_t D, uint64_t seed) {
  Shape s = rows;
  s.push_back(D);
  return {randn(s, seed, DType::f64, 2.0), randn(s, seed + 1), natsl::testing::rand_uniform({D}, seed + 2, 0.5, 1.5),
          randn(s, seed + 3)};
}
NgIn ng_cast(const NgIn& in, DType dt) { return {in.o.to(dt), in.z.to(dt), in.gamma.to(dt), in.dy.to(dt)}; }
struct NgOut {
  Tensor y, rstd, dO, dz, dgamma;
};
NgOut ng_run(const NgIn& in) {
  const DType dt = in.o.dtype(), st = dt == DType::f64 ? DType::f64 : DType::f32;
  Shape rows(in.o.shape().begin(), in.o.shape().end() - 1);
  auto P = [](const Shape& sh, DType d) {
    Tensor t = Tensor::empty(sh, d);
    poison(t);
    return t;
  };
  NgOut r{P(in.o.shape(), dt), P(rows, st), P(in.o.shape(), dt), P(in.o.shape(), dt), P(in.gamma.shape(), dt)};
  norm_gate_fwd(in.o, in.z, in.gamma, kEps, r.y, r.rstd);
  norm_gate_bwd(in.o, in.z, in.gamma, r.rstd, in.dy, r.dO, r.dz, r.dgamma);
  return r;
}
}  // namespace

TEST(NormGate, ForwardMatchesOracle) {
  const NgIn in = ng_inputs({2, 7, 3}, 5, 40);
  const NgOut r = ng_run(in);
  EXPECT_CLOSE(r.y, oracle::norm_gate_fwd(in.o, in.z, in.gamma, kEps), 1e-14, 1e-13);
  double s = 0;
  for (int64_t e = 0; e < 5; ++e) s += oracle::cptr(in.o)[e] * oracle::cptr(in.o)[e];
  EXPECT_NEAR(oracle::cptr(r.rstd)[0], 1 / std::sqrt(s / 5 + kEps), 1e-14);
}

TEST(NormGate, BackwardMatchesFiniteDifferences) {
  // (D = 1: do is ~eps / o^2 of dy, below the differences' noise: OneChannelRowsMatchTheClosedForm.)
  for (int64_t D : {5, 2, 3}) {
    SCOPED_TRACE(D);
    const NgIn in = ng_inputs({3, 2}, D, 50 + uint64_t(D));
    const NgOut r = ng_run(in);
    auto loss = [&] { return oracle::inner(oracle::norm_gate_fwd(in.o, in.z, in.gamma, kEps), in.dy); };
    EXPECT_CLOSE(r.dO, oracle::finite_difference(loss, in.o), 1e-7, 1e-7);
    EXPECT_CLOSE(r.dz, oracle::finite_difference(loss, in.z), 1e-7, 1e-7);
    EXPECT_CLOSE(r.dgamma, oracle::finite_difference(loss, in.gamma), 1e-7, 1e-7);
  }
}

// One channel per row: n = o / sqrt(o^2 + eps) and do = dy silu(z) gamma eps / (o^2 + eps)^1.5, the difference of
// two nearly equal terms in the kernel's formula (checked in f64, where the cancellation costs ~1e-10).
TEST(NormGate, OneChannelRowsMatchTheClosedForm) {
  const NgIn in = ng_inputs({7}, 1, 80);
  const NgOut r = ng_run(in);
  for (int64_t i = 0; i < 7; ++i) {
    const double o = oracle::cptr(in.o)[i], z = oracle::cptr(in.z)[i], g = oracle::cptr(in.gamma)[0];
    const double dy = oracle::cptr(in.dy)[i], silu = z / (1 + std::exp(-z));
    const double expect = dy * silu * g * kEps / std::pow(o * o + kEps, 1.5);
    EXPECT_NEAR(oracle::cptr(r.dO)[i], expect, 1e-9 * std::fabs(dy * silu * g) + 1e-300) << i;
  }
}

TEST(NormGate, LowPrecisionCloseToF64) {
  const NgIn in = ng_inputs({4, 6}, 16, 60);
  const NgOut ref = ng_run(in);
  for (DType dt : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(name(dt));
    const NgOut r = ng_run(ng_cast(in, dt));
    const double tol = dt == DType::f32 ? 1e-5 : 2e-2;
    EXPECT_CLOSE(r.y.to(DType::f64), ref.y, tol, 10 * tol);
    EXPECT_CLOSE(r.dO.to(DType::f64), ref.dO, 2 * tol, 20 * tol);
    EXPECT_CLOSE(r.dz.to(DType::f64), ref.dz, 2 * tol, 20 * tol);
    EXPECT_CLOSE(r.dgamma.to(DType::f64), ref.dgamma, 2 * tol, 100 * tol);
  }
}

TEST(NormGate, RejectsMismatchedShapesAndDtypes) {
  const NgIn in = ng_inputs({2, 3}, 4, 70);
  Tensor y = Tensor::empty({2, 3, 4}, DType::f64), rstd = Tensor::empty({2, 3}, DType::f64);
  EXPECT_THROW(norm_gate_fwd(in.o, randn({2, 3, 5}, 1), in.gamma, kEps, y, rstd), Error);
  EXPECT_THROW(norm_gate_fwd(in.o, in.z, randn({5}, 2), kEps, y, rstd), Error);
  EXPECT_THROW(norm_gate_fwd(in.o, in.z, in.gamma, kEps, y, Tensor::empty({2, 3}, DType::f32)), Error);
  EXPECT_THROW(norm_gate_fwd(in.o, in.z.to(DType::f32), in.gamma, kEps, y, rstd), Error);
  norm_gate_fwd(in.o, in.z, in.gamma, kEps, y, rstd);
  Tensor dO = Tensor::empty({2, 3, 4}, DType::f64), dz = Tensor::empty({2, 3, 4}, DType::f64);
  EXPECT_THROW(norm_gate_bwd(in.o, in.z, in.gamma, rstd, randn({2, 3}, 3), dO, dz, Tensor()), Error);
  EXPECT_THROW(norm_gate_bwd(in.o, in.z, in.gamma, rstd, in.dy, dO, dz, Tensor::empty({5}, DType::f64)), Error);
  EXPECT_THROW(norm_gate_bwd(in.o, in.z, in.gamma, rstd, in.dy, dO.to(DType::f32), dz, Tensor()), Error);
}

// ---- the gammas' accumulate mode (accumulate_dgamma: autograd's weight-gradient sink) ----
namespace {

// The bits of `plain` added into a copy of `prior` by the elementwise add (AccumulateGrad's add into a .grad).
Tensor plus(const Tensor& prior, const Tensor& plain) {
  Tensor out = prior.clone();
  binary_fwd(BinaryOp::Add, out, plain, out);
  return out;
}

void expect_bits(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  ASSERT_EQ(got.nbytes(), want.nbytes()) << what;
  const Tensor a = got.to(kCPU), b = want.to(kCPU);
  EXPECT_EQ(0, std::memcmp(a.data_ptr(), b.data_ptr(), size_t(a.nbytes()))) << what << ": bits differ";
}

// bwd(dgammas, accumulate) runs a backward writing its norm weights' gradients into `dgammas` (each [D]). Into the
// data's dtype, and for bf16 data into f32 too: with accumulate, each holds the bits of the plain gradient added into
// its prior values; the f32 gradient of bf16 data rounds to the bf16 one (the sums themselves, no bf16 rounding);
// every other output keeps its bits (`others`: the backward's other outputs, compared between the two runs).
void expect_dgamma_accumulates(int n_gammas, int64_t D, DType dt, Device dev,
                               const std::function<std::vector<Tensor>(const std::vector<Tensor>&, bool)>& bwd,
                               uint64_t seed, const std::string& what) {
  const std::vector<DType> grad_dtypes = dt == DType::bf16 ? std::vector<DType>{dt, DType::f32} : std::vector<DType>{dt};
  for (DType gdt : grad_dtypes) {
    const std::string wg = what + " dgamma into " + std::string(dtype_name(gdt));
    std::vector<Tensor> plain, prior, acc;
    for (int k = 0; k < n_gammas; ++k) {
      Tensor t = Tensor::empty({D}, gdt, dev);
      poison(t);
      plain.push_back(t);
      prior.push_back(randn({D}, seed++, DType::f64, 0.5).to(gdt).to(dev));
      acc.push_back(prior.back().clone());
    }
    const std::vector<Tensor> others_plain = bwd(plain, false), others_acc = bwd(acc, true);
    for (int k = 0; k < n_gammas; ++k)
      expect_bits(acc[size_t(k)], plus(prior[size_t(k)], plain[size_t(k)]), wg + " " + std::to_string(k));
    ASSERT_EQ(others_plain.size(), others_acc.size());
    for (size_t i = 0; i < others_plain.size(); ++i)
      expect_bits(others_acc[i], others_plain[i], wg + " other output " + std::to_string(i));
    if (dt == DType::bf16 && gdt == DType::f32) {
      std::vector<Tensor> rounded;
      for (int k = 0; k < n_gammas; ++k) {
        Tensor t = Tensor::empty({D}, DType::bf16, dev);
        poison(t);
        rounded.push_back(t);
      }
      bwd(rounded, false);
      for (int k = 0; k < n_gammas; ++k)
        expect_bits(plain[size_t(k)].to(DType::bf16), rounded[size_t(k)],
                    wg + " " + std::to_string(k) + " (rounded to bf16)");
    }
  }
}

}  // namespace

// accumulate_dgamma (the gammas' .grad sink) = the plain dgamma followed by a separate add, bit for bit, in f64, f32,
// bf16 into bf16 and bf16 into f32; the mixing with both gammas and with dgamma_a alone; rows of 5 and 24 channels
// and no rows at all (a zero gradient: the prior values unchanged).
TEST(MixNormGate, AccumulatedDgammaGivesTheBitsOfASeparateAdd) {
  uint64_t seed = 90;
  for (DType dt : {DType::f64, DType::f32, DType::bf16})
    for (const Shape& rows : {Shape{3, 7, 2}, Shape{0, 2}})
      for (int64_t D : {5, 24})
        for (int grads : {2, 1}) {
          const Inputs in = cast(make_inputs(rows, D, seed++), dt);
          const Out o = forward(in);
          auto bwd = [&](const std::vector<Tensor>& dg, bool acc) {
            Grads g = backward(in, o);  // poisoned outputs, overwritten
            mix_norm_gate_bwd(in.og, in.oa, in.wlogits, in.z, in.gamma_g, in.gamma_a, o.rstd_g, o.rstd_a, in.dy, g.dog,
                              g.doa, g.dwlogits, g.dz, grads == 2 ? dg[0] : Tensor(), dg.back(), acc);
            return std::vector<Tensor>{g.dog, g.doa, g.dwlogits, g.dz};
          };
          Shape s = rows;
          s.push_back(D);
          expect_dgamma_accumulates(grads, D, dt, kCPU, bwd, seed++,
                                    "mix " + std::string(dtype_name(dt)) + " " + shape_str(s) + " " +
                                        std::to_string(grads) + " dgammas");
        }
}

TEST(NormGate, AccumulatedDgammaGivesTheBitsOfASeparateAdd) {
  uint64_t seed = 95;
  for (DType dt : {DType::f64, DType::f32, DType::bf16})
    for (const Shape& rows : {Shape{3, 7, 2}, Shape{0, 2}})
      for (int64_t D : {5, 24}) {
        const NgIn in = ng_cast(ng_inputs(rows, D, seed++), dt);
        const NgOut r = ng_run(in);
        auto bwd = [&](const std::vector<Tensor>& dg, bool acc) {
          Tensor dO = Tensor::empty(in.o.shape(), dt), dz = Tensor::empty(in.o.shape(), dt);
          poison(dO);
          poison(dz);
          norm_gate_bwd(in.o, in.z, in.gamma, r.rstd, in.dy, dO, dz, dg[0], acc);
          return std::vector<Tensor>{dO, dz};
        };
        Shape s = rows;
        s.push_back(D);
        expect_dgamma_accumulates(1, D, dt, kCPU, bwd, seed++,
                                  "norm_gate " + std::string(dtype_name(dt)) + " " + shape_str(s));
      }
}

TEST(MixNormGate, RejectsADgammaTheKernelCannotWrite) {
  // f32 data: an f64 or bf16 dgamma; f64 data: an f32 one (only bf16 data has a wider dgamma, f32).
  for (auto [dt, gdt] : {std::pair{DType::f32, DType::f64}, std::pair{DType::f32, DType::bf16},
                         std::pair{DType::f64, DType::f32}}) {
    const Inputs in = cast(make_inputs({2, 3}, 4, 97), dt);
    const Out o = forward(in);
    Grads g = backward(in, o);
    EXPECT_THROW(mix_norm_gate_bwd(in.og, in.oa, in.wlogits, in.z, in.gamma_g, in.gamma_a, o.rstd_g, o.rstd_a, in.dy,
                                   g.dog, g.doa, g.dwlogits, g.dz, Tensor::empty({4}, gdt), g.dgamma_a),
                 Error);
    const NgIn ng = ng_cast(ng_inputs({2, 3}, 4, 98), dt);
    const NgOut r = ng_run(ng);
    EXPECT_THROW(norm_gate_bwd(ng.o, ng.z, ng.gamma, r.rstd, ng.dy, r.dO, r.dz, Tensor::empty({4}, gdt), true), Error);
  }
}

// CUDA output mixing (mix_norm_gate) against the CPU reference run in f64 on the same rounded inputs: f32 to
// ~1e-6 relative, bf16 to its rounding (outputs stored in bf16: 1e-2 relative RMS). Awkward shapes (odd widths,
// one token, many rows per slot, rows wider than a block); every GPU output starts as NaN.

TEST(NatslCuda, MixNormGateMatchesCpu) {
  NATSL_REQUIRE_GPU();
  for (DType dt : {DType::f32, DType::bf16})
    for (Shape rows : {Shape{1, 1}, Shape{2, 37, 3}, Shape{2, 100, 12}, Shape{3, 5}, Shape{4, 33}, Shape{20000}})
      for (int64_t D : {2, 5, 8, 24, 64, 128, 136, 248, 256, 1000, 1001, 1029, 2048, 4096}) {
        if (D == 1000 && rows.size() == 3 && rows[1] == 100) continue;  // keep the f64 reference quick
        // The kernels (kernels/cuda/mix_norm_gate_plan.h): 16-byte aligned rows of at most 64 (forward) / 32
        // (backward) vectors take the short-row kernels: 8 lanes a row for bf16's 8, 24 and 64 channels (1, 3, 8
        // vectors) and f32's 8, 24; 16 lanes for bf16's 128 and f32's 64; 32 for bf16's 136, 248, 256 (17, 31, 32
        // vectors) and f32's 128; in the forward also f32's 136, 248, 256 (2 vectors a lane). Row counts that leave
        // the last lane groups, warps and blocks part empty (222, 132, 15 rows; 20000: several passes a group).
        // The rest take the row kernels; the backward's: rows of at most 256 threads' vectors in one pass (wider
        // ones up to 1000, and bf16's 2048); rows of 257-1024 threads' vectors in two passes with the dgamma sums
        // in registers (2048 and 4096 f32, 4096 bf16 vectors of 16 bytes; 1001 unaligned channels, one a thread);
        // 1029 unaligned channels, more than a block's threads a row, with the partial rows in memory. 20000 rows:
        // each slot sums several rows.
        const bool short_width = D == 8 || D == 24 || D == 136 || D == 248;
        if (rows.size() == 1 && D != 64 && D != 128 && D != 248) continue;
        if (short_width && rows.size() == 3 && rows[1] == 100) continue;
        if ((D == 1001 || D == 1029 || D == 2048 || D == 4096) && rows.size() != 2) continue;
        Shape s = rows;
        s.push_back(D);
        Shape ws = rows;
        ws.push_back(2);
        SCOPED_TRACE(std::string(name(dt)) + " " + shape_str(s));
        const uint64_t seed = uint64_t(D) * 100 + uint64_t(rows.back());
        Data og = make(s, seed + 1, dt, 0.7), oa = make(s, seed + 2, dt, 1.3), z = make(s, seed + 3, dt, 1.5);
        Data wl = make(ws, seed + 4, dt), dy = make(s, seed + 5, dt);
        Data gg = make({D}, seed + 6, dt, 0.3, 1.0), ga = make({D}, seed + 7, dt, 0.3, 1.0);
        const double eps = 1e-6;
        const Shape rs = rows;

        // f64 reference
        Tensor y = Tensor::empty(s, DType::f64), rg = Tensor::empty(rs, DType::f64), ra = Tensor::empty(rs, DType::f64);
        mix_norm_gate_fwd(og.f64, oa.f64, wl.f64, z.f64, gg.f64, ga.f64, eps, y, rg, ra);
        auto e64 = [&](const Shape& sh) { return Tensor::empty(sh, DType::f64); };
        Tensor dog = e64(s), doa = e64(s), dwl = e64(ws), dz = e64(s), dgg = e64({D}), dga = e64({D});
        mix_norm_gate_bwd(og.f64, oa.f64, wl.f64, z.f64, gg.f64, ga.f64, rg, ra, dy.f64, dog, doa, dwl, dz, dgg, dga);

        // GPU
        auto G = [&](const Data& d) { return d.low.to(kGpu); };
        Tensor gy = poisoned(s, dt, kGpu), grg = poisoned(rs, DType::f32, kGpu), gra = poisoned(rs, DType::f32, kGpu);
        mix_norm_gate_fwd(G(og), G(oa), G(wl), G(z), G(gg), G(ga), eps, gy, grg, gra);
        const double tol = tol_for(dt);
        expect_close(gy, y, tol, "y");
        expect_close(grg, rg, 1e-6, "rstd_g");  // statistics are f32 from the same rounded inputs
        expect_close(gra, ra, 1e-6, "rstd_a");
        for (bool with_dgamma : {true, false}) {
          SCOPED_TRACE(with_dgamma ? "with dgamma" : "without dgamma");
          auto P = [&](const Shape& sh) { return poisoned(sh, dt, kGpu); };
          Tensor gdog = P(s), gdoa = P(s), gdwl = P(ws), gdz = P(s);
          Tensor gdgg = with_dgamma ? P({D}) : Tensor(), gdga = with_dgamma ? P({D}) : Tensor();
          mix_norm_gate_bwd(G(og), G(oa), G(wl), G(z), G(gg), G(ga), grg, gra, G(dy), gdog, gdoa, gdwl, gdz, gdgg, gdga);
          expect_close(gdog, dog, tol, "dog");
          expect_close(gdoa, doa, tol, "doa");
          expect_close(gdwl, dwl, dt == DType::bf16 ? tol : 1e-5, "dwlogits");
          expect_close(gdz, dz, tol, "dz");
          if (with_dgamma) {
            expect_close(gdgg, dgg, dt == DType::bf16 ? tol : 1e-5, "dgamma_g");
            expect_close(gdga, dga, dt == DType::bf16 ? tol : 1e-5, "dgamma_a");
          }
        }
      }
}

// A row of zeros (eps keeps rstd finite) and huge / tiny gate values stay finite on the GPU as on the CPU.
TEST(NatslCuda, MixNormGateExtremeRows) {
  NATSL_REQUIRE_GPU();
  const int64_t D = 128;
  Tensor og = Tensor::zeros({2, D}, DType::f32), oa = randn({2, D}, 3, DType::f32);
  Tensor z = randn({2, D}, 4, DType::f32, 40.0), wl = randn({2, 2}, 5, DType::f32, 30.0);
  Tensor g1 = Tensor::full({D}, 1.0, DType::f32), dy = randn({2, D}, 6, DType::f32);
  Tensor y = Tensor::empty({2, D}, DType::f32), rg = Tensor::empty({2}, DType::f32), ra = Tensor::empty({2}, DType::f32);
  mix_norm_gate_fwd(og, oa, wl, z, g1, g1, 1e-6, y, rg, ra);
  Tensor gy = poisoned({2, D}, DType::f32, kGpu), grg = poisoned({2}, DType::f32, kGpu),
         gra = poisoned({2}, DType::f32, kGpu);
  mix_norm_gate_fwd(og.to(kGpu), oa.to(kGpu), wl.to(kGpu), z.to(kGpu), g1.to(kGpu), g1.to(kGpu), 1e-6, gy, grg, gra);
  const ErrorStats e = compare(gy.to(kCPU), y);
  EXPECT_TRUE(e.finite);
  EXPECT_LE(e.rel_rms, 1e-5);
  EXPECT_NEAR(grg.to(kCPU).to_vector<double>()[0], 1e3, 1e-2);  // 1 / sqrt(1e-6)
}

// ---- the short-row kernels against the row kernels (kernels/cuda/mix_norm_gate_plan.h) ----
namespace {

using kernels::cuda::MixNormGatePlan;

// The CUDA kernels with a plan (a CPU-only build has none; its GPU tests skip before these are called).
void mix_fwd_with(const MixNormGatePlan& plan, const Tensor& og, const Tensor& oa, const Tensor& wl, const Tensor& z,
                  const Tensor& gg, const Tensor& ga, const Tensor& y, const Tensor& rg, const Tensor& ra) {
#ifdef NATSL_WITH_CUDA
  kernels::cuda::mix_norm_gate_fwd(og, oa, wl, z, gg, ga, kEps, y, rg, ra, plan);
#else
  (void)plan;
  mix_norm_gate_fwd(og, oa, wl, z, gg, ga, kEps, y, rg, ra);
#endif
}
void mix_bwd_with(const MixNormGatePlan& plan, const Tensor& og, const Tensor& oa, const Tensor& wl, const Tensor& z,
                  const Tensor& gg, const Tensor& ga, const Tensor& rg, const Tensor& ra, const Tensor& dy,
                  const Tensor& dog, const Tensor& doa, const Tensor& dwl, const Tensor& dz, const Tensor& dgg,
                  const Tensor& dga, bool accumulate_dgamma = false) {
#ifdef NATSL_WITH_CUDA
  kernels::cuda::mix_norm_gate_bwd(og, oa, wl, z, gg, ga, rg, ra, dy, dog, doa, dwl, dz, dgg, dga, plan,
                                   accumulate_dgamma);
#else
  (void)plan;
  mix_norm_gate_bwd(og, oa, wl, z, gg, ga, rg, ra, dy, dog, doa, dwl, dz, dgg, dga, accumulate_dgamma);
#endif
}
void ng_fwd_with(const MixNormGatePlan& plan, const Tensor& o, const Tensor& z, const Tensor& gg, const Tensor& y,
                 const Tensor& rs) {
#ifdef NATSL_WITH_CUDA
  kernels::cuda::norm_gate_fwd(o, z, gg, kEps, y, rs, plan);
#else
  (void)plan;
  norm_gate_fwd(o, z, gg, kEps, y, rs);
#endif
}
void ng_bwd_with(const MixNormGatePlan& plan, const Tensor& o, const Tensor& z, const Tensor& gg, const Tensor& rs,
                 const Tensor& dy, const Tensor& dO, const Tensor& dz, const Tensor& dgg,
                 bool accumulate_dgamma = false) {
#ifdef NATSL_WITH_CUDA
  kernels::cuda::norm_gate_bwd(o, z, gg, rs, dy, dO, dz, dgg, plan, accumulate_dgamma);
#else
  (void)plan;
  norm_gate_bwd(o, z, gg, rs, dy, dO, dz, dgg, accumulate_dgamma);
#endif
}

// a and b (same shape and dtype, any device) hold the same bytes; else how many elements differ, and the first.
void expect_same_bits_as(const Tensor& a, const Tensor& b, const std::string& what) {
  ASSERT_EQ(a.nbytes(), b.nbytes()) << what;
  const Tensor ha = a.to(kCPU), hb = b.to(kCPU);
  const size_t es = dtype_size(a.dtype());
  const auto* pa = static_cast<const unsigned char*>(ha.data_ptr());
  const auto* pb = static_cast<const unsigned char*>(hb.data_ptr());
  int64_t diff = 0, first = -1;
  for (int64_t i = 0; i < a.numel(); ++i)
    if (std::memcmp(pa + size_t(i) * es, pb + size_t(i) * es, es) != 0 && diff++ == 0) first = i;
  EXPECT_EQ(diff, 0) << what << ": " << diff << " of " << a.numel() << " elements differ, the first at " << first
                     << " (" << ha.to(DType::f64).to_vector<double>()[size_t(first < 0 ? 0 : first)] << " against "
                     << hb.to(DType::f64).to_vector<double>()[size_t(first < 0 ? 0 : first)] << ")";
}

// The widths of the bit-for-bit cases: every short-row layout (8 lanes a row: 1, 3, 8 bf16 vectors; 16 lanes; 32
// lanes of 1 or 2 vectors, the last part empty) and wider rows, where both plans take the row kernels. Row counts:
// 1031 x 7 (not a multiple of a lane group's rows, a warp's or a block's; several passes of every group) and 3 (most
// lane groups of the one block empty).
const int64_t kShortRowWidths[] = {8, 24, 64, 128, 136, 248, 256, 512};
const Shape kShortRowCounts[] = {Shape{1031, 7}, Shape{3}};

}  // namespace

// The mixing's short-row kernels give the row kernels' bits (the same per-element functions, row sums in the same
// order) in every output but dgamma_g / dgamma_a, which add the same f32 terms in another fixed order: within f32
// rounding of the row kernels' (bf16: a bf16 step), and the same bits on a second run. The backward with both
// dgammas, with dgamma_a alone (the kernel's first partial row absent) and with none. Outputs start as NaN.
TEST(NatslCuda, MixNormGateShortRowsGiveTheRowKernelsBits) {
  NATSL_REQUIRE_GPU();
  const MixNormGatePlan short_rows{true}, row_kernels{false};
  for (DType dt : {DType::f32, DType::bf16})
    for (const Shape& rows : kShortRowCounts)
      for (int64_t D : kShortRowWidths) {
        Shape s = rows, ws = rows;
        s.push_back(D);
        ws.push_back(2);
        SCOPED_TRACE(std::string(name(dt)) + " " + shape_str(s));
        const uint64_t seed = uint64_t(D) * 1000 + uint64_t(rows.size()) + 17;
        auto G = [&](uint64_t k, const Shape& sh, double std, double shift = 0.0) {
          return make(sh, seed + k, dt, std, shift).low.to(kGpu);
        };
        const Tensor og = G(1, s, 0.7), oa = G(2, s, 1.3), z = G(3, s, 1.5), wl = G(4, ws, 1.0), dy = G(5, s, 1.0);
        const Tensor gg = G(6, {D}, 0.3, 1.0), ga = G(7, {D}, 0.3, 1.0);

        Tensor y_s = poisoned(s, dt, kGpu), rg_s = poisoned(rows, DType::f32, kGpu),
               ra_s = poisoned(rows, DType::f32, kGpu);
        Tensor y_r = poisoned(s, dt, kGpu), rg_r = poisoned(rows, DType::f32, kGpu),
               ra_r = poisoned(rows, DType::f32, kGpu);
        mix_fwd_with(short_rows, og, oa, wl, z, gg, ga, y_s, rg_s, ra_s);
        mix_fwd_with(row_kernels, og, oa, wl, z, gg, ga, y_r, rg_r, ra_r);
        expect_same_bits_as(y_s, y_r, "y");
        expect_same_bits_as(rg_s, rg_r, "rstd_g");
        expect_same_bits_as(ra_s, ra_r, "rstd_a");

        for (int grads : {2, 1, 0}) {  // how many dgammas: both, dgamma_a alone, none
          SCOPED_TRACE(std::to_string(grads) + " dgammas");
          struct G6 {
            Tensor dog, doa, dwl, dz, dgg, dga;
          };
          auto run = [&](const MixNormGatePlan& plan) {
            G6 g{poisoned(s, dt, kGpu), poisoned(s, dt, kGpu), poisoned(ws, dt, kGpu), poisoned(s, dt, kGpu),
                 grads == 2 ? poisoned({D}, dt, kGpu) : Tensor(), grads >= 1 ? poisoned({D}, dt, kGpu) : Tensor()};
            mix_bwd_with(plan, og, oa, wl, z, gg, ga, rg_r, ra_r, dy, g.dog, g.doa, g.dwl, g.dz, g.dgg, g.dga);
            return g;
          };
          const G6 gs = run(short_rows), gr = run(row_kernels), gs2 = run(short_rows);
          expect_same_bits_as(gs.dog, gr.dog, "dog");
          expect_same_bits_as(gs.doa, gr.doa, "doa");
          expect_same_bits_as(gs.dwl, gr.dwl, "dwlogits");
          expect_same_bits_as(gs.dz, gr.dz, "dz");
          const double tol = dt == DType::bf16 ? 1e-2 : 1e-5;
          if (grads == 2) {
            expect_close(gs.dgg, gr.dgg.to(kCPU).to(DType::f64), tol, "dgamma_g against the row kernels'");
            expect_same_bits_as(gs.dgg, gs2.dgg, "dgamma_g on a second run");
          }
          if (grads >= 1) {
            expect_close(gs.dga, gr.dga.to(kCPU).to(DType::f64), tol, "dgamma_a against the row kernels'");
            expect_same_bits_as(gs.dga, gs2.dga, "dgamma_a on a second run");
          }
        }
      }
}

// The gated output norm's short-row kernels against its row kernels, as the mixing's above (y, rstd, do, dz the same
// bits; dgamma within f32 rounding, the same bits on a second run; with and without dgamma). Also 1024 channels:
// bf16's 128 vectors, past both short-row widths.
TEST(NatslCuda, NormGateShortRowsGiveTheRowKernelsBits) {
  NATSL_REQUIRE_GPU();
  const MixNormGatePlan short_rows{true}, row_kernels{false};
  for (DType dt : {DType::f32, DType::bf16})
    for (const Shape& rows : kShortRowCounts)
      for (int64_t D : {8, 24, 64, 128, 136, 248, 256, 512, 1024}) {
        Shape s = rows;
        s.push_back(D);
        SCOPED_TRACE(std::string(name(dt)) + " " + shape_str(s));
        const uint64_t seed = uint64_t(D) * 1000 + uint64_t(rows.size()) + 29;
        const Tensor o = make(s, seed + 1, dt, 1.3).low.to(kGpu), z = make(s, seed + 2, dt, 1.5).low.to(kGpu);
        const Tensor dy = make(s, seed + 3, dt).low.to(kGpu), gg = make({D}, seed + 4, dt, 0.3, 1.0).low.to(kGpu);
        Tensor y_s = poisoned(s, dt, kGpu), rs_s = poisoned(rows, DType::f32, kGpu);
        Tensor y_r = poisoned(s, dt, kGpu), rs_r = poisoned(rows, DType::f32, kGpu);
        ng_fwd_with(short_rows, o, z, gg, y_s, rs_s);
        ng_fwd_with(row_kernels, o, z, gg, y_r, rs_r);
        expect_same_bits_as(y_s, y_r, "y");
        expect_same_bits_as(rs_s, rs_r, "rstd");
        for (bool with_dgamma : {true, false}) {
          SCOPED_TRACE(with_dgamma ? "with dgamma" : "without dgamma");
          struct G3 {
            Tensor dO, dz, dgg;
          };
          auto run = [&](const MixNormGatePlan& plan) {
            G3 g{poisoned(s, dt, kGpu), poisoned(s, dt, kGpu), with_dgamma ? poisoned({D}, dt, kGpu) : Tensor()};
            ng_bwd_with(plan, o, z, gg, rs_r, dy, g.dO, g.dz, g.dgg);
            return g;
          };
          const G3 gs = run(short_rows), gr = run(row_kernels), gs2 = run(short_rows);
          expect_same_bits_as(gs.dO, gr.dO, "do");
          expect_same_bits_as(gs.dz, gr.dz, "dz");
          if (with_dgamma) {
            expect_close(gs.dgg, gr.dgg.to(kCPU).to(DType::f64), dt == DType::bf16 ? 1e-2 : 1e-5,
                         "dgamma against the row kernels'");
            expect_same_bits_as(gs.dgg, gs2.dgg, "dgamma on a second run");
          }
        }
      }
}

// CUDA gated output norm (norm_gate) against the CPU reference in f64 on the same rounded inputs: the short-row
// kernels (16-byte aligned rows of 8 .. 256 channels here, 8 to 32 lanes a row; the forward also f32's 136 .. 256
// and bf16's 512 channels: 2 vectors a lane), with row counts that leave the last lane groups, warps and blocks part empty (444, 132, 15
// rows; 20000 rows: several passes of every lane group); the row kernels for the rest: rows that fit a block (the
// dgamma sums in registers; 20000 rows so that each slot sums several) and rows that do not (1029 channels
// unaligned: one element a thread, more than 1024 a row, the partial-row path), with and without dgamma; every GPU
// output starts as NaN. (One channel per row is not compared: do is the difference of two terms equal to ~1e-6
// relative, noise in f32; NormGate.OneChannelRowsMatchTheClosedForm checks it in f64.)
TEST(NatslCuda, NormGateMatchesCpu) {
  NATSL_REQUIRE_GPU();
  for (DType dt : {DType::f32, DType::bf16})
    for (Shape rows : {Shape{1, 1}, Shape{2, 37, 6}, Shape{3, 5}, Shape{4, 33}, Shape{20000}})
      for (int64_t D : {2, 5, 8, 24, 64, 128, 136, 248, 256, 512, 1029}) {
        if (rows.size() == 1 && D != 64 && D != 248 && D != 256) continue;  // the many-rows case at three widths
        if (D == 512 && rows.size() != 2) continue;
        Shape s = rows;
        s.push_back(D);
        SCOPED_TRACE(std::string(name(dt)) + " " + shape_str(s));
        const uint64_t seed = uint64_t(D) * 100 + uint64_t(rows.back()) + 7;
        Data o = make(s, seed + 1, dt, 1.3), z = make(s, seed + 2, dt, 1.5), dy = make(s, seed + 3, dt);
        Data gg = make({D}, seed + 4, dt, 0.3, 1.0);
        const double eps = 1e-6;
        Tensor y = Tensor::empty(s, DType::f64), rs = Tensor::empty(rows, DType::f64);
        norm_gate_fwd(o.f64, z.f64, gg.f64, eps, y, rs);
        Tensor dO = Tensor::empty(s, DType::f64), dz = Tensor::empty(s, DType::f64), dgg = Tensor::empty({D}, DType::f64);
        norm_gate_bwd(o.f64, z.f64, gg.f64, rs, dy.f64, dO, dz, dgg);

        auto G = [&](const Data& d) { return d.low.to(kGpu); };
        Tensor gy = poisoned(s, dt, kGpu), grs = poisoned(rows, DType::f32, kGpu);
        norm_gate_fwd(G(o), G(z), G(gg), eps, gy, grs);
        const double tol = tol_for(dt);
        expect_close(gy, y, tol, "y");
        expect_close(grs, rs, 1e-6, "rstd");
        for (bool with_dgamma : {true, false}) {
          SCOPED_TRACE(with_dgamma ? "with dgamma" : "without dgamma");
          Tensor gdo = poisoned(s, dt, kGpu), gdz = poisoned(s, dt, kGpu);
          Tensor gdgg = with_dgamma ? poisoned({D}, dt, kGpu) : Tensor();
          norm_gate_bwd(G(o), G(z), G(gg), grs, G(dy), gdo, gdz, gdgg);
          expect_close(gdo, dO, tol, "do");
          expect_close(gdz, dz, tol, "dz");
          if (with_dgamma) expect_close(gdgg, dgg, dt == DType::bf16 ? tol : 1e-5, "dgamma");
        }
      }
}

// The gammas' accumulate mode on the GPU (accumulate_dgamma, the .grad sink) on every kernel path, with the default
// plan and with MixNormGatePlan{false} (the row kernels only): into dgamma of the data's dtype and, for bf16 data,
// into f32, the accumulated dgamma has the bits of the plain one followed by a separate add (column_sum's accumulate
// mode), the f32 dgamma of bf16 data rounds to the bf16 one, every other output keeps its bits, and the f32 dgamma
// (the f32 sums) is within f32 rounding of the CPU reference in f64. Widths (the kernels as in MixNormGateMatchesCpu's
// comment): 24 and 256 (short rows: bf16 3 and 32 vectors, f32 6; f32's 256 the one-pass row kernel), 1000 (one-pass
// row kernel), 1001 (unaligned, two passes with the sums in registers), 4096 (two passes, registers), 1029 (the
// partial rows in memory); 222 rows, 20000 rows (several rows a slot) at 128 channels, and no rows (the sink
// unchanged). The mixing with both dgammas and with dgamma_a alone.
TEST(NatslCuda, MixNormGateAccumulatesDgamma) {
  NATSL_REQUIRE_GPU();
  for (const MixNormGatePlan& plan : {MixNormGatePlan{true}, MixNormGatePlan{false}})
    for (DType dt : {DType::f32, DType::bf16})
      for (const Shape& rows : {Shape{2, 37, 3}, Shape{20000}, Shape{0, 3}})
        for (int64_t D : {24, 128, 256, 1000, 1001, 1029, 4096}) {
          if ((rows.size() == 1) != (D == 128)) continue;  // the many-rows case at 128 channels only
          Shape s = rows, ws = rows;
          s.push_back(D);
          ws.push_back(2);
          const std::string what = std::string(plan.short_rows ? "default plan " : "row kernels ") + name(dt) + " " +
                                   shape_str(s);
          SCOPED_TRACE(what);
          const uint64_t seed = uint64_t(D) * 100 + uint64_t(rows.back()) + 61;
          Data og = make(s, seed + 1, dt, 0.7), oa = make(s, seed + 2, dt, 1.3), z = make(s, seed + 3, dt, 1.5);
          Data wl = make(ws, seed + 4, dt), dy = make(s, seed + 5, dt);
          Data gg = make({D}, seed + 6, dt, 0.3, 1.0), ga = make({D}, seed + 7, dt, 0.3, 1.0);
          auto G = [&](const Data& d) { return d.low.to(kGpu); };
          const Tensor gog = G(og), goa = G(oa), gz = G(z), gwl = G(wl), gdy = G(dy), ggg = G(gg), gga = G(ga);
          Tensor grg = poisoned(rows, DType::f32, kGpu), gra = poisoned(rows, DType::f32, kGpu);
          mix_fwd_with(plan, gog, goa, gwl, gz, ggg, gga, poisoned(s, dt, kGpu), grg, gra);
          for (int grads : {2, 1}) {
            auto bwd = [&](const std::vector<Tensor>& dg, bool acc) {
              const Tensor dog = poisoned(s, dt, kGpu), doa = poisoned(s, dt, kGpu), dwl = poisoned(ws, dt, kGpu),
                           dz = poisoned(s, dt, kGpu);
              mix_bwd_with(plan, gog, goa, gwl, gz, ggg, gga, grg, gra, gdy, dog, doa, dwl, dz,
                           grads == 2 ? dg[0] : Tensor(), dg.back(), acc);
              return std::vector<Tensor>{dog, doa, dwl, dz};
            };
            expect_dgamma_accumulates(grads, D, dt, kGpu, bwd, seed + 8, what + " " + std::to_string(grads) + " dgammas");
          }
          if (rows[0] == 0 || dt != DType::bf16) continue;
          // The f32 sums of bf16 data against the CPU reference in f64 (the same rounded inputs and rstd).
          Tensor rg = Tensor::empty(rows, DType::f64), ra = Tensor::empty(rows, DType::f64);
          mix_norm_gate_fwd(og.f64, oa.f64, wl.f64, z.f64, gg.f64, ga.f64, kEps, Tensor::empty(s, DType::f64), rg, ra);
          auto e64 = [&](const Shape& sh) { return Tensor::empty(sh, DType::f64); };
          Tensor dgg = e64({D}), dga = e64({D});
          mix_norm_gate_bwd(og.f64, oa.f64, wl.f64, z.f64, gg.f64, ga.f64, rg, ra, dy.f64, e64(s), e64(s), e64(ws),
                            e64(s), dgg, dga);
          Tensor gdgg = poisoned({D}, DType::f32, kGpu), gdga = poisoned({D}, DType::f32, kGpu);
          mix_bwd_with(plan, gog, goa, gwl, gz, ggg, gga, grg, gra, gdy, poisoned(s, dt, kGpu), poisoned(s, dt, kGpu),
                       poisoned(ws, dt, kGpu), poisoned(s, dt, kGpu), gdgg, gdga);
          expect_close(gdgg, dgg, 1e-5, "f32 dgamma_g of bf16 data");
          expect_close(gdga, dga, 1e-5, "f32 dgamma_a of bf16 data");
        }
}

// The gated output norm's accumulate mode on the GPU, as the mixing's above: 24, 256 (short rows, bf16; f32's 256
// the one-pass row kernel), 512 (one-pass row kernel), 1001 (two passes, registers), 1029 (partial rows in memory),
// 20000 rows of 128 channels, no rows.
TEST(NatslCuda, NormGateAccumulatesDgamma) {
  NATSL_REQUIRE_GPU();
  for (const MixNormGatePlan& plan : {MixNormGatePlan{true}, MixNormGatePlan{false}})
    for (DType dt : {DType::f32, DType::bf16})
      for (const Shape& rows : {Shape{2, 37, 6}, Shape{20000}, Shape{0, 6}})
        for (int64_t D : {24, 128, 256, 512, 1001, 1029}) {
          if ((rows.size() == 1) != (D == 128)) continue;
          Shape s = rows;
          s.push_back(D);
          const std::string what = std::string(plan.short_rows ? "default plan " : "row kernels ") + name(dt) + " " +
                                   shape_str(s);
          SCOPED_TRACE(what);
          const uint64_t seed = uint64_t(D) * 100 + uint64_t(rows.back()) + 67;
          Data o = make(s, seed + 1, dt, 1.3), z = make(s, seed + 2, dt, 1.5), dy = make(s, seed + 3, dt);
          Data gg = make({D}, seed + 4, dt, 0.3, 1.0);
          const Tensor go = o.low.to(kGpu), gz = z.low.to(kGpu), gdy = dy.low.to(kGpu), ggg = gg.low.to(kGpu);
          Tensor grs = poisoned(rows, DType::f32, kGpu);
          ng_fwd_with(plan, go, gz, ggg, poisoned(s, dt, kGpu), grs);
          auto bwd = [&](const std::vector<Tensor>& dg, bool acc) {
            const Tensor dO = poisoned(s, dt, kGpu), dz = poisoned(s, dt, kGpu);
            ng_bwd_with(plan, go, gz, ggg, grs, gdy, dO, dz, dg[0], acc);
            return std::vector<Tensor>{dO, dz};
          };
          expect_dgamma_accumulates(1, D, dt, kGpu, bwd, seed + 5, what);
          if (rows[0] == 0 || dt != DType::bf16) continue;
          Tensor rs = Tensor::empty(rows, DType::f64), dgg = Tensor::empty({D}, DType::f64);
          norm_gate_fwd(o.f64, z.f64, gg.f64, kEps, Tensor::empty(s, DType::f64), rs);
          norm_gate_bwd(o.f64, z.f64, gg.f64, rs, dy.f64, Tensor::empty(s, DType::f64), Tensor::empty(s, DType::f64),
                        dgg);
          Tensor gdgg = poisoned({D}, DType::f32, kGpu);
          ng_bwd_with(plan, go, gz, ggg, grs, gdy, poisoned(s, dt, kGpu), poisoned(s, dt, kGpu), gdgg);
          expect_close(gdgg, dgg, 1e-5, "f32 dgamma of bf16 data");
        }
}
