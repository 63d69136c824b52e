// Times natsl's chunked Gated DeltaNet kernels (bf16) at the issue's shapes: forward and forward+backward,
// with the L2 norm of q and k (forward and backward) included as FLA's use_qk_l2norm_in_kernel=True does, and a
// per-stage split. CUDA events, warm-up, median of repeated runs. The FLA peer is timed by peers.py in the same
// run; --peer FILE reads its anchors JSON to print the ratio.
//   natsl_bench_gdn [--json out.jsonl] [--peer anchors.json] [--commit SHA] [--reps N] [--keep-pool 0|1]
//                   [--skip TAG_PART]   (variants whose tag contains TAG_PART are left out)
//                   [--variants 0|1]    (0: the default layout only, no variant rows; default 1)
//                   [--only A,B,...]     (only the variants whose tag contains one of the parts; no backward-layout rows)
//                   [--shapes all|b8|b2] (which of the two shapes to run; default all)
// Kernel layouts: each row tagged [variant] runs with that variant's GdnPlan (kVariants below).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/philox.h"
#include "experiments/bench/bench_results.h"
#include "experiments/bench/bench_timing.h"
#include "kernels/cuda/gdn/plan.h"
#include "kernels/cuda/gdn/bwd.cuh"
#include "kernels/cuda/gdn/state_fwd.cuh"
#include "kernels/gdn.h"
#include "kernels/nn.h"

using namespace natsl;
using namespace natsl::kernels;
using natsl::kernels::cuda::GdnPlan;
using natsl::kernels::cuda::GdnPrepKernel;

namespace {

using bench::median_ms;

// Kernel layouts (kernels/cuda/gdn/plan.h): the first is the default plan, "old" the kernels before the layout
// options existed. fwd_only: the plan changes only the forward (its backward rows are skipped).
struct Variant {
  const char* tag;
  GdnPlan plan;
  bool fwd_only;
};
const std::vector<Variant> kVariants = {
    {"default", {}, false},
    {"tma_off", {.tma = false}, true},
    {"prep2", {.prep = GdnPrepKernel::automatic}, false},
    {"prep3", {.prep = GdnPrepKernel::solve_then_products}, false},
    {"occ2", {.occ2 = true}, false},
    {"occ2_vt64", {.vtile = 64, .occ2 = true}, false},
    {"occ0_ws", {.occ2 = false, .ws = true}, false},
    {"old", {.vtile = 64, .stages = 2, .joint = false, .prep = GdnPrepKernel::generic, .prep_staged = false, .split = false, .ws = false}, false},
    {"vt64s2", {.vtile = 64, .stages = 2, .split = false, .ws = false}, false},
    {"vt32s2", {.vtile = 32, .stages = 2, .split = false, .ws = false}, false},
    {"vt32s1", {.vtile = 32, .stages = 1, .split = false, .ws = false}, false},
    {"prep_staged", {.prep_staged = true}, false},
    {"prep_direct", {.prep_staged = false}, false},
    {"l2pf2", {.tma = false, .l2pf = 2, .split = false, .ws = false}, true},
    {"split_s3", {.tma = false, .split = true, .split_stages = 3, .ws = false}, true},
    {"split_s4", {.tma = false, .split = true, .split_stages = 4, .ws = false}, true},
    {"split_s3_vt32", {.vtile = 32, .tma = false, .split = true, .split_stages = 3, .ws = false}, true},
    {"fused_ws", {.tma = false, .split = false, .ws = true}, true},
    {"fused_no_ws", {.tma = false, .split = false, .ws = false}, true},
    {"tma", {.tma = true}, true},
    {"tma_s1", {.tma = true, .tma_stages = 1}, true},
    {"fwd_store_direct", {.fwd_store_staged = false}, false},
    {"bwd_tma", {.bwd_tma = true}, false},
    {"bwd_tma_fwd_store_direct", {.bwd_tma = true, .fwd_store_staged = false}, false},
    {"bwd_tma_s1", {.bwd_tma = true, .bwd_tma_stages = 1}, false},
    {"bwd_tma_vt32", {.bwd_tma = true, .bwd_tma_vtile = 32}, false},
    {"bwd_tma_vt32_s1", {.bwd_tma = true, .bwd_tma_vtile = 32, .bwd_tma_stages = 1}, false},
    {"bwd_tma_vt32_s3", {.bwd_tma = true, .bwd_tma_vtile = 32, .bwd_tma_stages = 3}, false},
    {"tma_s2", {.tma = true, .tma_stages = 2}, true},
    {"tma_vt32", {.vtile = 32, .tma = true}, true},
    {"tma_vt64", {.vtile = 64, .tma = true}, true},
    {"fused_ws_vt32", {.vtile = 32, .tma = false, .split = false, .ws = true}, true},
    {"fused_ws_vt64", {.vtile = 64, .tma = false, .split = false, .ws = true}, true},
    {"split_s3_ws", {.tma = false, .split = true, .split_stages = 3, .ws = true}, true},
    {"split_s3_ws_out1", {.tma = false, .split = true, .split_stages = 3, .out_per_vtile = true, .ws = true}, true},
    {"split_s4_ws", {.tma = false, .split = true, .split_stages = 4, .ws = true}, true},
    {"split_s4_ws_vt64", {.vtile = 64, .tma = false, .split = true, .split_stages = 4, .ws = true}, true},
    {"bulk", {.tma = false, .split = false, .fwd_bulk = true, .ws = false}, true},
    {"split_s3_bulk", {.tma = false, .split = true, .split_stages = 3, .fwd_bulk = true, .ws = false}, true},
    {"split_s4_bulk", {.tma = false, .split = true, .split_stages = 4, .fwd_bulk = true, .ws = false}, true},
};

struct Row {
  std::string name, shape;
  double ms;
};

}  // namespace

