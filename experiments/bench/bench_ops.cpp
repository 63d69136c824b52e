// Times natsl's core CUDA ops against the device's measured ceilings, in one run:
//  - memory-bound ops (elementwise, reductions, norms, swiglu, softmax, short conv, embedding, AdamW) at
//    >= 256 MB: achieved GB/s (bytes each op must move: inputs read once, outputs written once) against a
//    device-to-device copy measured here (bytes read + written); peer "d2d-copy", peer_ms = the time the
//    copy needs for the same bytes;
//  - fused cross-entropy forward+backward at tokens=32768, vocab=32000, bf16 logits, against the time to
//    read and write the logits once (a copy of the logits); peer "read+write logits";
//  - a large bf16 GEMM (TFLOP/s): the compute ceiling, and the f32 GEMM for reference.
// ratio = ours_ms / peer_ms (lower is better; the issue asks <= 1/0.7 = 1.43 for the memory-bound ops and
// <= 1.5 for cross-entropy). CUDA events on the compute stream, warm-up, median of --reps runs.
// Ops with more than one kernel are timed once per kernel through their plan argument, in rows named
// "... [kernel]": rmsnorm fwd [short|general] and bwd [short|regs|general] (kernels/cuda/rmsnorm_plan.h: the
// default depends on the row width), short_conv at natsl-340m's shapes [per_channel|chunks]
// (kernels/cuda/short_conv_plan.h), embedding bwd [radix_sort|cooperative] (kernels/cuda/embedding_bwd.h), fused
// cross-entropy [rows|ring] (kernels/cuda/cross_entropy_fused.h); for those three the second is the default.
// mix_norm_gate and norm_gate fwd / bwd: the default row (the short-row kernels at natsl-340m's widths) and
// "... [rows]", the row kernels (kernels/cuda/mix_norm_gate_plan.h).
//   natsl_bench_ops [--json FILE] [--reps N] [--only SUBSTRING]
#include <cuda_runtime.h>

#include "experiments/bench/bench_results.h"
#include "experiments/bench/bench_timing.h"

#include <algorithm>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/cuda_check.h"
#include "core/philox.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "kernels/adamw.h"
#include "kernels/cuda/cross_entropy_fused.h"
#include "kernels/cuda/embedding_bwd.h"
#include "kernels/cuda/mix_norm_gate_plan.h"
#include "kernels/cuda/rmsnorm_plan.h"
#include "kernels/cuda/short_conv_plan.h"
#include "kernels/elementwise.h"
#include "kernels/matmul.h"
#include "kernels/mix_norm_gate.h"
#include "kernels/nn.h"
#include "kernels/reduce.h"
#include "kernels/router.h"
#include "trainers/io/version.h"

using namespace natsl;
using namespace natsl::kernels;

namespace {

// The RMSNorm backward's kernels with their row names.
constexpr std::pair<cuda::RmsnormPlan::Kernel, const char*> kRmsnormBwdKernels[] = {
    {cuda::RmsnormPlan::Kernel::short_rows, "short"},
    {cuda::RmsnormPlan::Kernel::row_in_registers, "regs"},
    {cuda::RmsnormPlan::Kernel::general, "general"}};

const Device kGpu = Device::cuda(0);

double median_ms(const std::function<void()>& fn, int reps) { return bench::median_ms(fn, reps, activate(0)); }

// Random data (never zeros: they can run faster than real data).
Tensor rnd(const Shape& s, DType dt, uint64_t seed, double std = 1.0) {
  Tensor t = Tensor::empty(s, dt, kGpu);
  Generator g(seed);
  normal_(t, g, 0.0, std);
  return t;
}
Tensor ids(const Shape& s, int64_t vocab, uint64_t seed) {
  Tensor u = Tensor::empty(s, DType::f32, kGpu);
  Generator g(seed);
  uniform_(u, g, 0.0, double(vocab) - 0.5);
  return u.to(DType::i32);  // truncation toward zero: ids in [0, vocab)
}

struct Row {
  std::string name, shape;
  double ours_ms;
  std::string peer;
  double peer_ms;
  double bytes = 0, flops = 0;  // what the op must move / compute
};

}  // namespace

