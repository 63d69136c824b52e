// CUDA nn family (embedding, rmsnorm, l2norm, softmax, log-softmax, swiglu, short conv), forward and
// backward, against the CPU reference run in f64 on the same rounded inputs.
// Tolerances: outputs in the data dtype use kF32 / kBf16 (cuda_test_util.h); f32 statistics (rstd, rnorm)
// use kF32 for both dtypes (they are computed in f32 from the rounded inputs). Weight gradients summed over
// many rows (rmsnorm dw, short-conv dw) in f32 use kF32Sum (2e-5, 2e-4).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <iterator>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/embedding_bwd.h"
#include "kernels/cuda/rmsnorm_plan.h"
#include "kernels/nn.h"
#include "tests/cuda/cuda_test_util.h"

using namespace natsl;
using namespace natsl::testing;

namespace {

constexpr Tol kF32Sum{2e-5, 2e-4};
Tol sum_tol(DType dt) { return dt == DType::bf16 ? kBf16 : kF32Sum; }

// Row shapes: one row, one column, odd sizes, a row of 50000, many rows of a model width.
// {37, 1000}, {700, 2056}: widths that leave the last threads of the register-row rmsnorm backward partly
// idle; 700 rows: several rows per block.
const Shape kRowShapes[] = {{1, 1},    {1, 7},       {3, 5},    {2, 3, 33}, {513, 96}, {64, 4096},
                            {2, 50000}, {1000, 1}, {37, 1000}, {700, 2056}};

int64_t rows_of(const Shape& s) { return shape_numel(s) / s.back(); }


// The CUDA RMSNorm backward with a plan (a CPU-only build has none; its GPU tests skip before this).
void rmsnorm_bwd_with(const kernels::cuda::RmsnormBwdPlan& plan, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      const Tensor& dy, const Tensor& dx, const Tensor& dw) {
#ifdef NATSL_WITH_CUDA
  kernels::cuda::rmsnorm_bwd(x, w, rstd, dy, dx, dw, plan);
#else
  (void)plan;
  kernels::rmsnorm_bwd(x, w, rstd, dy, dx, dw);
#endif
}

}  // namespace

TEST(CudaEmbedding, ForwardGathersRows) {
  NATSL_REQUIRE_GPU();
  uint64_t seed = 1;
  for (DType dt : {DType::f32, DType::bf16})
    for (DType it : {DType::i32, DType::i64})
      for (int64_t D : {int64_t(1), int64_t(7), int64_t(64), int64_t(4096)}) {
        const int64_t V = 50;
        Tensor wq = q(randn({V, D}, seed++), dt);
        Tensor ids = random_token_ids({3, 17}, V, seed++, it);
        Tensor ref = cpu_poisoned({3, 17, D});
        kernels::cpu::embedding_fwd(f64(wq), ids, ref);
        Tensor out = gpu_poisoned({3, 17, D}, dt);
        kernels::embedding_fwd(to_gpu(wq), to_gpu(ids), out);
        // A gather is exact.
        expect_match(out, ref, Tol{0, 0}, case_name("embedding_fwd", dt, {V, D}) + " ids " + dtype_str(it));
      }
}

// Ids for the backward: uniform over [0, V), or (`frequent` > 0) that share of the tokens on id V / 2 and the
// rest uniform, so one id repeats thousands of times among rare ones.
Tensor backward_ids(int64_t N, int64_t V, double frequent, uint64_t seed, DType it) {
  std::vector<double> u = rand_uniform({N}, seed, 0.0, 1.0).to_vector<double>();
  std::vector<double> w = rand_uniform({N}, seed + 1000, 0.0, double(V)).to_vector<double>();
  std::vector<int64_t> ids(static_cast<size_t>(N));
  for (size_t i = 0; i < ids.size(); ++i)
    ids[i] = u[i] < frequent ? V / 2 : std::min<int64_t>(int64_t(w[i]), V - 1);
  return Tensor::from_vector(ids, {N}, it);
}