int main(int argc, char** argv) {
  std::string json_out, peer_file, commit = "unknown";
  int reps = 30;
  bool keep_pool = false;
  std::string skip;  // variants whose tag contains this are not run
  bool variants = true;
  std::string only;  // only the variants whose tag contains this
  std::string shapes = "all";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k == "--json") json_out = argv[i + 1];
    else if (k == "--peer") peer_file = argv[i + 1];
    else if (k == "--commit") commit = argv[i + 1];
    else if (k == "--reps") reps = std::stoi(argv[i + 1]);
    else if (k == "--keep-pool") keep_pool = std::stoi(argv[i + 1]) != 0;
    else if (k == "--skip") skip = argv[i + 1];
    else if (k == "--variants") variants = std::stoi(argv[i + 1]) != 0;
    else if (k == "--only") only = argv[i + 1];
    else if (k == "--shapes") shapes = argv[i + 1];
    else {
      std::fprintf(stderr, "natsl_bench_gdn: unknown option %s (see the comment at the top of bench_gdn.cu)\n", k.c_str());
      return 2;
    }
  }
  if (shapes != "all" && shapes != "b8" && shapes != "b2") {
    std::fprintf(stderr, "natsl_bench_gdn: --shapes must be all, b8 or b2, got %s\n", shapes.c_str());
    return 2;
  }
  const Device dev = Device::cuda(0);
  cudaStream_t st = activate(0);
  if (keep_pool) {
    // The stream-ordered pool's release threshold is 0 by default: it hands its memory back at every
    // synchronize, so each timed repetition maps the scratch tensors afresh. --keep-pool 1 keeps it mapped
    // (as PyTorch's caching allocator does for FLA).
    cudaMemPool_t pool;
    NATSL_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, 0));
    uint64_t keep = UINT64_MAX;
    NATSL_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
  }
  cudaDeviceProp prop{};
  NATSL_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));

  const nlohmann::json peer = bench::read_peer_file(peer_file);
  auto peer_ms = [&](const std::string& name, int64_t B, int64_t T) -> double {
    if (!peer.contains("rows")) return -1;
    for (auto& r : peer["rows"])
      if (r.value("name", "") == name && r.value("B", 0) == B && r.value("T", 0) == T) return r["ms"].get<double>();
    return -1;
  };

  std::vector<Row> rows;
  auto add_row = [&](Row r) {  // also printed at once, so a run cut short still shows what it measured
    std::fprintf(stderr, "%-46s %-28s %10.4f\n", r.name.c_str(), r.shape.c_str(), r.ms);
    rows.push_back(std::move(r));
  };
  struct Shape5 {
    int64_t B, T, H, K, V;
  };
  for (Shape5 sh : {Shape5{8, 4096, 6, 128, 256}, Shape5{2, 16384, 6, 128, 256}}) {
    if ((shapes == "b8" && sh.B != 8) || (shapes == "b2" && sh.B != 2)) continue;
    const std::string shape = "B" + std::to_string(sh.B) + " T" + std::to_string(sh.T) + " H" + std::to_string(sh.H) +
                              " K" + std::to_string(sh.K) + " V" + std::to_string(sh.V);
    Generator gen(1234);
    auto rnd = [&](const natsl::Shape& s, DType dt) {
      Tensor t = Tensor::empty(s, dt, dev);
      normal_(t, gen, 0.0, 1.0);
      return t;
    };
    Tensor qr = rnd({sh.B, sh.T, sh.H, sh.K}, DType::bf16), kr = rnd({sh.B, sh.T, sh.H, sh.K}, DType::bf16);
    GdnInputs in;
    in.v = rnd({sh.B, sh.T, sh.H, sh.V}, DType::bf16);
    in.q = Tensor::empty(qr.shape(), DType::bf16, dev);
    in.k = Tensor::empty(kr.shape(), DType::bf16, dev);
    Tensor rq = Tensor::empty({sh.B * sh.T * sh.H}, DType::f32, dev), rk = Tensor::empty({sh.B * sh.T * sh.H}, DType::f32, dev);
    // g = logsigmoid(N(0,1)) in (-inf, 0) and beta = sigmoid(U(0,1)), as peers.py draws them.
    Tensor graw = rnd({sh.B, sh.T, sh.H}, DType::f32);
    {
      std::vector<float> g = graw.to_vector<float>();
      for (float& x : g) x = -std::log1p(std::exp(-x));
      in.g = Tensor::from_vector(g, graw.shape(), DType::f32, dev);
      Tensor braw = Tensor::empty({sh.B, sh.T, sh.H}, DType::f32, dev);
      uniform_(braw, gen, 0.0, 1.0);
      std::vector<float> b = braw.to_vector<float>();
      for (float& x : b) x = 1.f / (1.f + std::exp(-x));
      in.beta = Tensor::from_vector(b, braw.shape(), DType::f32, dev);
    }
    GdnArgs args;
    args.scale = 1.0 / std::sqrt(double(sh.K));
    Tensor o = Tensor::empty(in.v.shape(), DType::bf16, dev);
    Tensor dout = rnd(in.v.shape(), DType::bf16);
    GdnSaved saved{Tensor::empty({sh.B, sh.T, sh.H}, DType::f32, dev),
                   Tensor::empty({sh.B, sh.T, sh.H, kGdnChunk}, DType::bf16, dev)};
    GdnGrads gr{Tensor::empty(in.q.shape(), DType::bf16, dev), Tensor::empty(in.k.shape(), DType::bf16, dev),
                Tensor::empty(in.v.shape(), DType::bf16, dev), Tensor::empty(in.g.shape(), DType::f32, dev),
                Tensor::empty(in.beta.shape(), DType::f32, dev), Tensor(), Tensor()};
    Tensor dqn = Tensor::empty(qr.shape(), DType::bf16, dev), dkn = Tensor::empty(kr.shape(), DType::bf16, dev);

    GdnPlan plan;  // the layouts the rows below run (the variant's)
    auto fwd = [&] {
      l2norm_fwd(qr, 1e-6, in.q, rq);
      l2norm_fwd(kr, 1e-6, in.k, rk);
      cuda::gdn_chunk_fwd(args, in, o, Tensor(), saved, &plan);
    };
    auto fwdbwd = [&] {
      fwd();
      cuda::gdn_chunk_bwd(args, in, saved, dout, Tensor(), gr, &plan);
      l2norm_bwd(in.q, rq, gr.dq, dqn);
      l2norm_bwd(in.k, rk, gr.dk, dkn);
    };
    add_row({"natsl_gdn_fwd", shape, median_ms(fwd, reps, st)});
    add_row({"natsl_gdn_fwdbwd", shape, median_ms(fwdbwd, reps, st)});

    // Per-stage split (each stage timed alone on the same inputs).
    using namespace natsl::kernels::cuda::gdn;
    Plan pl = make_plan(args, in, "bench", &plan);
    auto use_plan = [&](const GdnPlan& p) {  // for the headline rows and the stages
      plan = p;
      pl.tune = p;
    };
    const GdnShape& s = pl.s;
    PrepOut pr = run_prep(pl, args, in, saved, false);
    Tensor h = Tensor::empty({s.NC, s.HV, s.K, s.V}, DType::bf16, dev), vn = Tensor::empty({s.NC, s.HV, kC, s.V}, DType::bf16, dev);
    Tensor dh = Tensor::empty({s.NC, s.HV, s.K, s.V}, DType::bf16, dev), dv2 = Tensor::empty({s.NC, s.HV, kC, s.V}, DType::bf16, dev);
    run_state_fwd(pl, args, in, pr, StateFwdOut{Tensor(), Tensor(), h, vn});
    run_state_bwd(pl, args, in, pr, dout, Tensor(), Tensor(), dh, dv2);
    auto bwd_states = [&] {
      if (pl.tune.joint) {
        run_state_fwd_bwd(pl, args, in, pr, dout, Tensor(), Tensor(), h, vn, dh, dv2);
      } else {
        run_state_fwd(pl, args, in, pr, StateFwdOut{Tensor(), Tensor(), h, vn});
        run_state_bwd(pl, args, in, pr, dout, Tensor(), Tensor(), dh, dv2);
      }
    };
    add_row({"stage bwd state passes (both)", shape, median_ms(bwd_states, reps, st)});
    add_row({"stage l2norm_fwd(q,k)", shape, median_ms([&] { l2norm_fwd(qr, 1e-6, in.q, rq); l2norm_fwd(kr, 1e-6, in.k, rk); }, reps, st)});
    add_row({"stage prep (cumsum, KK^T, solve, w/u, QK^T)", shape, median_ms([&] { run_prep(pl, args, in, saved, false); }, reps, st)});
    add_row({"stage state pass + output", shape, median_ms([&] { run_state_fwd(pl, args, in, pr, StateFwdOut{o, Tensor(), Tensor(), Tensor()}); }, reps, st)});
    add_row({"stage prep recompute (bwd)", shape, median_ms([&] { run_prep(pl, args, in, saved, true); }, reps, st)});
    add_row({"stage state pass storing h, v_new (bwd)", shape, median_ms([&] { run_state_fwd(pl, args, in, pr, StateFwdOut{Tensor(), Tensor(), h, vn}); }, reps, st)});
    add_row({"stage reverse state pass (bwd)", shape, median_ms([&] { run_state_bwd(pl, args, in, pr, dout, Tensor(), Tensor(), dh, dv2); }, reps, st)});
    add_row({"stage chunk gradients (bwd)", shape, median_ms([&] { run_chunk_bwd(pl, args, in, saved, pr, dout, h, vn, dh, dv2, gr); }, reps, st)});
    add_row({"stage l2norm_bwd(q,k)", shape, median_ms([&] { l2norm_bwd(in.q, rq, gr.dq, dqn); l2norm_bwd(in.k, rk, gr.dk, dkn); }, reps, st)});
    // Backward layouts (gdn/state_bwd.cu: bulk-copy loads, staged or direct stores and L2 prefetching in the
    // reverse pass, with the state-pass layouts they combine with).
    if (variants && only.empty()) {
      struct BwdVariant {
        const char* tag;
        GdnPlan plan;
      };
      const BwdVariant bwd_variants[] = {
          {"store_direct", {.bwd_store_staged = false, .bwd_bulk = false}},
          {"store_staged", {.bwd_store_staged = true, .bwd_bulk = false}},
          {"bulk", {.bwd_store_staged = false, .bwd_bulk = true}},
          {"bulk_staged", {.bwd_store_staged = true, .bwd_bulk = true}},
          {"bulk_staged_vt64s2", {.vtile = 64, .stages = 2, .bwd_store_staged = true, .bwd_bulk = true}},
          {"bulk_staged_vt32s2", {.vtile = 32, .stages = 2, .bwd_store_staged = true, .bwd_bulk = true}},
          {"bulk_staged_vt32s1", {.vtile = 32, .stages = 1, .bwd_store_staged = true, .bwd_bulk = true}},
          {"bulk_staged_vt64s1", {.vtile = 64, .stages = 1, .bwd_store_staged = true, .bwd_bulk = true}},
          {"bwd_l2pf1", {.bwd_store_staged = false, .bwd_bulk = false, .bwd_l2pf = 1}},
          {"bwd_l2pf2", {.bwd_store_staged = false, .bwd_bulk = false, .bwd_l2pf = 2}},
          {"staged_l2pf2", {.bwd_store_staged = true, .bwd_bulk = false, .bwd_l2pf = 2}},
          {"bulk_staged_l2pf2", {.bwd_store_staged = true, .bwd_bulk = true, .bwd_l2pf = 2}},
      };
      for (const BwdVariant& v : bwd_variants) {
        use_plan(v.plan);
        const std::string tag = std::string("[") + v.tag + "]";
        add_row({"natsl_gdn_fwdbwd" + tag, shape, median_ms(fwdbwd, reps, st)});
        add_row({"stage bwd state passes (both)" + tag, shape, median_ms(bwd_states, reps, st)});
        add_row({"stage reverse state pass (bwd)" + tag, shape, median_ms([&] { run_state_bwd(pl, args, in, pr, dout, Tensor(), Tensor(), dh, dv2); }, reps, st)});
      }
      use_plan(kVariants[0].plan);
    }
    // The other kernel layouts, headline and state passes.
    for (size_t vi = 1; variants && vi < kVariants.size(); ++vi) {
      const Variant& v = kVariants[vi];
      if (!skip.empty() && std::string(v.tag).find(skip) != std::string::npos) continue;
      if (!only.empty()) {
        bool hit = false;
        for (size_t b = 0, e; b <= only.size(); b = e + 1) {
          e = only.find(',', b);
          if (e == std::string::npos) e = only.size();
          if (e > b && std::string(v.tag).find(only.substr(b, e - b)) != std::string::npos) hit = true;
        }
        if (!hit) continue;
      }
      use_plan(v.plan);
      const std::string tag = std::string("[") + v.tag + "]";
      add_row({"natsl_gdn_fwd" + tag, shape, median_ms(fwd, reps, st)});
      if (!v.fwd_only) add_row({"natsl_gdn_fwdbwd" + tag, shape, median_ms(fwdbwd, reps, st)});
      add_row({"stage state pass + output" + tag, shape, median_ms([&] { run_state_fwd(pl, args, in, pr, StateFwdOut{o, Tensor(), Tensor(), Tensor()}); }, reps, st)});
      if (!v.fwd_only) add_row({"stage bwd state passes (both)" + tag, shape, median_ms(bwd_states, reps, st)});
      if (!v.fwd_only)
        add_row({"stage state pass storing h, v_new (bwd)" + tag, shape,
                 median_ms([&] { run_state_fwd(pl, args, in, pr, StateFwdOut{Tensor(), Tensor(), h, vn}); }, reps, st)});
      if (!v.fwd_only)
        add_row({"stage reverse state pass (bwd)" + tag, shape,
                 median_ms([&] { run_state_bwd(pl, args, in, pr, dout, Tensor(), Tensor(), dh, dv2); }, reps, st)});
      if (!v.fwd_only) add_row({"stage prep" + tag, shape, median_ms([&] { run_prep(pl, args, in, saved, false); }, reps, st)});
      if (!v.fwd_only) add_row({"stage prep recompute" + tag, shape, median_ms([&] { run_prep(pl, args, in, saved, true); }, reps, st)});
    }
    use_plan(kVariants[0].plan);
    NATSL_CUDA_CHECK(cudaStreamSynchronize(st));
  }

  const std::string date = bench::utc_date();
  std::ofstream json;  // JSON lines (bench_results.h)
  if (!json_out.empty()) json.open(json_out);
  std::printf("%-46s %-28s %10s %10s %7s\n", "what", "shape", "ours ms", "FLA ms", "ratio");
  for (const Row& r : rows) {
    std::string pname;
    double pm = -1;
    int64_t B = r.shape.rfind("B8", 0) == 0 ? 8 : 2, T = B == 8 ? 4096 : 16384;
    if (r.name.rfind("natsl_gdn_fwdbwd", 0) == 0) pname = "fla_gdn_fwdbwd";
    else if (r.name.rfind("natsl_gdn_fwd", 0) == 0) pname = "fla_gdn_fwd";
    if (!pname.empty()) pm = peer_ms(pname, B, T);
    const double ratio = pm > 0 ? r.ms / pm : -1;
    if (pm > 0) std::printf("%-46s %-28s %10.4f %10.4f %7.3f\n", r.name.c_str(), r.shape.c_str(), r.ms, pm, ratio);
    else std::printf("%-46s %-28s %10.4f %10s %7s\n", r.name.c_str(), r.shape.c_str(), r.ms, "-", "-");
    const nlohmann::json row = bench::result_row(r.name, r.shape, r.ms, "fla " + pname, pm, prop.name, commit, date);
    if (json) json << row.dump() << "\n";
  }
  return 0;
}
