// Times natsl's equivalent of the NAtS-L reference's mixed op (nats_mixed_attn_gdn, Triton), as peers.py times
// it: the chunk-selected softmax attention (12 heads, Dk 64, Dv 128, 6 router heads) and the masked Gated
// DeltaNet (6 heads, K 128, V 256, with q and k L2-normalised as lattn_use_qk_l2norm_in_kernel=True does) on
// the same q, k, v memory, bf16 data, f32 g and beta, chunks of 64. Per (batch, chunk, router head) a random
// draw picks softmax with probability `frac`, GDN otherwise; the last chunk goes to both.
//   forward      = index build, l2norm(q, k), attention fwd, GDN fwd (nothing saved: the peer runs under
//                  torch.no_grad)
//   forward+bwd  = the same with the GDN's saved tensors, then the backward of L = sum o_a^2 + sum o_g^2:
//                  dout = 2 o for both outputs, attention bwd (with the router gradient dm), GDN bwd (with
//                  dmask), l2norm bwd, and the sums of the two branches' dq, dk, dv (the peer's autograd adds
//                  them as well). Not timed: the loss value itself (a reduction of o the backward does not need).
// Kernel-level APIs, buffers allocated once (the index per call, as the layer builds it). CUDA events, warm-up,
// median of repeats (bench_timing.h). The peer is timed by peers.py --what nats in the same session; --peer
// reads its anchors JSON (rows natsl_mixed_fwd / natsl_mixed_fwdbwd with B, T, frac) for the ratio.
//   natsl_bench_natsl [--json out.jsonl] [--peer anchors.json] [--commit SHA] [--reps N]
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/cuda_check.h"
#include "core/philox.h"
#include "core/stream.h"
#include "experiments/bench/bench_results.h"
#include "experiments/bench/bench_timing.h"
#include "kernels/determinism.h"
#include "kernels/elementwise.h"
#include "kernels/gdn.h"
#include "kernels/nn.h"
#include "kernels/sparse_attention.h"

using namespace natsl;
using namespace natsl::kernels;

