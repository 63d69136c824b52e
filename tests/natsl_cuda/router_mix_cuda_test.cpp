// CUDA router kernels (chunk mean-pool, straight-through choice) and output mixing (mix_norm_gate) against
// the CPU reference run in f64 on the same rounded inputs: f32 to ~1e-6 relative, bf16 to its rounding
// (outputs stored in bf16: 1e-2 relative RMS). Router labels must equal the CPU's exactly, with and without
// Gumbel noise. Awkward shapes (odd widths, one token, partial chunks, rows wider than a block); every GPU
// output starts as NaN.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "kernels/mix_norm_gate.h"
#include "kernels/router.h"
#include "tests/test_util.h"

using namespace natsl;
using namespace natsl::kernels;
using natsl::testing::compare;
using natsl::testing::ErrorStats;
using natsl::testing::poison;
using natsl::testing::randn;

namespace {

const Device kGpu = Device::cuda(0);

Tensor poisoned(const Shape& s, DType dt, Device d) {
  Tensor t = Tensor::empty(s, dt, d);
  poison(t);
  return t;
}
// Random data rounded to dt (CPU), and the same values in f64 for the reference.
struct Data {
  Tensor low, f64;
};
Data make(const Shape& s, uint64_t seed, DType dt, double std = 1.0, double shift = 0.0) {
  Tensor r = randn(s, seed, DType::f64, std);
  if (shift != 0) {
    double* p = r.data<double>();
    for (int64_t i = 0; i < r.numel(); ++i) p[i] += shift;
  }
  Tensor low = r.to(dt);
  return {low, low.to(DType::f64)};
}

double tol_for(DType dt) { return dt == DType::bf16 ? 1e-2 : 2e-6; }

void expect_close(const Tensor& gpu, const Tensor& ref, double rel, const std::string& what) {
  SCOPED_TRACE(what);
  const ErrorStats e = compare(gpu.to(kCPU).to(DType::f64), ref);
  EXPECT_TRUE(e.finite) << "non-finite values (unwritten output?)";
  EXPECT_LE(e.rel_rms, rel);
}

const char* name(DType dt) { return dt == DType::bf16 ? "bf16" : "f32"; }

}  // namespace

TEST(NatslCuda, ChunkMeanPoolMatchesCpu) {
  NATSL_REQUIRE_GPU();
  struct S {
    int64_t B, T, d, C;
  };
  for (DType dt : {DType::f32, DType::bf16})
    for (S s : {S{1, 1, 1, 64}, S{3, 37, 5, 64}, S{2, 130, 7, 64}, S{2, 256, 128, 64}, S{1, 1000, 33, 16}}) {
      SCOPED_TRACE(std::string(name(dt)) + " T=" + std::to_string(s.T) + " d=" + std::to_string(s.d));
      const int64_t NC = (s.T + s.C - 1) / s.C;
      Data x = make({s.B, s.T, s.d}, 1 + uint64_t(s.T), dt);
      Tensor ref = Tensor::empty({s.B, NC, s.d}, DType::f64);
      chunk_mean_pool_fwd(x.f64, s.C, ref);
      Tensor got = poisoned({s.B, NC, s.d}, dt, kGpu);
      chunk_mean_pool_fwd(x.low.to(kGpu), s.C, got);
      expect_close(got, ref, tol_for(dt), "pooled");

      Data dp = make({s.B, NC, s.d}, 7 + uint64_t(s.T), dt);
      Tensor dref = Tensor::empty({s.B, s.T, s.d}, DType::f64);
      chunk_mean_pool_bwd(dp.f64, s.C, dref);
      Tensor dgot = poisoned({s.B, s.T, s.d}, dt, kGpu);
      chunk_mean_pool_bwd(dp.low.to(kGpu), s.C, dgot);
      expect_close(dgot, dref, tol_for(dt), "dx");
    }
}

TEST(NatslCuda, RouterChoiceMatchesCpu) {
  NATSL_REQUIRE_GPU();
  struct S {
    int64_t B, NC, Hr;
  };
  for (DType dt : {DType::f32, DType::bf16})
    for (S s : {S{1, 1, 1}, S{2, 5, 3}, S{8, 64, 6}, S{3, 257, 2}})
      for (bool gumbel : {false, true})
        for (bool force : {true, false}) {
          SCOPED_TRACE(std::string(name(dt)) + " NC=" + std::to_string(s.NC) + (gumbel ? " gumbel" : "") +
                       (force ? " force_last" : ""));
          RouterChoiceArgs args;
          args.gumbel = gumbel;
          args.tau = gumbel ? 0.6 : 1.0;
          args.seed = 1234;
          args.offset = 4 * uint64_t(s.NC);
          args.force_last_both = force;
          const Shape ls{s.B, s.NC, s.Hr, 2}, ms{s.B, s.NC, s.Hr};
          // The CPU reference in f32 (labels and probs are computed in double from the f32 value of the logit).
          Tensor logits = randn(ls, 11 + uint64_t(s.NC), DType::f64).to(dt);
          Tensor probs = Tensor::empty(ls, DType::f32), m0 = Tensor::empty(ms, DType::f32),
                 m1 = Tensor::empty(ms, DType::f32);
          router_choice_fwd(args, logits, probs, m0, m1);
          Tensor gp = poisoned(ls, DType::f32, kGpu), g0 = poisoned(ms, DType::f32, kGpu),
                 g1 = poisoned(ms, DType::f32, kGpu);
          router_choice_fwd(args, logits.to(kGpu), gp, g0, g1);
          EXPECT_EQ(compare(g0.to(kCPU), m0).max_abs, 0.0) << "softmax labels";
          EXPECT_EQ(compare(g1.to(kCPU), m1).max_abs, 0.0) << "GDN labels";
          EXPECT_LE(compare(gp.to(kCPU), probs).max_abs, 1e-7);

          // Backward with every optional input present, then with the masks / one mask gradient absent.
          Tensor ds = randn(ms, 21, DType::f32), dg = randn(ms, 22, DType::f32);
          for (int variant = 0; variant < 3; ++variant) {
            SCOPED_TRACE(variant);
            const bool masks = variant != 1, with_dg = variant != 2;
            Tensor dref = Tensor::empty(ls, dt);
            router_choice_bwd(args, probs, masks ? m0 : Tensor(), masks ? m1 : Tensor(), ds, with_dg ? dg : Tensor(),
                              dref);
            Tensor dgot = poisoned(ls, dt, kGpu);
            router_choice_bwd(args, probs.to(kGpu), masks ? m0.to(kGpu) : Tensor(), masks ? m1.to(kGpu) : Tensor(),
                              ds.to(kGpu), with_dg ? dg.to(kGpu) : Tensor(), dgot);
            const ErrorStats e = compare(dgot.to(kCPU).to(DType::f64), dref.to(DType::f64));
            EXPECT_TRUE(e.finite);
            EXPECT_LE(e.max_abs, dt == DType::bf16 ? 4e-3 : 1e-7);
          }
        }
}

TEST(NatslCuda, MixNormGateMatchesCpu) {
  NATSL_REQUIRE_GPU();
  for (DType dt : {DType::f32, DType::bf16})
    for (Shape rows : {Shape{1, 1}, Shape{2, 37, 3}, Shape{2, 100, 12}, Shape{3, 5}, Shape{4, 33}})
      for (int64_t D : {2, 5, 64, 128, 256, 1000}) {
        if (D == 1000 && rows.size() == 3 && rows[1] == 100) continue;  // keep the f64 reference quick
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
