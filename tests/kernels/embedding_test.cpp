// The embedding family (kernels/nn.h's embedding_fwd / embedding_bwd; the CUDA kernels in
// kernels/cuda/embedding*.cu, the backward's segment kernels in kernels/cuda/embedding_bwd.h): the CPU kernels
// against direct loops and gradcheck, then the CUDA kernels against the CPU reference in f64 on the same rounded
// inputs (Cuda* suites, skipped without a GPU).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "autograd/ops.h"
#include "kernels/cuda/embedding_bwd.h"
#include "kernels/nn.h"
#include "tests/cuda_test_util.h"
#include "tests/ops_test_util.h"

using namespace natsl;
using namespace natsl::testing;

namespace {
// Weight gradients summed over many rows in f32 (kF32Sum) or bf16 (kBf16).
constexpr Tol kF32Sum{2e-5, 2e-4};
Tol sum_tol(DType dt) { return dt == DType::bf16 ? kBf16 : kF32Sum; }
}  // namespace

TEST(Embedding, ForwardGathersRowsAndBackwardAddsRepeats) {
  const int64_t V = 7, D = 3;
  Tensor w = randn({V, D}, 1);
  Tensor ids = Tensor::from_vector(std::vector<int32_t>{4, 0, 4, 6, 4, 1}, {2, 3}, DType::i32);
  Tensor out = poisoned({2, 3, D});
  kernels::embedding_fwd(w, ids, out);
  auto wv = host(w), ov = host(out);
  std::vector<int> idv{4, 0, 4, 6, 4, 1};
  for (int i = 0; i < 6; ++i)
    for (int d = 0; d < D; ++d) EXPECT_EQ(ov[size_t(i * D + d)], wv[size_t(idv[size_t(i)] * D + d)]);

  Tensor dout = randn({2, 3, D}, 2);
  Tensor dw = Tensor::full({V, D}, 0.5, DType::f64);  // accumulated into, not overwritten
  kernels::embedding_bwd(ids, dout, dw);
  auto gv = host(dout), dwv = host(dw);
  for (int v = 0; v < V; ++v)
    for (int d = 0; d < D; ++d) {
      double want = 0.5;
      for (int i = 0; i < 6; ++i)
        if (idv[size_t(i)] == v) want += gv[size_t(i * D + d)];
      EXPECT_NEAR(dwv[size_t(v * D + d)], want, 1e-15);
    }
}

TEST(Embedding, Bf16RowsIntoAnF32TableAreSummedInF32FromZero) {
  // dweight f32 for bf16 dout (autograd's sink into a bf16 run's f32 .grad): each id's rows summed in f32 from zero in
  // position order, then added to the row once; absent ids' rows untouched. And in one dtype, the same order.
  const int64_t V = 6, D = 5;
  const std::vector<int64_t> idv{3, 0, 3, 5, 3, 0, 1};
  Tensor ids = Tensor::from_vector(idv, {7}, DType::i64);
  for (DType gd : {DType::bf16, DType::f32, DType::f64}) {
    const DType wd = gd == DType::bf16 ? DType::f32 : gd;
    Tensor dout = randn({7, D}, 3).to(gd), dw = randn({V, D}, 4).to(wd);
    const Tensor prior = dw.clone();
    kernels::embedding_bwd(ids, dout, dw);
    auto check = [&](auto zero) {
      using W = decltype(zero);
      const std::vector<W> p = prior.to_vector<W>(), got = dw.to_vector<W>(), g = dout.to(wd).to_vector<W>();
      for (int64_t v = 0; v < V; ++v)
        for (int64_t d = 0; d < D; ++d) {
          W sum = W(0);
          bool any = false;
          for (size_t i = 0; i < idv.size(); ++i)
            if (idv[i] == v) sum = W(sum + g[i * size_t(D) + size_t(d)]), any = true;
          const W want = any ? W(p[size_t(v * D + d)] + sum) : p[size_t(v * D + d)];
          EXPECT_EQ(0, std::memcmp(&got[size_t(v * D + d)], &want, sizeof(W))) << dtype_name(gd) << " id " << v << " col " << d;
        }
    };
    if (wd == DType::f32) check(float{});
    else check(double{});
  }
  EXPECT_THROW(kernels::embedding_bwd(ids, randn({7, D}, 5).to(DType::f32), Tensor::zeros({V, D}, DType::bf16)), Error);
}

TEST(Embedding, GradcheckWithRepeatedIds) {
  Tensor ids = random_ids({3, 5}, 4, 7);  // 15 draws from 4 ids: repeats are certain
  expect_gradcheck([ids](auto& v) { return embedding(v[0], ids); }, {leaf({4, 3}, 1)}, "embedding i64");
  Tensor ids32 = Tensor::from_vector(std::vector<int32_t>{2, 2, 0}, {3}, DType::i32);
  expect_gradcheck([ids32](auto& v) { return embedding(v[0], ids32); }, {leaf({3, 2}, 2)}, "embedding i32");
}

TEST(Embedding, OutOfRangeIdIsAnInputError) {
  Tensor w = randn({5, 2}, 1);
  EXPECT_THROW(embedding(w, Tensor::from_vector(std::vector<int64_t>{0, 5}, {2}, DType::i64)), InputError);
  EXPECT_THROW(embedding(w, Tensor::from_vector(std::vector<int32_t>{-1}, {1}, DType::i32)), InputError);
  EXPECT_THROW(embedding(w, Tensor::from_vector(std::vector<double>{0}, {1})), Error);  // float ids
}

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

TEST(CudaEmbedding, Bf16RowsIntoAnF32TableGiveTheCpuBits) {
  // An f32 dweight for bf16 dout (autograd's sink into the f32 .grad): the rows summed in f32 in position order, then
  // added once, as the CPU does: the same bits, through both segment kernels, vector rows (D 64) and scalar ones (D 7),
  // absent ids' rows untouched.
  NATSL_REQUIRE_GPU();
  uint64_t seed = 800;
  for (const auto& [V, D, N] : {std::tuple<int64_t, int64_t, int64_t>{50, 64, 300}, {33, 7, 1000}, {1000, 64, 4099}})
    for (DType idt : {DType::i32, DType::i64}) {
      Tensor ids = random_token_ids({N}, V, seed++, idt);
      Tensor dq = q(randn({N, D}, seed++), DType::bf16);
      Tensor w0 = randn({V, D}, seed++).to(DType::f32);
      Tensor ref = w0.clone();
      kernels::cpu::embedding_bwd(ids, dq, ref);
      using kernels::cuda::EmbeddingBwdSegmentsKernel;
      for (EmbeddingBwdSegmentsKernel k : {EmbeddingBwdSegmentsKernel::radix_sort, EmbeddingBwdSegmentsKernel::cooperative}) {
        const std::string what = case_name("embedding_bwd bf16 into f32", DType::f32, {V, D}) + " N " + std::to_string(N) +
                                 (k == EmbeddingBwdSegmentsKernel::radix_sort ? " radix sort" : " cooperative");
        Tensor dw = to_gpu(w0);
#ifdef NATSL_WITH_CUDA
        const auto seg = kernels::cuda::embedding_bwd_segments(to_gpu(ids), V, kernels::cuda::EmbeddingBwdPlan{k});
        kernels::cuda::embedding_bwd_accumulate(seg, to_gpu(dq), dw);
#endif
        expect_same_bits(dw, ref, what);
      }
      Tensor dw = to_gpu(w0);
      kernels::embedding_bwd(to_gpu(ids), to_gpu(dq), dw);
      expect_same_bits(dw, ref, "embedding_bwd bf16 into f32 (dispatcher)");
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