int main(int argc, char** argv) {
  std::string json_out, only;
  int reps = 20;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", k.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (k == "--json") json_out = next();
    else if (k == "--reps") reps = std::stoi(next());
    else if (k == "--only") only = next();
    else {
      std::fprintf(stderr, "usage: natsl_bench_ops [--json FILE] [--reps N] [--only SUBSTRING]\n");
      return 2;
    }
  }
  if (!cuda_available()) {
    std::fprintf(stderr, "natsl_bench_ops: no CUDA GPU\n");
    return 1;
  }
  cudaDeviceProp prop{};
  NATSL_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const std::string gpu_name = prop.name;
  const std::string date = bench::utc_date();
  cudaStream_t stream = activate(0);

  // ---- ceilings ----
  const int64_t copy_bytes_n = int64_t(1) << 30;
  Tensor src = rnd({copy_bytes_n / 4}, DType::f32, 1), dst = Tensor::empty({copy_bytes_n / 4}, DType::f32, kGpu);
  const double copy_ms = median_ms([&] {
    NATSL_CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), size_t(copy_bytes_n), cudaMemcpyDeviceToDevice, stream));
  }, reps);
  const double copy_gbps = 2.0 * double(copy_bytes_n) / (copy_ms * 1e6);  // read + write
  src = Tensor();
  dst = Tensor();

  std::vector<Row> rows;
  auto want = [&](const std::string& name) { return only.empty() || name.find(only) != std::string::npos; };
  // A memory-bound op: peer = the copy time for the same bytes.
  auto mem = [&](const std::string& name, const std::string& shape, double bytes, const std::function<void()>& fn) {
    if (!want(name)) return;
    const double ms = median_ms(fn, reps);
    rows.push_back({name, shape, ms, "d2d-copy", bytes / (copy_gbps * 1e6), bytes, 0});
    std::fprintf(stderr, "  %-28s %-30s %9.3f ms  %.2fx copy\n", name.c_str(), shape.c_str(), ms,
                 ms / (bytes / (copy_gbps * 1e6)));
  };

  // ---- GEMMs: the compute ceiling ----
  for (DType dt : {DType::bf16, DType::f32}) {
    const int64_t n = 8192;
    const std::string name = std::string("matmul ") + (dt == DType::bf16 ? "bf16" : "f32 (exact)");
    if (!want(name)) continue;
    Tensor a = rnd({n, n}, dt, 2), b = rnd({n, n}, dt, 3), c = Tensor::empty({n, n}, dt, kGpu);
    const double ms = median_ms([&] { matmul(a, b, c, false, true); }, reps);
    Row r{name, "8192x8192x8192", ms, "", 0, 0, 2.0 * double(n) * double(n) * double(n)};
    rows.push_back(r);
  }

  // ---- narrow products: Gated DeltaNet's a / b projections (1024 -> 6 per head, B8 T4096), memory-bound: peer = the
  // copy time of the bytes they must move (x read; dx read and written, as the gradient sink is) ----
  {
    const int64_t M = 32768, K = 1024, N = 6;
    Tensor x = rnd({M, K}, DType::bf16, 20), w = rnd({N, K}, DType::bf16, 21), dy = rnd({M, N}, DType::bf16, 22);
    Tensor y = Tensor::empty({M, N}, DType::bf16, kGpu), dx = rnd({M, K}, DType::bf16, 23);
    Tensor dw = Tensor::zeros({N, K}, DType::f32, kGpu);
    const std::string sh = "32768x1024 -> 6";
    const double xb = double(M * K * 2);
    mem("linear narrow fwd bf16", sh, xb, [&] { matmul(x, w, y, false, true); });
    mem("linear narrow dx bf16 (+=)", sh, 2 * xb, [&] { matmul(dy, w, dx, false, false, 1.0, 1.0); });
    mem("linear narrow dW bf16->f32 (+=)", sh, xb, [&] { matmul(dy, x, dw, true, false, 1.0, 1.0); });
  }

  // ---- elementwise (bf16, 128M elements = 256 MB per tensor) ----
  {
    const int64_t n = int64_t(128) << 20;
    Tensor x = rnd({n}, DType::bf16, 4), y = Tensor::empty({n}, DType::bf16, kGpu), z = rnd({n}, DType::bf16, 5);
    const double t = double(n) * 2;
    mem("silu fwd bf16", "134217728", 2 * t, [&] { unary_fwd(UnaryOp::Silu, x, y); });
    mem("silu bwd bf16", "134217728", 3 * t, [&] { unary_bwd(UnaryOp::Silu, x, Tensor(), z, y); });
    mem("add bf16", "134217728", 3 * t, [&] { binary_fwd(BinaryOp::Add, x, z, y); });
    mem("axpby bf16", "134217728", 3 * t, [&] { axpby(0.5, x, 2.0, z, y); });
    Tensor o = Tensor::empty({1}, DType::f32, kGpu);
    mem("sum_squares bf16", "134217728", t, [&] { sum_squares(x, o); });
    Tensor g = Tensor::empty({n}, DType::bf16, kGpu), u = Tensor::empty({n}, DType::bf16, kGpu);
    mem("swiglu fwd bf16", "134217728", 3 * t, [&] { swiglu_fwd(x, z, y); });
    mem("swiglu bwd bf16", "134217728", 5 * t, [&] { swiglu_bwd(x, z, y, g, u); });
  }
  // ---- row ops (bf16, [32768, 4096] = 256 MB) ----
  {
    const int64_t R = 32768, D = 4096;
    const double t = double(R * D) * 2;
    Tensor x = rnd({R, D}, DType::bf16, 6), y = Tensor::empty({R, D}, DType::bf16, kGpu);
    Tensor dy = rnd({R, D}, DType::bf16, 7), dx = Tensor::empty({R, D}, DType::bf16, kGpu);
    Tensor w = rnd({D}, DType::bf16, 8), dw = Tensor::empty({D}, DType::bf16, kGpu);
    Tensor st = Tensor::empty({R}, DType::f32, kGpu);
    const std::string sh = "32768x4096";
    mem("rmsnorm fwd bf16", sh, 2 * t, [&] { rmsnorm_fwd(x, w, 1e-6, y, st); });
    for (auto [k, name] : kRmsnormBwdKernels)
      if (k != cuda::RmsnormPlan::Kernel::short_rows)  // rows of 512 vectors: not a short row
        mem(std::string("rmsnorm bwd bf16 [") + name + "]", sh, 3 * t,
            [&] { cuda::rmsnorm_bwd(x, w, st, dy, dx, dw, cuda::RmsnormPlan{k}); });
    mem("softmax fwd bf16", sh, 2 * t, [&] { softmax_fwd(x, y); });
    mem("softmax bwd bf16", sh, 3 * t, [&] { softmax_bwd(y, dy, dx); });
    Tensor dsum = Tensor::empty({1, D}, DType::bf16, kGpu);
    mem("sum over rows bf16", sh, t, [&] { sum_dims(x, {0}, dsum); });
  }
  {
    // l2norm on head-sized rows: [1048576, 128] bf16 = 256 MB
    const int64_t R = 1 << 20, D = 128;
    const double t = double(R * D) * 2;
    Tensor x = rnd({R, D}, DType::bf16, 9), y = Tensor::empty({R, D}, DType::bf16, kGpu);
    Tensor dy = rnd({R, D}, DType::bf16, 10), dx = Tensor::empty({R, D}, DType::bf16, kGpu);
    Tensor rn = Tensor::empty({R}, DType::f32, kGpu);
    mem("l2norm fwd bf16", "1048576x128", 2 * t, [&] { l2norm_fwd(x, 1e-6, y, rn); });
    mem("l2norm bwd bf16", "1048576x128", 3 * t, [&] { l2norm_bwd(y, rn, dy, dx); });
  }
  {
    // short conv: [16, 4096, 2048] bf16 = 256 MB, W = 4, SiLU
    const int64_t B = 16, T = 4096, C = 2048;
    const double t = double(B * T * C) * 2;
    Tensor x = rnd({B, T, C}, DType::bf16, 11), y = Tensor::empty({B, T, C}, DType::bf16, kGpu);
    Tensor w = rnd({C, 4}, DType::bf16, 12, 0.5), dw = Tensor::empty({C, 4}, DType::bf16, kGpu);
    Tensor dy = rnd({B, T, C}, DType::bf16, 13), dx = Tensor::empty({B, T, C}, DType::bf16, kGpu);
    for (bool chunks : {false, true}) {  // rows before 2026-12-07 are the per-channel kernels
      const cuda::ShortConvPlan plan{chunks};
      const std::string k = chunks ? " [chunks]" : " [per_channel]";
      mem("short_conv fwd bf16" + k, "16x4096x2048 W4", 2 * t, [&] { cuda::short_conv_fwd(x, w, true, y, plan); });
      mem("short_conv bwd bf16" + k, "16x4096x2048 W4", 3 * t,
          [&] { cuda::short_conv_bwd(x, w, true, dy, dx, dw, plan); });
    }
  }
  {
    // embedding: 131072 tokens x 1024 bf16 (256 MB of activations), vocab 32000
    const int64_t N = 131072, D = 1024, V = 32000;
    Tensor table = rnd({V, D}, DType::bf16, 14), out = Tensor::empty({N, D}, DType::bf16, kGpu);
    Tensor tok = ids({N}, V, 15);
    Tensor dout = rnd({N, D}, DType::bf16, 16), dtable = Tensor::zeros({V, D}, DType::bf16, kGpu);
    const double act = double(N * D) * 2, tab = double(V * D) * 2;
    mem("embedding fwd bf16", "131072x1024 V32000", 2 * act, [&] { embedding_fwd(table, tok, out); });
    // reads dout once, reads and writes the table once (ids and the sort are small)
    using cuda::EmbeddingBwdSegmentsKernel;
    const std::pair<const char*, EmbeddingBwdSegmentsKernel> kernels[] = {
        {"radix_sort", EmbeddingBwdSegmentsKernel::radix_sort}, {"cooperative", EmbeddingBwdSegmentsKernel::cooperative}};
    for (const auto& [name, k] : kernels)
      mem(std::string("embedding bwd bf16 [") + name + "]", "131072x1024 V32000", act + 2 * tab, [&] {
        cuda::embedding_bwd_accumulate(cuda::embedding_bwd_segments(tok, V, cuda::EmbeddingBwdPlan{k}), dout, dtable);
      });
    // Its two phases apart (kernels/cuda/embedding_bwd.h): building the id segments (no bandwidth peer)
    // and accumulating on segments built once (against the copy of the same bytes as the whole op).
    for (const auto& [name, k] : kernels) {
      const std::string tag = std::string(" [") + name + "]";
      const std::string seg_name = "embedding bwd segments only" + tag;
      if (want(seg_name)) {
        const double ms = median_ms([&] { cuda::embedding_bwd_segments(tok, V, cuda::EmbeddingBwdPlan{k}); }, reps);
        rows.push_back({seg_name, "131072 ids V32000", ms, "", 0, 0, 0});
        std::fprintf(stderr, "  %-28s %9.3f ms\n", seg_name.c_str(), ms);
      }
      const cuda::EmbeddingBwdSegments seg = cuda::embedding_bwd_segments(tok, V, cuda::EmbeddingBwdPlan{k});
      mem("embedding bwd accumulate only bf16" + tag, "131072x1024 V32000", act + 2 * tab,
          [&] { cuda::embedding_bwd_accumulate(seg, dout, dtable); });
    }
  }
  {
    // The norms and short convolutions at natsl-340m's shapes (B8 T4096 = 32768 tokens): rmsnorm over d 1024
    // (block norms), over 256 (GDN's output norm, 6 heads) and 128 (the softmax branch's q/k norm, 12 heads);
    // l2norm over GDN's q/k heads (6 x 128); the short convolutions of q/k (768 channels) and v (1536). The
    // profile's per-op totals (BENCHMARKS.md) divided by these rows say which calls are slow.
    const int64_t N = 32768;
    for (const auto& [rows, D, what] : std::vector<std::tuple<int64_t, int64_t, const char*>>{
             {N, 1024, "d"}, {N * 6, 256, "gdn out"}, {N * 12, 128, "attn qk"}}) {
      const double t = double(rows * D) * 2;
      Tensor x = rnd({rows, D}, DType::bf16, 40), y = Tensor::empty({rows, D}, DType::bf16, kGpu);
      Tensor dy = rnd({rows, D}, DType::bf16, 41), dx = Tensor::empty({rows, D}, DType::bf16, kGpu);
      Tensor w = rnd({D}, DType::bf16, 42), dw = Tensor::empty({D}, DType::bf16, kGpu);
      Tensor st = Tensor::empty({rows}, DType::f32, kGpu);
      const std::string sh = std::to_string(rows) + "x" + std::to_string(D) + " (340m " + what + ")";
      // Each kernel (rmsnorm_plan.h), the short-row one also at d 1024 (128 vectors: its widest layout).
      for (auto k : {cuda::RmsnormPlan::Kernel::short_rows, cuda::RmsnormPlan::Kernel::general})
        mem(std::string("rmsnorm fwd bf16 [") + (k == cuda::RmsnormPlan::Kernel::general ? "general" : "short") + "]",
            sh, 2 * t, [&] { cuda::rmsnorm_fwd(x, w, 1e-6, y, st, cuda::RmsnormPlan{k}); });
      for (auto [k, name] : kRmsnormBwdKernels)
        mem(std::string("rmsnorm bwd bf16 [") + name + "]", sh, 3 * t,
            [&] { cuda::rmsnorm_bwd(x, w, st, dy, dx, dw, cuda::RmsnormPlan{k}); });
    }
    {
      const int64_t rows = N * 6, D = 128;
      const double t = double(rows * D) * 2;
      Tensor x = rnd({rows, D}, DType::bf16, 43), y = Tensor::empty({rows, D}, DType::bf16, kGpu);
      Tensor dy = rnd({rows, D}, DType::bf16, 44), dx = Tensor::empty({rows, D}, DType::bf16, kGpu);
      Tensor rn = Tensor::empty({rows}, DType::f32, kGpu);
      mem("l2norm fwd bf16", "196608x128 (340m gdn q/k)", 2 * t, [&] { l2norm_fwd(x, 1e-6, y, rn); });
      mem("l2norm bwd bf16", "196608x128 (340m gdn q/k)", 3 * t, [&] { l2norm_bwd(y, rn, dy, dx); });
    }
    {
      // GDN's gated output norm (norm_gate: rmsnorm(o) * silu(g) in one kernel each way), 6 heads of 256.
      const int64_t rows = N * 6, D = 256;
      const double t = double(rows * D) * 2;
      Tensor o = rnd({rows, D}, DType::bf16, 48), z = rnd({rows, D}, DType::bf16, 49);
      Tensor dy = rnd({rows, D}, DType::bf16, 50), w = rnd({D}, DType::bf16, 51);
      Tensor y = Tensor::empty({rows, D}, DType::bf16, kGpu), st = Tensor::empty({rows}, DType::f32, kGpu);
      Tensor dO = Tensor::empty({rows, D}, DType::bf16, kGpu), dz = Tensor::empty({rows, D}, DType::bf16, kGpu);
      Tensor dw = Tensor::empty({D}, DType::bf16, kGpu);
      // The default (the short-row kernels at this width), then the row kernels ("[rows]", MixNormGatePlan).
      const cuda::MixNormGatePlan rows_plan{false};
      const std::string sh = "196608x256 (340m gdn out)";
      mem("norm_gate fwd bf16", sh, 3 * t, [&] { norm_gate_fwd(o, z, w, 1e-6, y, st); });
      mem("norm_gate fwd bf16 [rows]", sh, 3 * t, [&] { cuda::norm_gate_fwd(o, z, w, 1e-6, y, st, rows_plan); });
      norm_gate_fwd(o, z, w, 1e-6, y, st);
      mem("norm_gate bwd bf16", sh, 5 * t, [&] { norm_gate_bwd(o, z, w, st, dy, dO, dz, dw); });
      mem("norm_gate bwd bf16 [rows]", sh, 5 * t,
          [&] { cuda::norm_gate_bwd(o, z, w, st, dy, dO, dz, dw, rows_plan); });
    }
    for (const int64_t C : {int64_t(768), int64_t(1536)}) {
      const double t = double(N * C) * 2;
      Tensor x = rnd({8, 4096, C}, DType::bf16, 45), y = Tensor::empty({8, 4096, C}, DType::bf16, kGpu);
      Tensor w = rnd({C, 4}, DType::bf16, 46, 0.5), dw = Tensor::empty({C, 4}, DType::bf16, kGpu);
      Tensor dy = rnd({8, 4096, C}, DType::bf16, 47), dx = Tensor::empty({8, 4096, C}, DType::bf16, kGpu);
      const std::string sh = "8x4096x" + std::to_string(C) + " W4 (340m)";
      for (bool chunks : {false, true}) {
        const cuda::ShortConvPlan plan{chunks};
        const std::string k = chunks ? " [chunks]" : " [per_channel]";
        mem("short_conv fwd bf16" + k, sh, 2 * t, [&] { cuda::short_conv_fwd(x, w, true, y, plan); });
        mem("short_conv bwd bf16" + k, sh, 3 * t, [&] { cuda::short_conv_bwd(x, w, true, dy, dx, dw, plan); });
      }
    }
  }
  {
    // The NAtS-L layer's small ops at natsl-340m's shapes (B8 T4096; 12 softmax heads of 128 value channels;
    // d 1024): the output mixing, the router's chunk mean-pool, and the strided and broadcast paths that a
    // layer's reshapes and broadcast products take.
    const int64_t B = 8, T = 4096, Ha = 12, Dv = 128, d = 1024, C = 64, NC = T / C;
    const double row = double(B * T * Ha * Dv) * 2;  // one [B, T, Ha, Dv] bf16 tensor
    Tensor og = rnd({B, T, Ha, Dv}, DType::bf16, 30), oa = rnd({B, T, Ha, Dv}, DType::bf16, 31);
    Tensor z = rnd({B, T, Ha, Dv}, DType::bf16, 32), dy = rnd({B, T, Ha, Dv}, DType::bf16, 33);
    Tensor wl = rnd({B, T, Ha, 2}, DType::bf16, 34), gg = rnd({Dv}, DType::bf16, 35), ga = rnd({Dv}, DType::bf16, 36);
    Tensor y = Tensor::empty({B, T, Ha, Dv}, DType::bf16, kGpu), rg = Tensor::empty({B, T, Ha}, DType::f32, kGpu);
    Tensor ra = Tensor::empty({B, T, Ha}, DType::f32, kGpu), dwl = Tensor::empty({B, T, Ha, 2}, DType::bf16, kGpu);
    Tensor dog = Tensor::empty({B, T, Ha, Dv}, DType::bf16, kGpu), doa = Tensor::empty({B, T, Ha, Dv}, DType::bf16, kGpu);
    Tensor dz = Tensor::empty({B, T, Ha, Dv}, DType::bf16, kGpu);
    Tensor dgg = Tensor::empty({Dv}, DType::bf16, kGpu), dga = Tensor::empty({Dv}, DType::bf16, kGpu);
    const std::string sh = "8x4096x12x128";
    // The default (the short-row kernels at this width), then the row kernels ("[rows]", MixNormGatePlan).
    const cuda::MixNormGatePlan rows_plan{false};
    mem("mix_norm_gate fwd bf16", sh, 4 * row, [&] { mix_norm_gate_fwd(og, oa, wl, z, gg, ga, 1e-6, y, rg, ra); });
    mem("mix_norm_gate fwd bf16 [rows]", sh, 4 * row,
        [&] { cuda::mix_norm_gate_fwd(og, oa, wl, z, gg, ga, 1e-6, y, rg, ra, rows_plan); });
    mix_norm_gate_fwd(og, oa, wl, z, gg, ga, 1e-6, y, rg, ra);
    // Reads og, oa, z, dy; writes dog, doa, dz (the statistics and the weight logits are small).
    mem("mix_norm_gate bwd bf16", sh, 7 * row,
        [&] { mix_norm_gate_bwd(og, oa, wl, z, gg, ga, rg, ra, dy, dog, doa, dwl, dz, dgg, dga); });
    mem("mix_norm_gate bwd bf16 [rows]", sh, 7 * row, [&] {
      cuda::mix_norm_gate_bwd(og, oa, wl, z, gg, ga, rg, ra, dy, dog, doa, dwl, dz, dgg, dga, rows_plan);
    });

    const double act = double(B * T * d) * 2;  // one [B, T, d] bf16 tensor
    Tensor x = rnd({B, T, d}, DType::bf16, 37), dx = Tensor::empty({B, T, d}, DType::bf16, kGpu);
    Tensor pooled = Tensor::empty({B, NC, d}, DType::bf16, kGpu), dpooled = rnd({B, NC, d}, DType::bf16, 38);
    mem("chunk_mean_pool fwd bf16", "8x4096x1024 C64", act, [&] { chunk_mean_pool_fwd(x, C, pooled); });
    mem("chunk_mean_pool bwd bf16", "8x4096x1024 C64", act, [&] { chunk_mean_pool_bwd(dpooled, C, dx); });
    // A head-major copy of a token-major activation ([B, T, 8, 128] -> [B, 8, T, 128]): the strided path.
    const Tensor xt = x.view({B, T, 8, 128}).transpose(1, 2);
    Tensor xc = Tensor::empty({B, 8, T, 128}, DType::bf16, kGpu);
    mem("strided copy bf16 (transpose T, H)", "8x4096x8x128", 2 * act, [&] { xc.copy_(xt); });
    // A per-(token, head) scale broadcast over the head's channels, and the gradient of that scale.
    Tensor s8 = rnd({B, T, 8, 1}, DType::bf16, 39), xs = Tensor::empty({B, T, 8, 128}, DType::bf16, kGpu);
    const Tensor x4 = x.view({B, T, 8, 128});
    mem("mul broadcast bf16 ([..,8,128] x [..,8,1])", "8x4096x8x128", 2 * act,
        [&] { binary_fwd(BinaryOp::Mul, x4, s8, xs); });
    Tensor ssum = Tensor::empty({B, T, 8, 1}, DType::bf16, kGpu);
    mem("sum over the last dim bf16", "8x4096x8x128", act, [&] { sum_dims(x4, {3}, ssum); });
    Tensor hsum = Tensor::empty({1, 1, 8, 128}, DType::bf16, kGpu);
    mem("sum over (B, T) of [B, T, 8, 128] bf16", "8x4096x8x128", act, [&] { sum_dims(x4, {0, 1}, hsum); });
  }
  {
    // AdamW over 64M f32 parameters (256 MB per buffer): p, m, v read+written, grad read
    const int64_t P = int64_t(64) << 20;
    Tensor p = rnd({P}, DType::f32, 17, 0.02), m = Tensor::zeros({P}, DType::f32, kGpu), v = Tensor::zeros({P}, DType::f32, kGpu);
    Tensor gf = rnd({P}, DType::f32, 18), gb16 = rnd({P}, DType::bf16, 19);
    // A model-like segment list: 2 big matrices per layer over 24 layers plus norms.
    std::vector<AdamWSegment> segs;
    int64_t off = 0;
    while (off < P) {
      const int64_t n = std::min<int64_t>(P - off, (int64_t(1) << 20) + 4096);
      segs.push_back({off, n, segs.size() % 3 != 2});
      off += (n + 63) / 64 * 64;
    }
    AdamWHyper h;
    h.step = 10;
    h.weight_decay = 0.1;
    Tensor scale = Tensor::full({1}, 0.5, DType::f32, kGpu);
    mem("adamw f32 grads", "67108864 params", double(P) * 28, [&] { adamw_step(p, gf, m, v, segs, h, scale); });
    mem("adamw bf16 grads", "67108864 params", double(P) * 26, [&] { adamw_step(p, gb16, m, v, segs, h, scale); });
  }
  // ---- cross-entropy: tokens 32768, vocab 32000, bf16 logits; peer = one read + write of the logits ----
  {
    const int64_t N = 32768, V = 32000;
    const std::string sh = "32768x32000";
    Tensor logits = rnd({N, V}, DType::bf16, 20, 3.0), work = Tensor::empty({N, V}, DType::bf16, kGpu);
    Tensor tgt = ids({N}, V, 21);
    Tensor loss = Tensor::empty({N}, DType::f32, kGpu), lse = Tensor::empty({N}, DType::f32, kGpu),
           valid = Tensor::empty({N}, DType::f32, kGpu);
    Tensor scale = Tensor::full({1}, 1.0 / double(N), DType::f32, kGpu);
    const double bytes = double(N * V) * 2;
    const double rw_ms = median_ms([&] {
      NATSL_CUDA_CHECK(cudaMemcpyAsync(work.data_ptr(), logits.data_ptr(), size_t(bytes), cudaMemcpyDeviceToDevice, stream));
    }, reps);
    auto ce = [&](const std::string& name, const std::function<void()>& fn) {
      if (!want(name)) return;
      const double ms = median_ms(fn, reps);
      rows.push_back({name, sh, ms, "read+write logits", rw_ms, 2 * bytes, 0});
    };
    // dlogits go to a second buffer: in place would change the logits between repetitions (the traffic is
    // the same either way).
    ce("cross_entropy fwd bf16", [&] { cross_entropy_fwd(logits, tgt, -100, loss, lse, valid); });
    ce("cross_entropy fwd+bwd bf16", [&] {
      cross_entropy_fwd(logits, tgt, -100, loss, lse, valid);
      cross_entropy_bwd(logits, tgt, lse, scale, -100, work);
    });
    for (bool ring : {false, true})
      ce(std::string("cross_entropy fused fwd+bwd bf16 [") + (ring ? "ring" : "rows") + "]", [&] {
        cuda::cross_entropy_fwd_bwd(logits, tgt, -100, scale, loss, lse, valid, work, cuda::CrossEntropyFusedPlan{ring});
      });
  }

  // ---- report ----
  const std::string commit = natsl_git_commit();
  std::printf("\nnatsl_bench_ops  gpu: %s  commit: %s  date: %s  reps: %d (median)\n", gpu_name.c_str(),
              commit.c_str(), date.c_str(), reps);
  std::printf("ceiling: d2d copy %.0f GB/s (1 GiB, read+write)\n\n", copy_gbps);
  std::printf("%-34s %-20s %10s %10s %12s %9s %s\n", "op", "shape", "ours ms", "GB/s", "TFLOP/s", "ratio", "peer");
  std::ofstream js;
  if (!json_out.empty()) {
    js.open(json_out);
    if (!js) {
      std::fprintf(stderr, "cannot write %s\n", json_out.c_str());
      return 2;
    }
  }
  for (const Row& r : rows) {
    const double gbps = r.bytes > 0 ? r.bytes / (r.ours_ms * 1e6) : 0;
    const double tflops = r.flops > 0 ? r.flops / (r.ours_ms * 1e9) : 0;
    const double ratio = r.peer_ms > 0 ? r.ours_ms / r.peer_ms : 0;
    char g[32] = "", f[32] = "", q[32] = "";
    if (gbps > 0) std::snprintf(g, sizeof g, "%.0f", gbps);
    if (tflops > 0) std::snprintf(f, sizeof f, "%.1f", tflops);
    if (ratio > 0) std::snprintf(q, sizeof q, "%.2f", ratio);
    std::string peer = r.peer.empty() ? "" : r.peer + " " + std::to_string(r.peer_ms).substr(0, 6) + " ms";
    if (r.peer == "d2d-copy") {
      char pct[32];
      std::snprintf(pct, sizeof pct, " (%.0f%% of copy BW)", 100.0 / ratio);
      peer += pct;
    }
    std::printf("%-34s %-20s %10.3f %10s %12s %9s %s\n", r.name.c_str(), r.shape.c_str(), r.ours_ms, g, f, q,
                peer.c_str());
    if (js) {
      nlohmann::json row = bench::result_row(r.name, r.shape, r.ours_ms, r.peer, r.peer_ms, gpu_name, commit, date);
      row["bytes"] = r.bytes;
      row["gbps"] = gbps;
      row["tflops"] = tflops;
      row["copy_gbps"] = copy_gbps;
      js << row.dump() << "\n";
    }
  }
  std::printf("\nratio = ours_ms / peer_ms: memory-bound ops target <= 1.43 (>= 70%% of copy bandwidth), "
              "cross-entropy fwd+bwd <= 1.5.\n");
  return 0;
}
