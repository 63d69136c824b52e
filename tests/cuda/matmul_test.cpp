// cuBLASLt matmul against the CPU reference (Eigen in f64 on the same rounded inputs).
// Tolerances: f32 (exact f32 mode, K <= 700) kF32; bf16 operands with f32 accumulation and a bf16 output
// kBf16; TF32 (opt-in) rel RMS 3e-3.
#include "kernels/matmul.h"
#include "tests/cuda/cuda_test_util.h"
#ifdef NATSL_WITH_CUDA
#include "kernels/cuda/matmul_config.h"
#endif

using namespace natsl;
using namespace natsl::testing;

namespace {

struct MM {
  Shape batch;  // batch dims of a and out
  int64_t M, N, K;
  bool ta, tb, shared_b;
};

std::string mm_name(const MM& c, DType dt, double alpha, double beta) {
  return "matmul " + dtype_str(dt) + " batch " + shape_str(c.batch) + " M" + std::to_string(c.M) + " N" +
         std::to_string(c.N) + " K" + std::to_string(c.K) + (c.ta ? " ta" : "") + (c.tb ? " tb" : "") +
         (c.shared_b ? " shared-b" : "") + " alpha " + std::to_string(alpha) + " beta " + std::to_string(beta);
}

Shape with_batch(const Shape& batch, int64_t r, int64_t c) {
  Shape s = batch;
  s.push_back(r);
  s.push_back(c);
  return s;
}

void run_case(const MM& c, DType dt, double alpha, double beta, Tol tol, uint64_t seed) {
  const Shape as = with_batch(c.batch, c.ta ? c.K : c.M, c.ta ? c.M : c.K);
  const Shape bs = with_batch(c.shared_b ? Shape{} : c.batch, c.tb ? c.N : c.K, c.tb ? c.K : c.N);
  const Shape os = with_batch(c.batch, c.M, c.N);
  Tensor aq = q(randn(as, seed), dt), bq = q(randn(bs, seed + 1), dt);
  Tensor ref, out;
  if (beta != 0.0) {
    Tensor cq = q(randn(os, seed + 2), dt);
    ref = f64(cq);
    out = to_gpu(cq);
  } else {
    ref = cpu_poisoned(os);
    out = gpu_poisoned(os, dt);  // beta = 0 must not read the (NaN) output
  }
  kernels::cpu::matmul(f64(aq), f64(bq), ref, c.ta, c.tb, alpha, beta);
  kernels::matmul(to_gpu(aq), to_gpu(bq), out, c.ta, c.tb, alpha, beta);
  expect_match(out, ref, tol, mm_name(c, dt, alpha, beta));
}

const MM kCases[] = {
    {{}, 1, 1, 1, false, false, false},      {{}, 17, 33, 65, false, false, false},
    {{}, 17, 33, 65, true, false, false},    {{}, 17, 33, 65, false, true, false},
    {{}, 17, 33, 65, true, true, false},     {{}, 257, 129, 300, false, true, false},
    {{}, 128, 256, 64, false, false, false}, {{}, 1, 1000, 7, false, true, false},
    {{3}, 31, 17, 9, false, false, false},   {{2, 3}, 5, 8, 700, true, true, false},
    {{4}, 33, 65, 17, false, true, true},    {{4}, 33, 65, 17, true, false, true},
    {{5}, 64, 32, 48, true, true, true},     {{7}, 1, 3, 5, false, false, true},
};

}  // namespace

TEST(CudaMatmul, AllTransposesBatchedAndSharedB) {
  NATSL_REQUIRE_GPU();
  uint64_t seed = 1;
  for (DType dt : {DType::f32, DType::bf16})
    for (const MM& c : kCases) {
      run_case(c, dt, 1.0, 0.0, tol_for(dt), seed += 3);
      run_case(c, dt, 0.5, 0.75, tol_for(dt), seed += 3);
    }
}

TEST(CudaMatmul, LargeProduct) {
  NATSL_REQUIRE_GPU();
  for (DType dt : {DType::f32, DType::bf16}) run_case({{}, 1000, 1537, 513, false, true, false}, dt, 1.0, 0.0, tol_for(dt), 77);
}

TEST(CudaMatmul, MisalignedOperands) {
  NATSL_REQUIRE_GPU();
  // Views one element into their storage: cuBLASLt must be told the real alignment.
  for (DType dt : {DType::f32, DType::bf16}) {
    const int64_t M = 19, N = 23, K = 29;
    Tensor aq = q(randn({M, K}, 5), dt), bq = q(randn({K, N}, 6), dt);
    Tensor ref = cpu_poisoned({M, N});
    kernels::cpu::matmul(f64(aq), f64(bq), ref, false, false, 1.0, 0.0);
    auto shifted = [&](const Tensor& t) {
      Tensor big = Tensor::empty({t.numel() + 1}, dt, gpu());
      Tensor v = big.slice(0, 1, t.numel() + 1).view(t.shape());
      v.copy_(to_gpu(t));
      return v;
    };
    Tensor out_big = gpu_poisoned({M * N + 1}, dt);
    Tensor out = out_big.slice(0, 1, M * N + 1).view({M, N});
    kernels::matmul(shifted(aq), shifted(bq), out, false, false, 1.0, 0.0);
    expect_match(out, ref, tol_for(dt), "matmul misaligned " + dtype_str(dt));
  }
}

TEST(CudaMatmul, Tf32IsOptIn) {
  NATSL_REQUIRE_GPU();
#ifdef NATSL_WITH_CUDA
  EXPECT_FALSE(kernels::cuda::matmul_allow_tf32()) << "TF32 must be off by default";
  kernels::cuda::set_matmul_allow_tf32(true);
  run_case({{}, 300, 200, 500, false, true, false}, DType::f32, 1.0, 0.0, Tol{3e-3, 3e-2}, 99);
  kernels::cuda::set_matmul_allow_tf32(false);
#endif
}

TEST(CudaMatmul, F64IsRefused) {
  NATSL_REQUIRE_GPU();
  Tensor a = Tensor::zeros({2, 2}, DType::f64, gpu());
  Tensor o = Tensor::empty({2, 2}, DType::f64, gpu());
  EXPECT_THROW(kernels::matmul(a, a, o), Error);
}