// Both embedding-backward segment kernels (kernels/cuda/embedding_bwd.h), the radix sort first, on these ids,
// f32 and bf16 against the f64 CPU reference, and bit for bit against each other (both add the same rows in the
// same order) and against a second run of itself. dweight is accumulated into: present ids' rows start from
// random values; the rows of absent ids are poisoned (NaN) and must come back with the same bits.
void check_backward_variants(const Tensor& ids, int64_t V, int64_t D, DType dt, uint64_t& seed,
                             const std::string& label) {
  const int64_t N = ids.numel();
  Tensor dq = q(randn({N, D}, seed++), dt);
  std::vector<char> present(size_t(V), 0);
  for (int64_t id : ids.to_vector<int64_t>()) present[size_t(id)] = 1;
  std::vector<double> w0v = randn({V, D}, seed++).to_vector<double>();
  for (int64_t v = 0; v < V; ++v)
    if (!present[size_t(v)])
      for (int64_t k = 0; k < D; ++k) w0v[size_t(v * D + k)] = std::numeric_limits<double>::quiet_NaN();
  Tensor w0 = q(Tensor::from_vector(w0v, {V, D}), dt);
  Tensor ref = f64(w0);
  kernels::cpu::embedding_bwd(ids, f64(dq), ref);
  // The oracle on the present rows only (the absent ones are checked bit for bit).
  auto present_rows = [&](const Tensor& t) {
    const std::vector<double> all = t.to(kCPU).to_vector<double>();
    std::vector<double> keep;
    for (int64_t v = 0; v < V; ++v)
      if (present[size_t(v)]) keep.insert(keep.end(), all.begin() + v * D, all.begin() + (v + 1) * D);
    return Tensor::from_vector(keep, {int64_t(keep.size())}, DType::f64);
  };
  const Tensor ref_present = present_rows(ref);
  using kernels::cuda::EmbeddingBwdSegmentsKernel;
  auto run = [&](EmbeddingBwdSegmentsKernel k, const Tensor& dw) {
#ifdef NATSL_WITH_CUDA
    const auto seg = kernels::cuda::embedding_bwd_segments(to_gpu(ids), V, kernels::cuda::EmbeddingBwdPlan{k});
    kernels::cuda::embedding_bwd_accumulate(seg, to_gpu(dq), dw);
#else  // no CUDA kernels: the GPU tests skip before this
    (void)k;
    kernels::embedding_bwd(to_gpu(ids), to_gpu(dq), dw);
#endif
  };
  Tensor dw_radix;
  for (EmbeddingBwdSegmentsKernel k : {EmbeddingBwdSegmentsKernel::radix_sort, EmbeddingBwdSegmentsKernel::cooperative}) {
    const bool radix = k == EmbeddingBwdSegmentsKernel::radix_sort;
    const std::string what = case_name("embedding_bwd", dt, {V, D}) + " N " + std::to_string(N) + " ids " +
                             dtype_str(ids.dtype()) + " " + label + (radix ? " radix sort" : " cooperative");
    Tensor dw = to_gpu(w0);
    run(k, dw);
    expect_match(present_rows(dw), ref_present, sum_tol(dt), what);
    // Absent rows untouched: the poisoned bytes of w0 exactly.
    {
      const Tensor got = dw.to(kCPU);
      const size_t row_bytes = size_t(D) * dtype_size(dt);
      const auto* pg = static_cast<const unsigned char*>(got.data_ptr());
      const auto* p0 = static_cast<const unsigned char*>(w0.data_ptr());
      int64_t changed = 0;
      for (int64_t v = 0; v < V; ++v)
        if (!present[size_t(v)] && std::memcmp(pg + v * row_bytes, p0 + v * row_bytes, row_bytes) != 0) ++changed;
      EXPECT_EQ(changed, 0) << what << ": rows of absent ids were written";
    }
    Tensor dw2 = to_gpu(w0);
    run(k, dw2);
    expect_same_bits(dw, dw2, what);
    if (radix) dw_radix = dw;
    else expect_same_bits(dw, dw_radix, what + " vs the radix sort");
  }
}

