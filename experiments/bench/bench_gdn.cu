// Times natsl's chunked Gated DeltaNet kernels (bf16) at the issue's shapes: forward and forward+backward,
// with the L2 norm of q and k (forward and backward) included as FLA's use_qk_l2norm_in_kernel=True does, and a
// per-stage split. CUDA events, warm-up, median of repeated runs. The FLA peer is timed by peers.py in the same
// run; --peer FILE reads its anchors JSON to print the ratio.
//   natsl_bench_gdn [--json out.jsonl] [--peer anchors.json] [--commit SHA] [--reps N] [--keep-pool 0|1]
//                   [--skip TAG_PART]   (variants whose tag contains TAG_PART are left out)
//                   [--variants 0|1]    (0: the default layout only, no variant rows; default 1)
//                   [--only A,B,...]     (only the variants whose tag contains one of the parts; no backward-layout rows)
//                   [--shapes all|b8|b2] (which of the two shapes to run; default all)
// Kernel layouts: each row tagged [variant] runs with the environment switches of kVariants below.
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
#include "kernels/cuda/gdn_bwd.cuh"
#include "kernels/cuda/gdn_state_fwd.cuh"
#include "kernels/gdn.h"
#include "kernels/nn.h"

using namespace natsl;
using namespace natsl::kernels;

