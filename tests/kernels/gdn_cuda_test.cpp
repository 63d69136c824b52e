// The GDN family's CUDA kernels (kernels/cuda/gdn/) against the CPU reference (gdn_test.cpp checks that one
// against the f64 recurrence), their kernel layouts (GdnPlan) and their determinism: suite GdnCuda, skipped
// without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <initializer_list>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cuda/gdn/plan.h"
#include "tests/kernels/gdn_test_util.h"
#include "tests/test_util.h"

// CUDA GDN kernels against the CPU reference (kernels::cpu via the dispatcher, run in f64 on the same
// rounded inputs): chunked forward and backward at f32 (1e-4 relative RMS) and bf16 (FLA's tolerances:
// o/ht 0.005, dq/dk/dv/dh0 0.008, dbeta/dg/dmask 0.02), packed sequences against separate runs, and the
// token-recurrence kernel. All GPU outputs start as NaN.
namespace natsl::testing::gdn {
namespace {

using kernels::cuda::GdnPlan;
using kernels::cuda::GdnPrepKernel;

const Device kGpu = Device::cuda(0);

Tensor to_gpu(const Tensor& t) { return t.defined() ? t.to(kGpu) : Tensor(); }
GdnInputs on_gpu(const GdnInputs& in) {
  return {to_gpu(in.q), to_gpu(in.k), to_gpu(in.v), to_gpu(in.g), to_gpu(in.beta), to_gpu(in.h0), to_gpu(in.mask)};
}

struct Outs {
  Tensor o, ht;
  GdnGrads g;
};

// The CUDA entry points with a plan (nullptr: the dispatcher's default). A CPU-only build has no CUDA
// kernels; its GPU tests skip before reaching these.
void chunk_fwd(const GdnArgs& a, const GdnInputs& in, const Tensor& o, const Tensor& ht, const GdnSaved& saved,
               const GdnPlan* plan) {
#ifdef NATSL_WITH_CUDA
  if (plan) return kernels::cuda::gdn_chunk_fwd(a, in, o, ht, saved, plan);
#endif
  (void)plan;
  kernels::gdn_chunk_fwd(a, in, o, ht, saved);
}
void chunk_bwd(const GdnArgs& a, const GdnInputs& in, const GdnSaved& saved, const Tensor& dout, const Tensor& dht,
               const GdnGrads& g, const GdnPlan* plan) {
#ifdef NATSL_WITH_CUDA
  if (plan) return kernels::cuda::gdn_chunk_bwd(a, in, saved, dout, dht, g, plan);
#endif
  (void)plan;
  kernels::gdn_chunk_bwd(a, in, saved, dout, dht, g);
}

// Forward and backward on the device of `in` (CPU: the f64 reference), outputs poisoned first; on the GPU with
// `plan` (nullptr: the default layouts).
Outs run_all(const GdnArgs& a, const GdnInputs& in, const Tensor& dout, const Tensor& dht, bool bwd = true,
             const GdnPlan* plan = nullptr) {
  const FwdResult f = poisoned_forward(a, in, /*saving=*/true);
  chunk_fwd(a, in, f.o, f.ht, f.saved, plan);
  Outs r{f.o, f.ht, {}};
  if (!bwd) return r;
  r.g = poisoned_grads(a, in);
  chunk_bwd(a, in, f.saved, dout, dht, r.g, plan);
  return r;
}

// The gradients a backward wrote (dq dk dv dg dbeta dh0, then dmask where there is a mask), on the host, for
// comparing bits (f64 holds every f32 and bf16 value exactly).
std::vector<std::vector<double>> host_values(const GdnGrads& g) {
  std::vector<std::vector<double>> v;
  for (const Tensor* t : {&g.dq, &g.dk, &g.dv, &g.dg, &g.dbeta, &g.dh0, &g.dmask})
    if (t->defined()) v.push_back(t->to(kCPU).to(DType::f64).to_vector<double>());
  return v;
}

void expect_rel(const Tensor& got, const Tensor& ref, double tol, const std::string& what) {
  ErrorStats e = compare(got, ref);
  EXPECT_TRUE(e.finite) << what << ": non-finite values (unwritten output?)";
  EXPECT_LE(e.rel_rms, tol) << what << ": relative RMS error (max abs " << e.max_abs << ")";
}

struct Tol {
  double o, ht, dqkv, dh0, dgb;
};
constexpr Tol kF32{1e-4, 1e-4, 1e-4, 1e-4, 1e-4};
constexpr Tol kBf16{0.005, 0.005, 0.008, 0.008, 0.02};

void check_against_cpu(const GdnCase& c, DType dt, bool with_dht = true, const GdnPlan* plan = nullptr) {
  const GdnArgs a = args_of(c);
  const GdnInputs in64 = make_inputs(c);
  const GdnInputs inD = converted(in64, dt);
  // The reference sees exactly the rounded inputs, in f64.
  const GdnInputs ref_in = converted(inD, DType::f64);
  const GdnShape s = GdnShape::of(in64.q, in64.v, a);
  Tensor dout = randn(in64.v.shape(), c.seed * 100 + 8);
  Tensor dht = with_dht ? randn({s.N, s.HV, s.K, s.V}, c.seed * 100 + 9) : Tensor();
  Tensor doutD = dout.to(dt).to(DType::f64);  // what the GPU sees, rounded
  const DType S = DType::f32;

  Outs ref = run_all(a, ref_in, doutD, dht);
  Outs got = run_all(a, on_gpu(inD), to_gpu(doutD.to(dt)), with_dht ? to_gpu(dht.to(S)) : Tensor(), true, plan);
  const Tol t = dt == DType::f32 ? kF32 : kBf16;
  expect_rel(got.o, ref.o, t.o, "o");
  expect_rel(got.ht, ref.ht, t.ht, "ht");
  expect_rel(got.g.dq, ref.g.dq, t.dqkv, "dq");
  expect_rel(got.g.dk, ref.g.dk, t.dqkv, "dk");
  expect_rel(got.g.dv, ref.g.dv, t.dqkv, "dv");
  expect_rel(got.g.dh0, ref.g.dh0, t.dh0, "dh0");
  expect_rel(got.g.dg, ref.g.dg, t.dgb, "dg");
  expect_rel(got.g.dbeta, ref.g.dbeta, t.dgb, "dbeta");
  if (in64.mask.defined()) expect_rel(got.g.dmask, ref.g.dmask, t.dgb, "dmask");
}

// "B3 T65 H6 K128" (built with a stream: GCC 12 misreports -Wrestrict on chains of string +).
std::string case_label(const GdnCase& c) {
  std::ostringstream os;
  os << "B" << c.B << " T" << c.T << " H" << c.H << " K" << c.K;
  return os.str();
}

// A case with H = HV heads and V = 2K, the model's shapes.
GdnCase mk(int64_t B, int64_t T, int64_t H, int64_t K, bool h0, MaskKind mask, uint64_t seed, double g_min = -0.3) {
  return {.B = B, .T = T, .H = H, .HV = H, .K = K, .V = 2 * K, .h0 = h0, .mask = mask, .g_min = g_min, .seed = seed};
}

TEST(GdnCuda, F32MatchesCpu) {
  NATSL_REQUIRE_GPU();
  for (const GdnCase& c : {mk(1, 1, 1, 64, true, MaskKind::None, 1), mk(3, 63, 6, 64, true, MaskKind::Continuous, 2),
                           mk(1, 64, 1, 128, false, MaskKind::None, 3), mk(3, 65, 1, 128, true, MaskKind::Binary, 4),
                           mk(1, 1000, 6, 64, true, MaskKind::None, 5), mk(1, 4096, 1, 64, false, MaskKind::None, 6)}) {
    SCOPED_TRACE(case_label(c));
    check_against_cpu(c, DType::f32);
  }
}

TEST(GdnCuda, Bf16MatchesCpu) {
  NATSL_REQUIRE_GPU();
  for (const GdnCase& c : {mk(1, 1, 6, 64, true, MaskKind::None, 11), mk(3, 65, 6, 128, true, MaskKind::Continuous, 12),
                           mk(1, 1000, 1, 256, true, MaskKind::None, 13), mk(1, 4096, 1, 128, false, MaskKind::None, 14),
                           mk(3, 64, 1, 256, false, MaskKind::Binary, 15), mk(1, 63, 6, 128, false, MaskKind::None, 16, -8.0),
                           mk(3, 1000, 2, 64, true, MaskKind::None, 17)}) {
    SCOPED_TRACE(case_label(c));
    check_against_cpu(c, DType::bf16);
  }
}

// The kernel layouts a GdnPlan selects (kernels/cuda/gdn/plan.h): every one must match the CPU, whichever
// the defaults pick for a shape.
// (a macro, not std::source_location: clang 14 with libstdc++ 12, the CI's sanitizer compiler, lacks it)
void check_with_plan(const GdnPlan& plan, int line) {
  SCOPED_TRACE("plan of line " + std::to_string(line));
  for (const GdnCase& c : {mk(3, 65, 6, 128, true, MaskKind::Continuous, 71), mk(1, 1000, 2, 64, true, MaskKind::None, 72),
                           mk(2, 200, 1, 256, false, MaskKind::Binary, 73)}) {
    SCOPED_TRACE(case_label(c));
    check_against_cpu(c, DType::bf16, true, &plan);
  }
  check_against_cpu(mk(2, 130, 3, 64, true, MaskKind::Continuous, 74), DType::f32, true, &plan);
}

// One plan per test case (so that gtest shards spread them: under compute-sanitizer racecheck a list of them in
// one case ran past any sensible bound); the case is named after the plan's line here.
struct LinedPlan {
  GdnPlan plan;
  int line;
};
void PrintTo(const LinedPlan& p, std::ostream* os) { *os << "the plan of line " << p.line; }
#define PLAN(...) LinedPlan{GdnPlan{__VA_ARGS__}, __LINE__}
class GdnCudaLayouts : public ::testing::TestWithParam<LinedPlan> {};
TEST_P(GdnCudaLayouts, MatchCpu) {
  NATSL_REQUIRE_GPU();
  check_with_plan(GetParam().plan, GetParam().line);
}
std::string plan_line(const ::testing::TestParamInfo<LinedPlan>& info) { return "line" + std::to_string(info.param.line); }

const LinedPlan kKernelLayouts[] = {
  PLAN(.vtile = 32, .stages = 2),
  PLAN(.vtile = 32, .stages = 1),
  PLAN(.vtile = 64, .stages = 1, .joint = false),
  PLAN(.vtile = 64, .prep = GdnPrepKernel::generic),
  PLAN(.prep = GdnPrepKernel::automatic, .prep_staged = false),
  PLAN(.prep = GdnPrepKernel::solve_then_products, .prep_staged = false),
};
INSTANTIATE_TEST_SUITE_P(KernelLayouts, GdnCudaLayouts, ::testing::ValuesIn(kKernelLayouts), plan_line);

// The forward's own layouts (gdn/state_fwd.cuh): the split pass + chunk-parallel output at each stage count,
// L2 prefetching, bulk-copy loads, the warp-specialised pass, and prep's staged / direct stores (all with the
// tensor-copy pass off, which would take their place), then the tensor-copy pass.
const LinedPlan kForwardLayouts[] = {
  PLAN(.tma = false, .split = true, .split_stages = 3, .ws = false),
  PLAN(.vtile = 32, .tma = false, .l2pf = 2, .split = true, .split_stages = 4, .ws = false),
  PLAN(.vtile = 64, .tma = false, .split = true, .split_stages = 2, .ws = false),
  PLAN(.vtile = 64, .tma = false, .l2pf = 1, .split = false, .ws = false),
  PLAN(.vtile = 32, .tma = false, .l2pf = 4, .split = false, .ws = false),
  PLAN(.tma = false, .split = false, .fwd_bulk = true, .ws = false),
  PLAN(.vtile = 32, .stages = 1, .tma = false, .l2pf = 2, .split = false, .fwd_bulk = true, .ws = false),
  PLAN(.tma = false, .split = true, .split_stages = 4, .fwd_bulk = true, .ws = false),
  PLAN(.vtile = 64, .tma = false, .split = true, .split_stages = 3, .fwd_bulk = true, .ws = false),
  PLAN(.vtile = 32, .tma = false, .split = false, .ws = true),
  PLAN(.vtile = 64, .stages = 1, .tma = false, .split = false, .ws = true),
  PLAN(.tma = false, .split = true, .split_stages = 3, .ws = true),
  PLAN(.vtile = 64, .tma = false, .split = true, .split_stages = 4, .ws = true),
  PLAN(.vtile = 32, .tma = false, .split = false, .ws = false),
  PLAN(.prep_staged = true, .tma = false, .split = false, .ws = false),
  PLAN(.prep_staged = false, .tma = false),
  // The pass on tensor-copied tiles (gdn/state_fwd_tma.cu) at both tile widths and stage counts; K = 256 and
  // the f32 case fall back to the cp.async pass.
  PLAN(.vtile = 32, .tma = true),
  PLAN(.vtile = 64, .tma = true, .tma_stages = 2),
  // Both output kernels after either split pass: one CTA per V tile (out_per_vtile), or looping over the V
  // tiles (2, the default the split rows above ran).
  PLAN(.vtile = 32, .tma = false, .split = true, .out_per_vtile = true, .ws = true),
  PLAN(.vtile = 64, .tma = false, .split = true, .out_per_vtile = true, .ws = false),
  PLAN(.vtile = 64, .tma = false, .split = true, .out_per_vtile = false, .ws = false),
};
INSTANTIATE_TEST_SUITE_P(ForwardLayouts, GdnCudaLayouts, ::testing::ValuesIn(kForwardLayouts), plan_line);

// The backward's own layouts: bulk-copy tile loads, staged / direct stores and L2 prefetching in the reverse
// state pass (gdn/state_bwd.cu), joint and separate, at each V tile width and stage count.
const LinedPlan kBackwardLayouts[] = {
  PLAN(.vtile = 32, .bwd_store_staged = true, .bwd_bulk = false),
  PLAN(.vtile = 64, .bwd_store_staged = false, .bwd_bulk = false),
  PLAN(.vtile = 64, .stages = 2, .bwd_bulk = true),
  PLAN(.vtile = 32, .stages = 1, .bwd_store_staged = true, .bwd_bulk = true),
  PLAN(.vtile = 32, .stages = 2, .joint = false, .bwd_bulk = true),
  PLAN(.vtile = 64, .stages = 1, .bwd_bulk = true),
  PLAN(.vtile = 64, .bwd_store_staged = true, .bwd_l2pf = 2),
  PLAN(.vtile = 32, .bwd_bulk = true, .bwd_l2pf = 1),
  // h_n and v_new of the forward recompute stored straight from the accumulators (4-byte stores) instead of
  // from their shared tiles.
  PLAN(.vtile = 32, .fwd_store_staged = false),
  PLAN(.joint = false, .bwd_tma = true, .fwd_store_staged = false),
  // Tensor-copied tiles (K = 256 and f32 fall back to the cp.async passes).
  PLAN(.bwd_tma = true, .bwd_tma_vtile = 32, .bwd_tma_stages = 3),
  PLAN(.joint = false, .bwd_tma = true, .bwd_tma_vtile = 64, .bwd_tma_stages = 1),
};
INSTANTIATE_TEST_SUITE_P(BackwardLayouts, GdnCudaLayouts, ::testing::ValuesIn(kBackwardLayouts), plan_line);

// Two CTAs per SM (GdnPlan::occ2: one stage, registers capped at 128 a thread): the forward pass with its
// output, the split forward, the backward's joint and separate passes, both tile widths; and off (the
// pipelined kernels), whichever the default.
const LinedPlan kTwoCtasPerSmLayouts[] = {
  PLAN(.vtile = 64, .occ2 = true, .tma = false, .split = false, .ws = false),
  PLAN(.vtile = 32, .occ2 = true, .joint = false, .tma = false, .split = true),
  PLAN(.vtile = 64, .occ2 = true, .tma = false, .ws = true, .bwd_store_staged = false),
  PLAN(.occ2 = false, .tma = false, .split = false, .ws = false),
};
INSTANTIATE_TEST_SUITE_P(TwoCtasPerSmLayouts, GdnCudaLayouts, ::testing::ValuesIn(kTwoCtasPerSmLayouts), plan_line);

TEST(GdnCuda, NoFinalStateGradient) {
  NATSL_REQUIRE_GPU();
  check_against_cpu(mk(1, 130, 2, 64, true, MaskKind::None, 21), DType::f32, /*with_dht=*/false);
}

// Packed sequences (B = 1, cu_seqlens) give what separate runs of each sequence give, and match the CPU.
void check_packed(DType dt) {
  GdnCase c = mk(1, 1300, 2, 64, true, MaskKind::Continuous, 31);
  c.cu_seqlens = {0, 1, 65, 129, 1000, 1000, 1300};
  const GdnArgs a = args_of(c);
  const GdnInputs inD = converted(make_inputs(c), dt);
  const GdnShape s = GdnShape::of(inD.q, inD.v, a);
  Tensor dout = randn(inD.v.shape(), 38).to(dt);
  Tensor dht = randn({s.N, s.HV, s.K, s.V}, 39).to(DType::f32);
  Outs packed = run_all(a, on_gpu(inD), to_gpu(dout), to_gpu(dht));
  const auto seqs = kernels::gdn_sequences(s, a);
  for (size_t n = 0; n < seqs.size(); ++n) {
    const auto& q = seqs[n];
    if (q.len == 0) continue;
    SCOPED_TRACE("sequence " + std::to_string(n));
    auto tok = [&](const Tensor& t) { return t.slice(1, q.start, q.start + q.len).contiguous(); };
    auto seq = [&](const Tensor& t) { return t.slice(0, int64_t(n), int64_t(n) + 1).contiguous(); };
    auto chunks = [&](const Tensor& t) { return t.slice(0, q.first_chunk, q.first_chunk + q.chunks()).contiguous(); };
    GdnInputs one{tok(inD.q), tok(inD.k), tok(inD.v), tok(inD.g), tok(inD.beta), seq(inD.h0), chunks(inD.mask)};
    GdnArgs a1 = a;
    a1.cu_seqlens.clear();
    Outs single = run_all(a1, on_gpu(one), to_gpu(tok(dout)), to_gpu(seq(dht)));
    auto gtok = [&](const Tensor& t) { return t.to(kCPU).slice(1, q.start, q.start + q.len).contiguous(); };
    auto gseq = [&](const Tensor& t) { return t.to(kCPU).slice(0, int64_t(n), int64_t(n) + 1).contiguous(); };
    auto gch = [&](const Tensor& t) {
      return t.to(kCPU).slice(0, q.first_chunk, q.first_chunk + q.chunks()).contiguous();
    };
    expect_rel(gtok(packed.o), single.o, 1e-6, "o");
    expect_rel(gseq(packed.ht), single.ht, 1e-6, "ht");
    expect_rel(gtok(packed.g.dq), single.g.dq, 1e-6, "dq");
    expect_rel(gtok(packed.g.dk), single.g.dk, 1e-6, "dk");
    expect_rel(gtok(packed.g.dv), single.g.dv, 1e-6, "dv");
    expect_rel(gtok(packed.g.dg), single.g.dg, 1e-6, "dg");
    expect_rel(gtok(packed.g.dbeta), single.g.dbeta, 1e-6, "dbeta");
    expect_rel(gseq(packed.g.dh0), single.g.dh0, 1e-6, "dh0");
    expect_rel(gch(packed.g.dmask), single.g.dmask, 1e-6, "dmask");
  }
  // The empty sequence passes its state through.
  expect_rel(packed.ht.to(kCPU).slice(0, 4, 5).contiguous(), inD.h0.slice(0, 4, 5).contiguous(), 0, "empty ht");
}

TEST(GdnCuda, PackedEqualsSeparateF32) {
  NATSL_REQUIRE_GPU();
  check_packed(DType::f32);
}
TEST(GdnCuda, PackedEqualsSeparateBf16) {
  NATSL_REQUIRE_GPU();
  check_packed(DType::bf16);
}
TEST(GdnCuda, PackedMatchesCpu) {
  NATSL_REQUIRE_GPU();
  GdnCase c = mk(1, 700, 3, 64, true, MaskKind::Binary, 41);
  c.cu_seqlens = {0, 100, 164, 700};
  check_against_cpu(c, DType::f32);
}

TEST(GdnCuda, RecurrentMatchesCpu) {
  NATSL_REQUIRE_GPU();
  for (DType dt : {DType::f32, DType::bf16}) {
    GdnCase c = mk(2, 150, 2, 64, true, MaskKind::Continuous, 51);
    const GdnArgs a = args_of(c);
    const GdnInputs inD = converted(make_inputs(c), dt);
    const FwdResult ref = run_recurrent(a, converted(inD, DType::f64));
    const FwdResult got = run_recurrent(a, on_gpu(inD));
    const double tol = dt == DType::f32 ? 1e-5 : 0.005;
    expect_rel(got.o, ref.o, tol, "recurrent o");
    expect_rel(got.ht, ref.ht, tol, "recurrent ht");
  }
}

// A forward that saves nothing (inference) still passes T through memory when prep3 runs (a scratch a_inv):
// the same output bits as the forward that saves, for each prep layout, and the same bits across layouts
// (prep2 and prep3 round and add in the same order).
TEST(GdnCuda, ForwardWithoutSavedTensorsGivesTheSameBits) {
  NATSL_REQUIRE_GPU();
  for (const GdnCase& c : {mk(3, 65, 6, 128, true, MaskKind::Continuous, 81), mk(1, 200, 2, 64, false, MaskKind::None, 82)}) {
    SCOPED_TRACE(case_label(c));
    const GdnArgs a = args_of(c);
    const GdnInputs in = on_gpu(converted(make_inputs(c), DType::bf16));
    std::vector<double> first;
    for (GdnPrepKernel prep : {GdnPrepKernel::solve_then_products, GdnPrepKernel::automatic}) {
      const GdnPlan plan{.prep = prep};
      for (bool save : {true, false}) {
        SCOPED_TRACE(std::string(prep == GdnPrepKernel::automatic ? "prep2" : "prep3") +
                     (save ? " saving" : " saving nothing"));
        const FwdResult f = poisoned_forward(a, in, /*saving=*/save);
        chunk_fwd(a, in, f.o, Tensor(), f.saved, &plan);
        const std::vector<double> got = f.o.to(kCPU).to(DType::f64).to_vector<double>();
        for (double x : got) ASSERT_TRUE(std::isfinite(x)) << "unwritten output";
        if (first.empty()) first = got;
        else EXPECT_TRUE(got == first) << "output bits differ";
      }
    }
  }
}

// The pass on tensor-copied (swizzled) tiles runs the same products in the same order as the cp.async pass of
// the same tile width, with the K rows past a chunk's end zeroed as the cp.async zero fill leaves them: the same
// output and final state bits, packed sequences included (their chunks end inside the copied boxes).
TEST(GdnCuda, TmaPassGivesTheSameBitsAsCpAsyncPass) {
  NATSL_REQUIRE_GPU();
  GdnCase packed = mk(1, 1300, 2, 128, true, MaskKind::Continuous, 91);
  packed.cu_seqlens = {0, 1, 65, 129, 1000, 1000, 1300};
  for (const GdnCase& c : {mk(3, 65, 6, 128, true, MaskKind::Continuous, 92), mk(2, 333, 3, 64, false, MaskKind::Binary, 93),
                           packed}) {
    SCOPED_TRACE(case_label(c));
    const GdnArgs a = args_of(c);
    const GdnInputs in = on_gpu(converted(make_inputs(c), DType::bf16));
    for (int vw : {32, 64}) {
      SCOPED_TRACE("V tile " + std::to_string(vw));
      std::vector<double> o_ref, ht_ref;
      for (bool tma : {false, true}) {
        const GdnPlan plan{.vtile = vw, .occ2 = false, .tma = tma, .split = false, .ws = false};
        const FwdResult f = poisoned_forward(a, in, /*saving=*/false);
        chunk_fwd(a, in, f.o, f.ht, GdnSaved{}, &plan);
        const std::vector<double> og = f.o.to(kCPU).to(DType::f64).to_vector<double>();
        const std::vector<double> hg = f.ht.to(kCPU).to(DType::f64).to_vector<double>();
        for (double x : og) ASSERT_TRUE(std::isfinite(x)) << "unwritten output";
        if (o_ref.empty()) {
          o_ref = og;
          ht_ref = hg;
        } else {
          EXPECT_TRUE(og == o_ref) << "output bits differ on the tensor-copy pass";
          EXPECT_TRUE(hg == ht_ref) << "final state bits differ on the tensor-copy pass";
        }
      }
    }
  }
}

// The backward's passes on tensor-copied tiles (GdnPlan::bwd_tma), joint and reverse alone, at both tile widths
// and 1-3 stages: every gradient bit for bit the cp.async passes' (the same step functions on the same values).
TEST(GdnCuda, TmaBackwardGivesTheSameBitsAsCpAsync) {
  NATSL_REQUIRE_GPU();
  GdnCase packed = mk(1, 1300, 2, 128, true, MaskKind::Continuous, 94);
  packed.cu_seqlens = {0, 1, 65, 129, 1000, 1000, 1300};
  struct Setting {
    int vw, stages;
    bool joint;
  };
  for (const GdnCase& c : {mk(3, 65, 6, 128, true, MaskKind::Continuous, 95), mk(2, 333, 3, 64, false, MaskKind::Binary, 96),
                           packed}) {
    SCOPED_TRACE(case_label(c));
    const GdnArgs a = args_of(c);
    const GdnInputs in = on_gpu(converted(make_inputs(c), DType::bf16));
    const Cotangents ct = cotangents(a, in, c.seed + 1);
    const Tensor dout = to_gpu(ct.dout.to(DType::bf16)), dht = to_gpu(ct.dht.to(DType::f32));
    for (const Setting& st : {Setting{32, 2, true}, Setting{64, 2, true}, Setting{32, 3, true}, Setting{64, 1, true},
                              Setting{32, 1, false}}) {
      SCOPED_TRACE("V tile " + std::to_string(st.vw) + ", stages " + std::to_string(st.stages) + ", joint " +
                   std::to_string(int(st.joint)));
      const GdnPlan cp_async{.vtile = st.vw, .stages = 2, .occ2 = false, .joint = st.joint, .bwd_tma = false};
      GdnPlan tma = cp_async;
      tma.bwd_tma = true;
      tma.bwd_tma_vtile = st.vw;
      tma.bwd_tma_stages = st.stages;
      const auto ref = host_values(run_all(a, in, dout, dht, true, &cp_async).g);
      const auto got = host_values(run_all(a, in, dout, dht, true, &tma).g);
      ASSERT_EQ(got.size(), ref.size());
      for (size_t i = 0; i < got.size(); ++i) {
        for (double x : got[i]) ASSERT_TRUE(std::isfinite(x)) << "gradient " << i << ": unwritten output";
        EXPECT_TRUE(got[i] == ref[i]) << "gradient " << i << " (dq dk dv dg dbeta dh0 dmask) bits differ";
      }
    }
  }
}

TEST(GdnCuda, RefusesWhatItDoesNotSupport) {
  NATSL_REQUIRE_GPU();
  GdnCase c = mk(1, 10, 1, 256, false, MaskKind::None, 61);
  const GdnInputs in = on_gpu(converted(make_inputs(c), DType::f32));
  Tensor o = poisoned(in.v.shape(), DType::f32, kGpu);
  EXPECT_THROW(kernels::gdn_chunk_fwd(args_of(c), in, o, Tensor(), GdnSaved{}), Error);
}

// The CUDA GDN backward repeats its bits: the chunk-gradient kernels sum rows and columns of their tiles
// through per-warp slots added in a fixed order (gdn/tile.cuh), not through atomics, so every gradient
// (dq, dk, dv, dg, dbeta, dh0, dmask) is the same on every run: bf16 and f32, with and without a
// state-write mask.
std::vector<std::vector<double>> backward_bits(const GdnArgs& a, const GdnInputs& in, const GdnSaved& saved,
                                               const Tensor& dout) {
  GdnGrads g = poisoned_grads(a, in);
  kernels::gdn_chunk_bwd(a, in, saved, dout, Tensor(), g);
  return host_values(g);
}

TEST(GdnCuda, BackwardRepeatsBitForBit) {
  NATSL_REQUIRE_GPU();
  const char* names[] = {"dq", "dk", "dv", "dg", "dbeta", "dh0", "dmask"};
  for (DType dt : {DType::bf16, DType::f32})
    for (MaskKind mask : {MaskKind::None, MaskKind::Continuous}) {
      const GdnCase c = mk(2, 1000, 3, 128, true, mask, 91);
      SCOPED_TRACE(std::string(dtype_name(dt)) + (mask == MaskKind::None ? "" : " masked"));
      const GdnArgs a = args_of(c);
      const GdnInputs in = on_gpu(converted(make_inputs(c), dt));
      const GdnShape s = GdnShape::of(in.q, in.v, a);
      const FwdResult f = poisoned_forward(a, in, /*saving=*/true);
      kernels::gdn_chunk_fwd(a, in, f.o, Tensor(), f.saved);
      const Tensor dout = to_gpu(randn(in.v.shape(), 92).to(dt));
      const auto first = backward_bits(a, in, f.saved, dout);
      for (const auto& v : first)
        for (double x : v) ASSERT_TRUE(std::isfinite(x)) << "non-finite gradient (unwritten output?)";
      for (int rep = 0; rep < 3; ++rep) {
        const auto again = backward_bits(a, in, f.saved, dout);
        ASSERT_EQ(again.size(), first.size());
        for (size_t i = 0; i < first.size(); ++i)
          EXPECT_TRUE(again[i] == first[i]) << names[i] << " differs on rerun " << rep << " (s.NC = " << s.NC << ")";
      }
    }
}

}  // namespace
}  // namespace natsl::testing::gdn