TEST(CudaEmbedding, BackwardAccumulatesRepeatsDeterministically) {
  NATSL_REQUIRE_GPU();
  struct Case {
    int64_t V, D, N;
    double frequent;
  };
  // Few ids and many tokens (long runs of one id), a vocabulary larger than the batch, one token, one id,
  // odd widths and widths not a multiple of the 16-byte vector (8 bf16 / 4 f32), one id repeated thousands
  // of times among rare ones, and ids too wide to share a 32-bit key with the positions (64-bit keys:
  // bits_for(600000) + bits_for(5000) = 20 + 13 > 32).
  const Case cases[] = {{5, 64, 1000, 0},   {1, 3, 17, 0},        {1000, 33, 257, 0},  {32000, 128, 4096, 0},
                        {7, 4096, 300, 0},  {3, 1032, 5000, 0} /* segments longer than 32, a chunk cut short */,
                        {50, 7, 1, 0},      {32000, 64, 1, 0},    {1, 8, 1, 0},        {9, 12, 300, 0},
                        {2, 40, 6000, 0},   {1000, 136, 12000, 0.5}, {600000, 3, 5000, 0},
                        // the benchmark's vocabulary and (one short of) its token count, a third on one id
                        {32000, 16, 131071, 0.3},
                        // every token on one id, whole tiles of 2048 positions, 64-bit keys with many ids
                        {32000, 24, 3000, 1.0}, {1000, 8, 4096, 0}, {1 << 21, 1, 700, 0}, {3000000, 1, 100, 0},
                        // more positions than the cooperative kernel's bitmap window (2^18), every id longer
                        // than its shared-memory sort (8192 entries)
                        {5, 3, 300007, 0.6}};
  // The host-side checks (whole dweight copies, per-row compares, for each kernel twice) dominate the time:
  // the cases with a million-element dweight or 10^5 tokens run for two of the four (dtype, id type) pairs,
  // which still cover both dtypes and both id types.
  uint64_t seed = 30;
  for (DType dt : {DType::f32, DType::bf16})
    for (DType it : {DType::i32, DType::i64})
      for (const Case& c : cases) {
        const bool heavy = c.V * c.D >= (int64_t(1) << 20) || c.N >= 100000;
        if (heavy && (dt == DType::f32) != (it == DType::i64)) continue;
        check_backward_variants(backward_ids(c.N, c.V, c.frequent, seed++, it), c.V, c.D, dt, seed,
                                "frequent " + std::to_string(c.frequent));
      }
}

// Skewed ids for the segment classes of the cooperative kernel: id 7 on 55% of the positions (the bitmap path), ids 11 to
// 19 with exactly 32 (the in-warp sort), 33, 63, 64, 65, 1000, 4097, 8192 (the shared-memory sort) and 8193
// (the bitmap) positions, the rest uniform over the ids in [1000, V) that are not multiples of 3; every
// other id never occurs. Positions shuffled (a fixed Fisher-Yates on mt19937_64).
Tensor skewed_ids(int64_t N, int64_t V, uint64_t seed, DType it) {
  const int64_t sizes[] = {32, 33, 63, 64, 65, 1000, 4097, 8192, 8193};
  std::vector<int64_t> ids;
  ids.insert(ids.end(), size_t(N * 55 / 100), 7);
  int64_t id = 11;
  for (int64_t n : sizes) ids.insert(ids.end(), size_t(n), id++);
  std::mt19937_64 rng(seed);
  while (int64_t(ids.size()) < N) {
    const int64_t v = 1000 + int64_t(rng() % uint64_t(V - 1000));
    if (v % 3 != 0) ids.push_back(v);
  }
  for (size_t i = ids.size() - 1; i > 0; --i) std::swap(ids[i], ids[size_t(rng() % (i + 1))]);
  return Tensor::from_vector(ids, {N}, it);
}