namespace {

using bench::median_ms;

// Kernel layouts selectable through the environment (kernels/cuda/gdn_state_fwd.cuh, gdn_prep.cu); the first is
// the default choice, "old" the kernels before the layout options existed. Each variant sets the switches it
// names and unsets the others. fwd_only: the variant changes only the forward (its backward rows are skipped).
// diag* variants compute wrong results on purpose (NATSL_GDN_DIAG): they time the pass's loads or its compute.
struct EnvSet {
  const char *name, *value;
};
struct Variant {
  const char* tag;
  std::vector<EnvSet> env;
  bool fwd_only;
};
const char* const kEnvNames[] = {"NATSL_GDN_VTILE", "NATSL_GDN_STAGES",       "NATSL_GDN_JOINT",
                                 "NATSL_GDN_PREP",  "NATSL_GDN_PREP_STORE",   "NATSL_GDN_L2PF",
                                 "NATSL_GDN_SPLIT", "NATSL_GDN_SPLIT_STAGES", "NATSL_GDN_DIAG",
                                 "NATSL_GDN_FWD_BULK", "NATSL_GDN_WS",   "NATSL_GDN_OCC2",
                                 "NATSL_GDN_OUT", "NATSL_GDN_TMA", "NATSL_GDN_TMA_STAGES",
                                 "NATSL_GDN_BWD_TMA", "NATSL_GDN_BWD_TMA_VTILE", "NATSL_GDN_BWD_TMA_STAGES",
                                 "NATSL_GDN_FWD_STORE"};
const std::vector<Variant> kVariants = {
    {"default", {}, false},
    {"tma_off", {{"NATSL_GDN_TMA", "0"}}, true},
    {"prep2", {{"NATSL_GDN_PREP", "2"}}, false},
    {"prep3", {{"NATSL_GDN_PREP", "3"}}, false},
    {"occ2", {{"NATSL_GDN_OCC2", "1"}}, false},
    {"occ2_vt64", {{"NATSL_GDN_OCC2", "1"}, {"NATSL_GDN_VTILE", "64"}}, false},
    {"occ0_ws", {{"NATSL_GDN_OCC2", "0"}, {"NATSL_GDN_WS", "1"}}, false},
    {"old", {{"NATSL_GDN_VTILE", "64"}, {"NATSL_GDN_STAGES", "2"}, {"NATSL_GDN_JOINT", "0"}, {"NATSL_GDN_PREP", "old"},
             {"NATSL_GDN_PREP_STORE", "direct"}, {"NATSL_GDN_WS", "0"}, {"NATSL_GDN_SPLIT", "0"}}, false},
    {"vt64s2", {{"NATSL_GDN_VTILE", "64"}, {"NATSL_GDN_STAGES", "2"}, {"NATSL_GDN_SPLIT", "0"}, {"NATSL_GDN_WS", "0"}}, false},
    {"vt32s2", {{"NATSL_GDN_VTILE", "32"}, {"NATSL_GDN_STAGES", "2"}, {"NATSL_GDN_SPLIT", "0"}, {"NATSL_GDN_WS", "0"}}, false},
    {"vt32s1", {{"NATSL_GDN_VTILE", "32"}, {"NATSL_GDN_STAGES", "1"}, {"NATSL_GDN_SPLIT", "0"}, {"NATSL_GDN_WS", "0"}}, false},
    {"prep_staged", {{"NATSL_GDN_PREP_STORE", "staged"}}, false},
    {"prep_direct", {{"NATSL_GDN_PREP_STORE", "direct"}}, false},
    {"l2pf2", {{"NATSL_GDN_TMA", "0"}, {"NATSL_GDN_L2PF", "2"}, {"NATSL_GDN_SPLIT", "0"}, {"NATSL_GDN_WS", "0"}}, true},
    {"split_s3", {{"NATSL_GDN_TMA", "0"}, {"NATSL_GDN_SPLIT", "1"}, {"NATSL_GDN_SPLIT_STAGES", "3"}, {"NATSL_GDN_WS", "0"}}, true},
    {"split_s4", {{"NATSL_GDN_TMA", "0"}, {"NATSL_GDN_SPLIT", "1"}, {"NATSL_GDN_SPLIT_STAGES", "4"}, {"NATSL_GDN_WS", "0"}}, true},
    {"split_s3_vt32", {{"NATSL_GDN_TMA", "0"}, {"NATSL_GDN_SPLIT", "1"}, {"NATSL_GDN_SPLIT_STAGES", "3"}, {"NATSL_GDN_VTILE", "32"}, {"NATSL_GDN_WS", "0"}}, true},
    {"fused_ws", {{"NATSL_GDN_TMA", "0"}, {"NATSL_GDN_WS", "1"}, {"NATSL_GDN_SPLIT", "0"}}, true},
    {"fused_no_ws", {{"NATSL_GDN_TMA", "0"}, {"NATSL_GDN_WS", "0"}, {"NATSL_GDN_SPLIT", "0"}}, true},
    {"tma", {{"NATSL_GDN_TMA", "1"}}, true},
    {"tma_s1", {{"NATSL_GDN_TMA", "1"}, {"NATSL_GDN_TMA_STAGES", "1"}}, true},
    {"fwd_store_direct", {{"NATSL_GDN_FWD_STORE", "direct"}}, false},
    {"bwd_tma", {{"NATSL_GDN_BWD_TMA", "1"}}, false},
    {"bwd_tma_fwd_store_direct", {{"NATSL_GDN_BWD_TMA", "1"}, {"NATSL_GDN_FWD_STORE", "direct"}}, false},
    {"bwd_tma_s1", {{"NATSL_GDN_BWD_TMA", "1"}, {"NATSL_GDN_BWD_TMA_STAGES", "1"}}, false},
    {"bwd_tma_vt32", {{"NATSL_GDN_BWD_TMA", "1"}, {"NATSL_GDN_BWD_TMA_VTILE", "32"}}, false},
    {"bwd_tma_vt32_s1", {{"NATSL_GDN_BWD_TMA", "1"}, {"NATSL_GDN_BWD_TMA_VTILE", "32"}, {"NATSL_GDN_BWD_TMA_STAGES", "1"}}, false},
    {"bwd_tma_vt32_s3", {{"NATSL_GDN_BWD_TMA", "1"}, {"NATSL_GDN_BWD_TMA_VTILE", "32"}, {"NATSL_GDN_BWD_TMA_STAGES", "3"}}, false},
    {"tma_s2", {{"NATSL_GDN_TMA", "1"}, {"NATSL_GDN_TMA_STAGES", "2"}}, true},
    {"tma_vt32", {{"NATSL_GDN_TMA", "1"}, {"NATSL_GDN_VTILE", "32"}}, true},
    {"tma_vt64", {{"NATSL_GDN_TMA", "1"}, {"NATSL_GDN_VTILE", "64"}}, true},
    {"fused_ws_vt32", {{"NATSL_GDN_TMA", "0"}, {"NATSL_GDN_WS", "1"}, {"NATSL_GDN_VTILE", "32"}, {"NATSL_GDN_SPLIT", "0"}}, true},
    {"fused_ws_vt64", {{"NATSL_GDN_TMA", "0"}, {"NATSL_GDN_WS", "1"}, {"NATSL_GDN_VTILE", "64"}, {"NATSL_GDN_SPLIT", "0"}}, true},
    {"split_s3_ws", {{"NATSL_GDN_TMA", "0"}, {"NATSL_GDN_SPLIT", "1"}, {"NATSL_GDN_SPLIT_STAGES", "3"}, {"NATSL_GDN_WS", "1"}}, true},
    {"split_s3_ws_out1", {{"NATSL_GDN_TMA", "0"}, {"NATSL_GDN_SPLIT", "1"}, {"NATSL_GDN_SPLIT_STAGES", "3"}, {"NATSL_GDN_WS", "1"},
                          {"NATSL_GDN_OUT", "1"}}, true},
    {"split_s4_ws", {{"NATSL_GDN_TMA", "0"}, {"NATSL_GDN_SPLIT", "1"}, {"NATSL_GDN_SPLIT_STAGES", "4"}, {"NATSL_GDN_WS", "1"}}, true},
    {"split_s4_ws_vt64", {{"NATSL_GDN_TMA", "0"}, {"NATSL_GDN_SPLIT", "1"}, {"NATSL_GDN_SPLIT_STAGES", "4"}, {"NATSL_GDN_WS", "1"},
                          {"NATSL_GDN_VTILE", "64"}}, true},
    {"bulk", {{"NATSL_GDN_TMA", "0"}, {"NATSL_GDN_FWD_BULK", "1"}, {"NATSL_GDN_SPLIT", "0"}, {"NATSL_GDN_WS", "0"}}, true},
    {"split_s3_bulk", {{"NATSL_GDN_TMA", "0"}, {"NATSL_GDN_SPLIT", "1"}, {"NATSL_GDN_SPLIT_STAGES", "3"}, {"NATSL_GDN_FWD_BULK", "1"}, {"NATSL_GDN_WS", "0"}}, true},
    {"split_s4_bulk", {{"NATSL_GDN_TMA", "0"}, {"NATSL_GDN_SPLIT", "1"}, {"NATSL_GDN_SPLIT_STAGES", "4"}, {"NATSL_GDN_FWD_BULK", "1"}, {"NATSL_GDN_WS", "0"}}, true},
    {"diag_loads_only", {{"NATSL_GDN_TMA", "0"}, {"NATSL_GDN_DIAG", "1"}, {"NATSL_GDN_WS", "0"}, {"NATSL_GDN_SPLIT", "0"}}, true},
    {"diag_bulk_loads_only", {{"NATSL_GDN_TMA", "0"}, {"NATSL_GDN_FWD_BULK", "1"}, {"NATSL_GDN_DIAG", "1"}, {"NATSL_GDN_WS", "0"}, {"NATSL_GDN_SPLIT", "0"}}, true},
    {"diag_compute_only", {{"NATSL_GDN_TMA", "0"}, {"NATSL_GDN_DIAG", "2"}, {"NATSL_GDN_WS", "0"}, {"NATSL_GDN_SPLIT", "0"}}, true},
    {"diag_split_s3_loads_only", {{"NATSL_GDN_TMA", "0"}, {"NATSL_GDN_SPLIT", "1"}, {"NATSL_GDN_SPLIT_STAGES", "3"}, {"NATSL_GDN_DIAG", "1"}, {"NATSL_GDN_WS", "0"}}, true},
    {"diag_split_s3_compute_only", {{"NATSL_GDN_TMA", "0"}, {"NATSL_GDN_SPLIT", "1"}, {"NATSL_GDN_SPLIT_STAGES", "3"}, {"NATSL_GDN_DIAG", "2"}, {"NATSL_GDN_WS", "0"}}, true},
};
void set_variant(const Variant& v) {
  for (const char* n : kEnvNames) unsetenv(n);
  for (const EnvSet& e : v.env) setenv(e.name, e.value, 1);
}

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

