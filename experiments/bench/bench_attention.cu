// Times natsl's chunk-selected causal attention (bf16, chunk 64) on the GPU: full selection (= causal
// attention, the Transformer++ case) at B8 T4096 H12 with D = 64 and 128, forward and forward+backward, against
// PyTorch SDPA's flash and cuDNN backends timed by peers.py in the same run (--peer anchors.json); and the
// curve over selected fractions 0 .. 1 (random selections) at the NAtS-L layer's shape (12 heads, 6 router
// heads, Dk 64, Dv 128), against our own full-selection time. CUDA events, warm-up, median of repeats.
//   natsl_bench_attention [--json out.jsonl] [--peer anchors.json] [--commit SHA] [--reps N]
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/cuda_check.h"
#include "core/philox.h"
#include "core/stream.h"
#include "experiments/bench/bench_results.h"
#include "experiments/bench/bench_timing.h"
#include "kernels/cuda/sparse_attention.cuh"
#include "kernels/sparse_attention.h"

using namespace natsl;
using namespace natsl::kernels;

namespace {

using bench::median_ms;

struct Row {
  std::string name, shape, peer;
  double ms, peer_ms, tflops;
};

struct Problem {
  int64_t B, T, Ha, Hr, Dk, Dv;
  std::string shape() const {
    return "B" + std::to_string(B) + " T" + std::to_string(T) + " H" + std::to_string(Ha) + " Hr" + std::to_string(Hr) +
           " Dk" + std::to_string(Dk) + " Dv" + std::to_string(Dv);
  }
};

// Query-key pairs computed (own chunk causal, selected chunks whole), from the host copy of the index.
double visible_pairs(const SparseAttentionIndex& idx, int64_t T, int64_t Ha) {
  const std::vector<int32_t> pre = idx.prefix.to_vector<int32_t>();
  const int64_t B = idx.batch(), Hr = idx.router_heads(), NC = idx.num_chunks(), C = idx.chunk_size;
  double pairs = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r = 0; r < Hr; ++r)
      for (int64_t qc = 0; qc < NC; ++qc) {
        const int64_t rows = std::min(C, T - qc * C);
        pairs += double(rows) * (rows + 1) / 2 + double(rows) * C * pre[size_t((b * Hr + r) * (NC + 1) + qc)];
      }
  return pairs * double(Ha / Hr);
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_out, peer_file, commit = "unknown";
  int reps = 30;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k == "--json") json_out = argv[i + 1];
    else if (k == "--peer") peer_file = argv[i + 1];
    else if (k == "--commit") commit = argv[i + 1];
    else if (k == "--reps") reps = std::stoi(argv[i + 1]);
  }
  const Device dev = Device::cuda(0);
  cudaStream_t st = activate(0);
  cudaDeviceProp prop{};
  NATSL_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));

  const nlohmann::json peer = bench::read_peer_file(peer_file);
  auto peer_ms = [&](const std::string& name, const Problem& p) -> double {
    if (!peer.contains("rows")) return -1;
    for (auto& r : peer["rows"])
      if (r.value("name", "") == name && r.value("B", 0) == p.B && r.value("T", 0) == p.T && r.value("H", 0) == p.Ha &&
          r.value("D", 0) == p.Dk)
        return r["ms"].get<double>();
    return -1;
  };

  std::vector<Row> rows;
  Generator gen(1234);

  // One problem at one selection: returns {fwd ms, fwd+bwd ms}; adds rows.
  auto time_problem = [&](const Problem& p, double fraction, const std::string& tag, bool variants) {
    const int64_t NC = (p.T + 63) / 64;
    auto rnd = [&](const natsl::Shape& s) {
      Tensor t = Tensor::empty(s, DType::bf16, dev);
      normal_(t, gen, 0.0, 1.0);
      return t;
    };
    Tensor q = rnd({p.B, p.T, p.Ha, p.Dk}), k = rnd({p.B, p.T, p.Ha, p.Dk}), v = rnd({p.B, p.T, p.Ha, p.Dv});
    Tensor dout = rnd({p.B, p.T, p.Ha, p.Dv});
    Tensor u = Tensor::empty({p.B, NC, p.Hr}, DType::f32, dev);
    uniform_(u, gen, 0.0, 1.0);
    std::vector<float> m = u.to_vector<float>();
    for (float& x : m) x = x < fraction ? 1.f : 0.f;
    Tensor mask = Tensor::from_vector(m, u.shape(), DType::f32, dev);
    SparseAttentionIndex idx = sparse_attention_index(mask, 64);
    SparseAttentionArgs args;
    args.scale = 1.0 / std::sqrt(double(p.Dk));
    Tensor o = Tensor::empty(v.shape(), DType::bf16, dev), lse = Tensor::empty({p.B, p.T, p.Ha}, DType::f32, dev);
    Tensor dq = Tensor::empty(q.shape(), DType::bf16, dev), dk = Tensor::empty(k.shape(), DType::bf16, dev);
    Tensor dv = Tensor::empty(v.shape(), DType::bf16, dev), dm = Tensor::empty({p.B, NC, p.Hr}, DType::f32, dev);
    auto fwd = [&] { sparse_attention_fwd(args, idx, q, k, v, o, lse); };
    auto fwdbwd = [&] {
      fwd();
      sparse_attention_bwd(args, idx, q, k, v, o, lse, dout, dq, dk, dv, dm);
    };
    const double pairs = visible_pairs(idx, p.T, p.Ha);
    const double fl = 2.0 * double(p.Dk + p.Dv) * pairs;  // forward FLOPs executed; bwd = 2.5x (FA convention)
    const std::string shape = p.shape() + " sel " + std::to_string(fraction).substr(0, 5);
    const double tf = median_ms(fwd, reps, st), tfb = median_ms(fwdbwd, reps, st);
    rows.push_back({"natsl_attn_fwd" + tag, shape, "", tf, -1, fl / tf / 1e9});
    rows.push_back({"natsl_attn_fwdbwd" + tag, shape, "", tfb, -1, 3.5 * fl / tfb / 1e9});
    if (variants) {
      namespace sa = natsl::kernels::cuda::sparse_attn;
      sa::Geometry g{int(p.B), int(p.T), int(p.Ha), int(p.Hr), int(p.Ha / p.Hr), int(p.Dk), int(p.Dv), int(NC), 64,
                     float(args.scale), idx.chunks.data<int32_t>(), idx.prefix.data<int32_t>()};
      sa::FwdPtrs fp{q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse.data<float>()};
      for (int rpw : {16, 32}) {
        const double t = median_ms([&] { sa::tc_fwd(g, fp, st, rpw); }, reps, st);
        rows.push_back({"variant fwd " + std::to_string(rpw) + " rows/warp", shape, "", t, -1, fl / t / 1e9});
      }
      if (sa::wgmma_fwd_supported(g, 0)) {  // the default forward on sm_90 (natsl_attn_fwd above), named
        const double t = median_ms([&] { sa::wgmma_fwd(g, fp, st); }, reps, st);
        rows.push_back({"variant fwd wgmma", shape, "", t, -1, fl / t / 1e9});
      }
      const double ti = median_ms([&] { sparse_attention_index(mask, 64); }, reps, st);
      rows.push_back({"index build", shape, "", ti, -1, 0});
    }
    NATSL_CUDA_CHECK(cudaStreamSynchronize(st));
    return std::make_pair(tf, tfb);
  };

  // Full selection against SDPA.
  for (int64_t D : {64, 128}) {
    const Problem p{8, 4096, 12, 12, D, D};
    const size_t at = rows.size();
    time_problem(p, 1.0, "", true);
    for (const char* be : {"flash_attention", "cudnn_attention"})
      for (int which = 0; which < 2; ++which) {
        Row r = rows[at + which];
        r.peer = std::string("sdpa_") + be + (which == 0 ? "_fwd" : "_fwdbwd");
        r.peer_ms = peer_ms(r.peer, p);
        rows.push_back(r);
      }
    rows.erase(rows.begin() + at, rows.begin() + at + 2);
  }

  // The curve over selected fractions at the NAtS-L shape, ratios against our full selection.
  const Problem nl{8, 4096, 12, 6, 64, 128};
  std::vector<Row> curve;
  double full_f = -1, full_fb = -1;
  for (double f : {1.0, 0.5, 0.25, 0.125, 0.0}) {
    const size_t at = rows.size();
    auto [tf, tfb] = time_problem(nl, f, "", f == 1.0);
    if (f == 1.0) full_f = tf, full_fb = tfb;
    rows[at].peer = "natsl full selection";
    rows[at].peer_ms = full_f;
    rows[at + 1].peer = "natsl full selection";
    rows[at + 1].peer_ms = full_fb;
  }

  const std::string date = bench::utc_date();
  std::ofstream json;  // JSON lines (bench_results.h)
  if (!json_out.empty()) json.open(json_out);
  std::printf("%-30s %-44s %9s %8s %-26s %9s %7s\n", "what", "shape", "ours ms", "TFLOP/s", "peer", "peer ms", "ratio");
  for (const Row& r : rows) {
    const double ratio = r.peer_ms > 0 ? r.ms / r.peer_ms : -1;
    std::printf("%-30s %-44s %9.4f %8.1f %-26s %9.4f %7.3f\n", r.name.c_str(), r.shape.c_str(), r.ms, r.tflops,
                r.peer.c_str(), r.peer_ms, ratio);
    nlohmann::json row = bench::result_row(r.name, r.shape, r.ms, r.peer, r.peer_ms, prop.name, commit, date);
    row["tflops_executed"] = r.tflops;
    if (json) json << row.dump() << "\n";
  }
  return 0;
}