TEST(CudaEmbedding, BackwardOnSkewedIdsMatchesV2BitForBit) {
  NATSL_REQUIRE_GPU();
  uint64_t seed = 500;
  const int64_t N = 60013, V = 3001;  // N prime
  for (DType dt : {DType::f32, DType::bf16})
    for (DType it : {DType::i32, DType::i64})
      for (int64_t D : {int64_t(40), int64_t(13)})
        check_backward_variants(skewed_ids(N, V, seed++, it), V, D, dt, seed, "skewed");
}

TEST(CudaRmsNorm, ForwardAndBackwardWithAndWithoutWeight) {
  NATSL_REQUIRE_GPU();
  uint64_t seed = 100;
  const double eps = 1e-6;
  for (DType dt : {DType::f32, DType::bf16})
    for (const Shape& s : kRowShapes)
      for (bool weighted : {true, false}) {
        const int64_t D = s.back(), R = rows_of(s);
        const std::string what = case_name(weighted ? "rmsnorm" : "rmsnorm (no weight)", dt, s);
        Tensor xq = q(randn(s, seed++, DType::f64, 3.0), dt);
        Tensor wq = weighted ? q(rand_uniform({D}, seed++, 0.5, 1.5), dt) : Tensor();
        Tensor ref_y = cpu_poisoned(s), ref_r = cpu_poisoned({R});
        kernels::cpu::rmsnorm_fwd(f64(xq), weighted ? f64(wq) : Tensor(), eps, ref_y, ref_r);
        Tensor y = gpu_poisoned(s, dt), r = gpu_poisoned({R}, DType::f32);
        kernels::rmsnorm_fwd(to_gpu(xq), weighted ? to_gpu(wq) : Tensor(), eps, y, r);
        expect_match(y, ref_y, tol_for(dt), what + " y");
        expect_match(r, ref_r, kF32, what + " rstd");

        Tensor dyq = q(randn(s, seed++), dt);
        Tensor rstd32 = ref_r.to(DType::f32);  // both sides use the same (f32) statistics
        Tensor ref_dx = cpu_poisoned(s), ref_dw = weighted ? cpu_poisoned({D}) : Tensor();
        kernels::cpu::rmsnorm_bwd(f64(xq), weighted ? f64(wq) : Tensor(), f64(rstd32), f64(dyq), ref_dx, ref_dw);
        // Both backward kernels (the row in registers, used when D is a multiple of the vector width and the
        // row fits 512 threads, and the general one).
        for (bool regs : {false, true}) {
          const kernels::cuda::RmsnormBwdPlan plan{regs};
          const std::string wv = what + (regs ? " row in registers" : " general kernel");
          Tensor dx = gpu_poisoned(s, dt), dw = weighted ? gpu_poisoned({D}, dt) : Tensor();
          rmsnorm_bwd_with(plan, to_gpu(xq), weighted ? to_gpu(wq) : Tensor(), to_gpu(rstd32), to_gpu(dyq), dx, dw);
          // dx = rstd (w dy - x rstd^2 mean(x w dy)): its terms are of size |dy| |w| rstd.
          const double terms = max_abs(dyq) * (weighted ? max_abs(wq) : 1.0) * max_abs(rstd32);
          expect_match(dx, ref_dx, tol_for(dt), wv + " dx", terms);
          if (weighted) {
            expect_match(dw, ref_dw, sum_tol(dt), wv + " dw");
            Tensor dx2 = gpu_poisoned(s, dt), dw2 = gpu_poisoned({D}, dt);
            rmsnorm_bwd_with(plan, to_gpu(xq), to_gpu(wq), to_gpu(rstd32), to_gpu(dyq), dx2, dw2);
            expect_same_bits(dw, dw2, wv + " dw");
          }
        }
      }
}