namespace {

using bench::median_ms;

// The NAtS-L layer of the reference's 340M model: 6 GDN heads of K 128 / V 256 viewed as 12 softmax heads of
// 64 / 128 (so softmax heads 2h and 2h+1 share GDN head h's memory and router head h).
constexpr int64_t kHg = 6, kK = 128, kV = 256, kHa = 12, kDa = 64, kDav = 128, kHr = 6;  // the chunk: natsl::kChunk (kernels/chunk.h)
constexpr double kL2Eps = 1e-6;  // FLA's l2norm

struct Point {
  int64_t B, T;
  double frac;
};

struct Row {
  std::string name, shape, peer;
  int64_t B, T;
  double frac, selected, ms, peer_ms;
};

std::string fmt_frac(double f) {
  char s[16];
  std::snprintf(s, sizeof s, "%.3g", f);
  return s;
}

// Every tensor of one point, allocated once.
struct Buffers {
  Tensor qr, kr, v;        // raw q, k [B, T, Hg K]; v [B, T, Hg V] (bf16)
  Tensor mask_s, mask_g;   // [B, NC, Hr] f32 0/1
  double selected = 0;     // fraction of (b, c, r) picked for softmax, last chunk included
  // softmax branch
  Tensor qa, ka, va, oa, lse, douta, dqa, dka, dva, dm;
  // GDN branch
  GdnInputs in;
  Tensor rq, rk, og, doutg, dqn, dkn;
  GdnSaved saved;
  GdnGrads gr;
  // the two branches' gradients summed
  Tensor dq, dk, dv;
};

Buffers make_buffers(const Point& p, Generator& gen) {
  const Device dev = Device::cuda(0);
  const int64_t B = p.B, T = p.T, NC = (T + kChunk - 1) / kChunk;
  auto rnd = [&](const natsl::Shape& s) {
    Tensor t = Tensor::empty(s, DType::bf16, dev);
    normal_(t, gen, 0.0, 1.0);
    return t;
  };
  auto bf = [&](const natsl::Shape& s) { return Tensor::empty(s, DType::bf16, dev); };
  auto f32 = [&](const natsl::Shape& s) { return Tensor::empty(s, DType::f32, dev); };
  auto host_uniform = [&](const natsl::Shape& s) {
    Tensor t = f32(s);
    uniform_(t, gen, 0.0, 1.0);
    return t.to_vector<float>();
  };
  auto host_normal = [&](const natsl::Shape& s) {
    Tensor t = f32(s);
    normal_(t, gen, 0.0, 1.0);
    return t.to_vector<float>();
  };

  Buffers b;
  b.qr = rnd({B, T, kHg * kK});
  b.kr = rnd({B, T, kHg * kK});
  b.v = rnd({B, T, kHg * kV});

  // Selection as peers.py draws it: softmax where U(0,1) < frac, GDN elsewhere, the last chunk both.
  std::vector<float> u = host_uniform({B, NC, kHr}), ms(u.size()), mg(u.size());
  double picked = 0;
  for (int64_t bi = 0; bi < B; ++bi)
    for (int64_t c = 0; c < NC; ++c)
      for (int64_t r = 0; r < kHr; ++r) {
        const size_t i = size_t((bi * NC + c) * kHr + r);
        const bool sel = u[i] < p.frac || p.frac >= 1.0;
        const bool last = c == NC - 1;
        ms[i] = sel || last ? 1.f : 0.f;
        mg[i] = !sel || last ? 1.f : 0.f;
        picked += ms[i];
      }
  b.selected = picked / double(u.size());
  b.mask_s = Tensor::from_vector(ms, {B, NC, kHr}, DType::f32, dev);
  b.mask_g = Tensor::from_vector(mg, {B, NC, kHr}, DType::f32, dev);

  // Softmax branch: views of the raw q, k, v.
  b.qa = b.qr.view({B, T, kHa, kDa});
  b.ka = b.kr.view({B, T, kHa, kDa});
  b.va = b.v.view({B, T, kHa, kDav});
  b.oa = bf({B, T, kHa, kDav});
  b.lse = f32({B, T, kHa});
  b.douta = bf(b.oa.shape());
  b.dqa = bf(b.qa.shape());
  b.dka = bf(b.ka.shape());
  b.dva = bf(b.va.shape());
  b.dm = f32({B, NC, kHr});

  // GDN branch: g = logsigmoid(N(0,1) + 4), beta = sigmoid(U(0,1)), as peers.py draws them.
  std::vector<float> g = host_normal({B, T, kHg}), beta = host_uniform({B, T, kHg});
  for (float& x : g) x = -std::log1p(std::exp(-(x + 4.f)));
  for (float& x : beta) x = 1.f / (1.f + std::exp(-x));
  b.in.q = bf({B, T, kHg, kK});
  b.in.k = bf({B, T, kHg, kK});
  b.in.v = b.v.view({B, T, kHg, kV});
  b.in.g = Tensor::from_vector(g, {B, T, kHg}, DType::f32, dev);
  b.in.beta = Tensor::from_vector(beta, {B, T, kHg}, DType::f32, dev);
  b.in.mask = b.mask_g.view({B * NC, kHg});  // the router's [B, NC, Hr] memory, one router head per GDN head
  b.rq = f32({B, T, kHg});
  b.rk = f32({B, T, kHg});
  b.og = bf({B, T, kHg, kV});
  b.doutg = bf(b.og.shape());
  b.dqn = bf(b.in.q.shape());
  b.dkn = bf(b.in.k.shape());
  b.saved = GdnSaved{f32({B, T, kHg}), bf({B, T, kHg, kGdnChunk})};
  b.gr = GdnGrads{bf(b.in.q.shape()), bf(b.in.k.shape()), bf(b.in.v.shape()), f32({B, T, kHg}), f32({B, T, kHg}),
                  Tensor(), f32({B * NC, kHg})};

  b.dq = bf(b.qr.shape());
  b.dk = bf(b.kr.shape());
  b.dv = bf(b.v.shape());
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_out, peer_file, commit = "unknown";
  int reps = 30;
  for (int i = 1; i < argc; i += 2) {
    const std::string k = argv[i];
    if (i + 1 >= argc || (k != "--json" && k != "--peer" && k != "--commit" && k != "--reps")) {
      std::fprintf(stderr,
                   "usage: natsl_bench_natsl [--json out.jsonl] [--peer anchors.json] [--commit SHA] [--reps N]\n");
      return 2;
    }
    if (k == "--json") json_out = argv[i + 1];
    else if (k == "--peer") peer_file = argv[i + 1];
    else if (k == "--commit") commit = argv[i + 1];
    else reps = std::stoi(argv[i + 1]);
  }
  cudaStream_t st = activate(0);
  cudaDeviceProp prop{};
  NATSL_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));

  // The peer's rows; a missing or unreadable file leaves the peer columns at -1 (peers.py may have failed).
  const nlohmann::json peer = bench::read_peer_file(peer_file);
  auto peer_ms = [&](const std::string& name, const Point& p) -> double {
    if (!peer.is_object() || !peer.contains("rows")) return -1;
    for (auto& r : peer["rows"])
      if (r.value("name", "") == name && r.value("B", int64_t(0)) == p.B && r.value("T", int64_t(0)) == p.T &&
          std::fabs(r.value("frac", -1.0) - p.frac) < 1e-9)
        return r.value("ms", -1.0);
    return -1;
  };

  const std::vector<Point> points = {{8, 4096, 0.0}, {8, 4096, 0.25}, {8, 4096, 1.0}, {2, 16384, 0.25}};
  std::vector<Row> rows;
  Generator gen(1234);
  for (const Point& p : points) {
    Buffers b = make_buffers(p, gen);
    SparseAttentionArgs aargs;
    aargs.scale = 1.0 / std::sqrt(double(kDa));
    GdnArgs gargs;
    gargs.scale = 1.0 / std::sqrt(double(kK));
    const Tensor qg_raw = b.qr.view({p.B, p.T, kHg, kK}), kg_raw = b.kr.view({p.B, p.T, kHg, kK});

    SparseAttentionIndex idx;
    auto fwd_attn = [&] {
      idx = sparse_attention_index(b.mask_s, kChunk);
      sparse_attention_fwd(aargs, idx, b.qa, b.ka, b.va, b.oa, b.lse);
    };
    auto fwd_gdn = [&](const GdnSaved& saved) {
      l2norm_fwd(qg_raw, kL2Eps, b.in.q, b.rq);
      l2norm_fwd(kg_raw, kL2Eps, b.in.k, b.rk);
      gdn_chunk_fwd(gargs, b.in, b.og, Tensor(), saved);
    };
    auto bwd_attn = [&] {
      scale(b.oa, 2.0, b.douta);
      sparse_attention_bwd(aargs, idx, b.qa, b.ka, b.va, b.oa, b.lse, b.douta, b.dqa, b.dka, b.dva, b.dm);
    };
    auto bwd_gdn = [&] {
      scale(b.og, 2.0, b.doutg);
      gdn_chunk_bwd(gargs, b.in, b.saved, b.doutg, Tensor(), b.gr);
      l2norm_bwd(b.in.q, b.rq, b.gr.dq, b.dqn);
      l2norm_bwd(b.in.k, b.rk, b.gr.dk, b.dkn);
    };
    // Both branches read the same q, k, v: their gradients add up (dq, dk as [B, T, Hg K], dv as [B, T, Hg V]).
    auto sum_grads = [&] {
      axpby(1.0, b.dqa.view(b.dq.shape()), 1.0, b.dqn.view(b.dq.shape()), b.dq);
      axpby(1.0, b.dka.view(b.dk.shape()), 1.0, b.dkn.view(b.dk.shape()), b.dk);
      axpby(1.0, b.dva.view(b.dv.shape()), 1.0, b.gr.dv.view(b.dv.shape()), b.dv);
    };
    auto fwd = [&] {
      fwd_attn();
      fwd_gdn(GdnSaved{});
    };
    auto fwdbwd = [&] {
      fwd_attn();
      fwd_gdn(b.saved);
      bwd_attn();
      bwd_gdn();
      sum_grads();
    };

    const std::string shape = "B" + std::to_string(p.B) + " T" + std::to_string(p.T) + " frac " + fmt_frac(p.frac) +
                              " (sel " + fmt_frac(b.selected) + ")";
    auto add = [&](const std::string& name, double ms, const std::string& peer_name) {
      const double pm = peer_name.empty() ? -1 : peer_ms(peer_name, p);
      rows.push_back({name, shape, peer_name.empty() ? "" : "nats-triton", p.B, p.T, p.frac, b.selected, ms, pm});
    };
    add("natsl_mixed_fwd", median_ms(fwd, reps, st), "natsl_mixed_fwd");
    add("natsl_mixed_fwdbwd", median_ms(fwdbwd, reps, st), "natsl_mixed_fwdbwd");
    // Where the time goes: each branch alone (forward with saved tensors + its backward), and the sums.
    add("part attention fwd+bwd", median_ms([&] { fwd_attn(); bwd_attn(); }, reps, st), "");
    add("part gdn+l2norm fwd+bwd", median_ms([&] { fwd_gdn(b.saved); bwd_gdn(); }, reps, st), "");
    add("part gradient sums", median_ms(sum_grads, reps, st), "");
    {
      // The price of train.deterministic (kernels/determinism.h): the attention backward's ordered dq.
      kernels::DeterministicGuard det(true);
      add("deterministic mixed fwd+bwd", median_ms(fwdbwd, reps, st), "natsl_mixed_fwdbwd");
      add("deterministic attention fwd+bwd", median_ms([&] { fwd_attn(); bwd_attn(); }, reps, st), "");
    }
    NATSL_CUDA_CHECK(cudaStreamSynchronize(st));
  }

  const std::string date = bench::utc_date();
  std::ofstream json;  // JSON lines (bench_results.h)
  if (!json_out.empty()) json.open(json_out);
  std::printf("%-26s %-34s %9s %-12s %9s %7s\n", "what", "shape", "ours ms", "peer", "peer ms", "ratio");
  for (const Row& r : rows) {
    const bool has_peer = r.peer_ms > 0;
    const double ratio = has_peer ? r.ms / r.peer_ms : 0;
    if (has_peer)
      std::printf("%-26s %-34s %9.4f %-12s %9.4f %7.3f\n", r.name.c_str(), r.shape.c_str(), r.ms, r.peer.c_str(),
                  r.peer_ms, ratio);
    else
      std::printf("%-26s %-34s %9.4f %-12s %9s %7s\n", r.name.c_str(), r.shape.c_str(), r.ms, "-", "-", "-");
    nlohmann::json row = bench::result_row(r.name, r.shape, r.ms, r.peer, r.peer_ms, prop.name, commit, date);
    row["B"] = r.B;
    row["T"] = r.T;
    row["frac"] = r.frac;
    row["selected"] = r.selected;
    if (json) json << row.dump() << "\n";
  }
  return 0;
}
