// CUDA reductions against the CPU reference (which accumulates in double).
// Tolerances: sums of up to 3e5 mixed-sign f32 terms: rel RMS 2e-5, max 2e-4 of max|ref| (f32 outputs);
// bf16 outputs kBf16. sum_squares writes f32 for both input dtypes: kF32.
#include "kernels/reduce.h"
#include "tests/cuda_test_util.h"

using namespace natsl;
using namespace natsl::testing;

namespace {
constexpr Tol kF32Sum{2e-5, 2e-4};

Shape keepdim_shape(const Shape& s, const std::vector<int64_t>& dims) {
  Shape k = s;
  for (int64_t d : dims) k[size_t(d < 0 ? d + int64_t(s.size()) : d)] = 1;
  return k;
}
}  // namespace

TEST(CudaReduce, SumDimsContiguous) {
  NATSL_REQUIRE_GPU();
  struct Case {
    Shape s;
    std::vector<int64_t> dims;
  };
  const Case cases[] = {
      {{37, 129}, {0}},        {{37, 129}, {1}},        {{37, 129}, {0, 1}},      {{1, 1}, {0}},
      {{4, 5, 6, 7}, {1, 3}},  {{4, 5, 6, 7}, {0, 2}},  {{4, 5, 6, 7}, {0, 1, 2}}, {{3, 100000}, {1}},
      {{100000, 3}, {0}},      {{300001}, {0}},         {{2048, 1024}, {0}},      {{7, 1, 9}, {1}},
  };
  uint64_t seed = 1;
  for (DType dt : {DType::f32, DType::bf16})
    for (const Case& c : cases) {
      Tensor xq = q(randn(c.s, seed++), dt);
      Shape ks = keepdim_shape(c.s, c.dims);
      Tensor ref = cpu_poisoned(ks);
      kernels::sum_dims(f64(xq), c.dims, ref);
      Tensor out = gpu_poisoned(ks, dt);
      kernels::sum_dims(to_gpu(xq), c.dims, out);
      std::string dims;
      for (int64_t d : c.dims) dims += std::to_string(d) + " ";
      expect_match(out, ref, dt == DType::f32 ? kF32Sum : kBf16, case_name("sum_dims", dt, c.s) + " over " + dims);
    }
}

TEST(CudaReduce, SumDimsOfStridedAndBroadcastViews) {
  NATSL_REQUIRE_GPU();
  for (DType dt : {DType::f32, DType::bf16}) {
    Tensor base = q(randn({129, 37}, 40), dt);
    Tensor g = to_gpu(base);
    // transposed view [37, 129]
    for (std::vector<int64_t> dims : {std::vector<int64_t>{0}, std::vector<int64_t>{1}}) {
      Tensor ref = cpu_poisoned(keepdim_shape({37, 129}, dims));
      kernels::sum_dims(f64(base).transpose(0, 1), dims, ref);
      Tensor out = gpu_poisoned(keepdim_shape({37, 129}, dims), dt);
      kernels::sum_dims(g.transpose(0, 1), dims, out);
      expect_match(out, ref, dt == DType::f32 ? kF32Sum : kBf16, case_name("sum_dims transposed", dt, {37, 129}));
    }
    // sum_to_shape of a broadcast gradient (the autograd reduction): [6, 129, 37] -> [37]
    Tensor big = q(randn({6, 129, 37}, 41), dt);
    Tensor ref = cpu_poisoned({37});
    kernels::sum_to_shape(f64(big), ref);
    Tensor out = gpu_poisoned({37}, dt);
    kernels::sum_to_shape(to_gpu(big), out);
    expect_match(out, ref, dt == DType::f32 ? kF32Sum : kBf16, case_name("sum_to_shape", dt, {6, 129, 37}));
  }
}

TEST(CudaReduce, SumDimsIsDeterministic) {
  NATSL_REQUIRE_GPU();
  Tensor x = to_gpu(q(randn({4096, 513}, 5), DType::f32));
  Tensor a = gpu_poisoned({1, 513}, DType::f32), b = gpu_poisoned({1, 513}, DType::f32);
  kernels::sum_dims(x, {0}, a);
  kernels::sum_dims(x, {0}, b);
  expect_same_bits(a, b, "sum_dims over rows");
}

TEST(CudaReduce, SumSquares) {
  NATSL_REQUIRE_GPU();
  uint64_t seed = 60;
  for (DType dt : {DType::f32, DType::bf16})
    for (int64_t n : {int64_t(1), int64_t(7), int64_t(1000), int64_t(3000001)}) {
      Tensor xq = q(randn({n}, seed++), dt);
      Tensor ref = cpu_poisoned({1});
      kernels::cpu::sum_squares(f64(xq), ref);
      Tensor out = gpu_poisoned({1}, DType::f32);
      kernels::sum_squares(to_gpu(xq), out);
      expect_match(out, ref, kF32, case_name("sum_squares", dt, {n}));
      // a view starting one element in: not 16-byte aligned
      if (n > 1) {
        Tensor ref2 = cpu_poisoned({1});
        kernels::cpu::sum_squares(f64(xq).slice(0, 1, n).contiguous(), ref2);
        Tensor out2 = gpu_poisoned({1}, DType::f32);
        kernels::sum_squares(to_gpu(xq).slice(0, 1, n), out2);
        expect_match(out2, ref2, kF32, case_name("sum_squares misaligned", dt, {n - 1}));
      }
    }
  Tensor x = to_gpu(q(randn({3000001}, 9), DType::f32));
  Tensor a = gpu_poisoned({1}, DType::f32), b = gpu_poisoned({1}, DType::f32);
  kernels::sum_squares(x, a);
  kernels::sum_squares(x, b);
  expect_same_bits(a, b, "sum_squares");
}