TEST(CudaL2Norm, ForwardAndBackward) {
  NATSL_REQUIRE_GPU();
  uint64_t seed = 200;
  const double eps = 1e-6;
  // Besides the shared row shapes: head-sized rows of 8, 64 and 128 vectors (the short-row kernel's warp
  // group layouts), with row counts that are not multiples of its 4 rows per group.
  std::vector<Shape> shapes(std::begin(kRowShapes), std::end(kRowShapes));
  for (const Shape& s : {Shape{5, 64}, Shape{7, 512}, Shape{3, 1024}, Shape{1031, 128}}) shapes.push_back(s);
  for (DType dt : {DType::f32, DType::bf16})
    for (const Shape& s : shapes) {
      const int64_t R = rows_of(s);
      const std::string what = case_name("l2norm", dt, s);
      Tensor xq = q(randn(s, seed++), dt);
      Tensor ref_y = cpu_poisoned(s), ref_r = cpu_poisoned({R});
      kernels::cpu::l2norm_fwd(f64(xq), eps, ref_y, ref_r);
      Tensor y = gpu_poisoned(s, dt), r = gpu_poisoned({R}, DType::f32);
      kernels::l2norm_fwd(to_gpu(xq), eps, y, r);
      expect_match(y, ref_y, tol_for(dt), what + " y");
      expect_match(r, ref_r, kF32, what + " rnorm");

      Tensor yq = q(ref_y, dt), dyq = q(randn(s, seed++), dt);
      Tensor rn32 = ref_r.to(DType::f32);
      Tensor ref_dx = cpu_poisoned(s);
      kernels::cpu::l2norm_bwd(f64(yq), f64(rn32), f64(dyq), ref_dx);
      Tensor dx = gpu_poisoned(s, dt);
      kernels::l2norm_bwd(to_gpu(yq), to_gpu(rn32), to_gpu(dyq), dx);
      // dx = rnorm (dy - y (y . dy)): terms of size |dy| rnorm (a width-1 row cancels to ~eps).
      expect_match(dx, ref_dx, tol_for(dt), what + " dx", max_abs(dyq) * max_abs(rn32));
    }
}

TEST(CudaSoftmax, SoftmaxAndLogSoftmaxForwardAndBackward) {
  NATSL_REQUIRE_GPU();
  uint64_t seed = 300;
  for (DType dt : {DType::f32, DType::bf16})
    for (const Shape& s : kRowShapes)
      for (double scale : {1.0, 30.0})  // 30: large logits, exp overflows without the max shift
        for (bool log : {false, true}) {
          const std::string what = case_name(log ? "log_softmax" : "softmax", dt, s) + " scale " + std::to_string(scale);
          Tensor xq = q(randn(s, seed++, DType::f64, scale), dt);
          Tensor ref_y = cpu_poisoned(s);
          if (log) kernels::cpu::log_softmax_fwd(f64(xq), ref_y);
          else kernels::cpu::softmax_fwd(f64(xq), ref_y);
          Tensor y = gpu_poisoned(s, dt);
          if (log) kernels::log_softmax_fwd(to_gpu(xq), y);
          else kernels::softmax_fwd(to_gpu(xq), y);
          expect_match(y, ref_y, tol_for(dt), what + " fwd");

          Tensor yq = q(ref_y, dt), dyq = q(randn(s, seed++), dt);
          Tensor ref_dx = cpu_poisoned(s);
          if (log) kernels::cpu::log_softmax_bwd(f64(yq), f64(dyq), ref_dx);
          else kernels::cpu::softmax_bwd(f64(yq), f64(dyq), ref_dx);
          Tensor dx = gpu_poisoned(s, dt);
          if (log) kernels::log_softmax_bwd(to_gpu(yq), to_gpu(dyq), dx);
          else kernels::softmax_bwd(to_gpu(yq), to_gpu(dyq), dx);
          // softmax: dx = y (dy - y . dy), terms of size |y| |dy| (peaky rows cancel far below them).
          const double terms = log ? 0.0 : max_abs(dyq) * max_abs(yq);
          expect_match(dx, ref_dx, tol_for(dt), what + " bwd", terms);
        }
}