    auto fwd = [&] {
      l2norm_fwd(qr, 1e-6, in.q, rq);
      l2norm_fwd(kr, 1e-6, in.k, rk);
      gdn_chunk_fwd(args, in, o, Tensor(), saved);
    };
    auto fwdbwd = [&] {
      fwd();
      gdn_chunk_bwd(args, in, saved, dout, Tensor(), gr);
      l2norm_bwd(in.q, rq, gr.dq, dqn);
      l2norm_bwd(in.k, rk, gr.dk, dkn);
    };
    set_variant(kVariants[0]);
    add_row({"natsl_gdn_fwd", shape, median_ms(fwd, reps, st)});
    add_row({"natsl_gdn_fwdbwd", shape, median_ms(fwdbwd, reps, st)});

    // Per-stage split (each stage timed alone on the same inputs).
    using namespace natsl::kernels::cuda::gdn;
    Plan pl = make_plan(args, in, "bench");
    const GdnShape& s = pl.s;
    PrepOut pr = run_prep(pl, args, in, saved, false);
    Tensor h = Tensor::empty({s.NC, s.HV, s.K, s.V}, DType::bf16, dev), vn = Tensor::empty({s.NC, s.HV, kC, s.V}, DType::bf16, dev);
    Tensor dh = Tensor::empty({s.NC, s.HV, s.K, s.V}, DType::bf16, dev), dv2 = Tensor::empty({s.NC, s.HV, kC, s.V}, DType::bf16, dev);
    run_state_fwd(pl, args, in, pr, StateFwdOut{Tensor(), Tensor(), h, vn});
    run_state_bwd(pl, args, in, pr, dout, Tensor(), Tensor(), dh, dv2);
    auto bwd_states = [&] {
      if (state_joint_enabled()) {
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
    // Backward layouts (gdn_state_bwd.cu: NATSL_GDN_BULK=1 bulk-copy loads, NATSL_GDN_BWD_STORE=staged|direct
    // stores and NATSL_GDN_BWD_L2PF=n L2 prefetching in the reverse pass, with the state-pass layouts they
    // combine with).
    if (variants && only.empty()) {
      struct BwdVariant {
        const char *tag, *bulk, *store, *vtile, *stages, *l2pf;
      };
      const BwdVariant bwd_variants[] = {
          {"store_direct", "0", "direct", nullptr, nullptr, nullptr},
          {"store_staged", "0", "staged", nullptr, nullptr, nullptr},
          {"bulk", "1", "direct", nullptr, nullptr, nullptr},
          {"bulk_staged", "1", "staged", nullptr, nullptr, nullptr},
          {"bulk_staged_vt64s2", "1", "staged", "64", "2", nullptr},
          {"bulk_staged_vt32s2", "1", "staged", "32", "2", nullptr},
          {"bulk_staged_vt32s1", "1", "staged", "32", "1", nullptr},
          {"bulk_staged_vt64s1", "1", "staged", "64", "1", nullptr},
          {"bwd_l2pf1", "0", "direct", nullptr, nullptr, "1"},
          {"bwd_l2pf2", "0", "direct", nullptr, nullptr, "2"},
          {"staged_l2pf2", "0", "staged", nullptr, nullptr, "2"},
          {"bulk_staged_l2pf2", "1", "staged", nullptr, nullptr, "2"},
      };
      auto put = [](const char* name, const char* value) {
        if (value) setenv(name, value, 1);
        else unsetenv(name);
      };
      for (const BwdVariant& v : bwd_variants) {
        put("NATSL_GDN_BULK", v.bulk);
        put("NATSL_GDN_BWD_STORE", v.store);
        put("NATSL_GDN_BWD_L2PF", v.l2pf);
        put("NATSL_GDN_VTILE", v.vtile);
        put("NATSL_GDN_STAGES", v.stages);
        const std::string tag = std::string("[") + v.tag + "]";
        add_row({"natsl_gdn_fwdbwd" + tag, shape, median_ms(fwdbwd, reps, st)});
        if (v.store) {
          add_row({"stage bwd state passes (both)" + tag, shape, median_ms(bwd_states, reps, st)});
          add_row({"stage reverse state pass (bwd)" + tag, shape, median_ms([&] { run_state_bwd(pl, args, in, pr, dout, Tensor(), Tensor(), dh, dv2); }, reps, st)});
        }
      }
      for (const char* n : {"NATSL_GDN_BULK", "NATSL_GDN_BWD_STORE", "NATSL_GDN_BWD_L2PF", "NATSL_GDN_VTILE",
                            "NATSL_GDN_STAGES"})
        unsetenv(n);
    }
    // The other kernel layouts (environment switches read by the dispatchers), headline and state passes.
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
      set_variant(v);
      const std::string tag = std::string("[") + v.tag + "]";
      const bool diag = v.tag[0] == 'd' && v.tag[1] == 'i';  // wrong results: time the stage only
      if (!diag) add_row({"natsl_gdn_fwd" + tag, shape, median_ms(fwd, reps, st)});
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
    set_variant(kVariants[0]);
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