TEST(CudaSwiglu, ForwardAndBackward) {
  NATSL_REQUIRE_GPU();
  uint64_t seed = 400;
  for (DType dt : {DType::f32, DType::bf16})
    for (const Shape& s : {Shape{1}, Shape{7}, Shape{3, 5}, Shape{17, 4097}, Shape{1000003}}) {
      const std::string what = case_name("swiglu", dt, s);
      Tensor gq = q(randn(s, seed++, DType::f64, 3.0), dt), uq = q(randn(s, seed++), dt);
      Tensor ref_y = cpu_poisoned(s);
      kernels::cpu::swiglu_fwd(f64(gq), f64(uq), ref_y);
      Tensor y = gpu_poisoned(s, dt);
      kernels::swiglu_fwd(to_gpu(gq), to_gpu(uq), y);
      expect_match(y, ref_y, tol_for(dt), what + " fwd");

      Tensor dyq = q(randn(s, seed++), dt);
      Tensor ref_dg = cpu_poisoned(s), ref_du = cpu_poisoned(s);
      kernels::cpu::swiglu_bwd(f64(gq), f64(uq), f64(dyq), ref_dg, ref_du);
      Tensor dg = gpu_poisoned(s, dt), du = gpu_poisoned(s, dt);
      kernels::swiglu_bwd(to_gpu(gq), to_gpu(uq), to_gpu(dyq), dg, du);
      expect_match(dg, ref_dg, tol_for(dt), what + " dgate");
      expect_match(du, ref_du, tol_for(dt), what + " dup");
    }
}

TEST(CudaShortConv, ForwardAndBackwardAllWidths) {
  NATSL_REQUIRE_GPU();
  struct Case {
    int64_t B, T, C;
  };
  // One step, T shorter than W, odd channels, long sequences (several tiles per sequence; on an H200 the last
  // case's forward tiles are 9 steps, not a multiple of the 8 steps read together).
  const Case cases[] = {{1, 1, 1}, {2, 3, 5}, {2, 37, 5}, {3, 300, 64}, {1, 1000, 33}, {2, 2049, 256}, {1, 4096, 1202}};
  uint64_t seed = 500;
  for (DType dt : {DType::f32, DType::bf16})
    for (int64_t W : {int64_t(1), int64_t(3), int64_t(4), int64_t(8)})
      for (const Case& c : cases)
        for (bool silu : {false, true}) {
          const Shape s{c.B, c.T, c.C};
          const std::string what =
              case_name("short_conv", dt, s) + " W " + std::to_string(W) + (silu ? " silu" : " identity");
          Tensor xq = q(randn(s, seed++), dt), wq = q(randn({c.C, W}, seed++, DType::f64, 0.5), dt);
          Tensor ref_y = cpu_poisoned(s);
          kernels::cpu::short_conv_fwd(f64(xq), f64(wq), silu, ref_y);
          Tensor y = gpu_poisoned(s, dt);
          kernels::short_conv_fwd(to_gpu(xq), to_gpu(wq), silu, y);
          expect_match(y, ref_y, tol_for(dt), what + " fwd");

          Tensor dyq = q(randn(s, seed++), dt);
          Tensor ref_dx = cpu_poisoned(s), ref_dw = cpu_poisoned({c.C, W});
          kernels::cpu::short_conv_bwd(f64(xq), f64(wq), silu, f64(dyq), ref_dx, ref_dw);
          Tensor dx = gpu_poisoned(s, dt), dw = gpu_poisoned({c.C, W}, dt);
          kernels::short_conv_bwd(to_gpu(xq), to_gpu(wq), silu, to_gpu(dyq), dx, dw);
          expect_match(dx, ref_dx, tol_for(dt), what + " dx");
          expect_match(dw, ref_dw, sum_tol(dt), what + " dw");
        }
}
