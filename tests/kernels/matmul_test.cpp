// The matmul family (kernels/matmul.h, kernels/cpu/matmul.cpp, kernels/cuda/matmul.cu): the CPU kernel and
// the matmul / linear ops, then cuBLASLt against the CPU reference (CudaMatmul, skipped without a GPU).
//
// matmul kernel (batched, transposes, alpha/beta, shared b, bf16) and the matmul / linear ops.
#include <cstring>

#include "autograd/ops.h"
#include "kernels/cpu/eigen.h"
#include "kernels/elementwise.h"
#include "kernels/matmul.h"
#include "tests/cuda_test_util.h"
#include "tests/ops_test_util.h"
#if defined(_OPENMP)
#include <omp.h>
#endif
#ifdef NATSL_WITH_CUDA
#include "kernels/cuda/matmul_config.h"
#include "kernels/cuda/matmul_thin.h"
#endif

using namespace natsl;
using namespace natsl::testing;

namespace {

// out[i] = alpha * op(a[i]) op(b[i or shared]) + beta * c0[i], by loops in double.
std::vector<double> loop_matmul(const Tensor& a, const Tensor& b, const std::vector<double>& c0, bool ta, bool tb,
                                double alpha, double beta, int64_t M, int64_t N, int64_t K) {
  auto av = host(a), bv = host(b);
  const int64_t batch = int64_t(c0.size()) / (M * N);
  const bool shared = b.dim() == 2;
  std::vector<double> out(c0.size());
  for (int64_t i = 0; i < batch; ++i)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k) {
          double x = av[size_t(i * M * K + (ta ? k * M + m : m * K + k))];
          double y = bv[size_t((shared ? 0 : i * K * N) + (tb ? n * K + k : k * N + n))];
          s += x * y;
        }
        size_t o = size_t(i * M * N + m * N + n);
        out[o] = alpha * s + (beta != 0 ? beta * c0[o] : 0.0);
      }
  return out;
}

Shape mat(Shape batch, int64_t r, int64_t c) {
  batch.push_back(r);
  batch.push_back(c);
  return batch;
}

}  // namespace

TEST(MatmulKernel, BatchedTransposesAlphaBetaMatchLoops) {
  const int64_t M = 5, N = 3, K = 7;
  const Shape batch{2, 3};
  uint64_t seed = 10;
  for (bool shared : {false, true})
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (double beta : {0.0, -0.5}) {
          SCOPED_TRACE(::testing::Message() << "shared " << shared << " ta " << ta << " tb " << tb << " beta " << beta);
          Tensor a = randn(mat(batch, ta ? K : M, ta ? M : K), ++seed);
          Tensor b = randn(mat(shared ? Shape{} : batch, tb ? N : K, tb ? K : N), ++seed);
          Tensor out = beta == 0 ? poisoned(mat(batch, M, N)) : randn(mat(batch, M, N), ++seed);
          std::vector<double> c0 = host(out);
          kernels::matmul(a, b, out, ta, tb, 1.5, beta);
          Tensor want = Tensor::from_vector(loop_matmul(a, b, c0, ta, tb, 1.5, beta, M, N, K), out.shape());
          EXPECT_CLOSE(out, want, 1e-14, 1e-12);
        }
}

TEST(MatmulKernel, Bf16ComputesInF32) {
  const int64_t M = 9, N = 17, K = 33;
  Tensor a = randn({2, M, K}, 1), b = randn({K, N}, 2);
  Tensor a16 = a.to(DType::bf16), b16 = b.to(DType::bf16);
  Tensor out = poisoned({2, M, N}, DType::bf16);
  kernels::matmul(a16, b16, out, false, false, 1.0, 0.0);
  // Oracle: the same bf16-rounded operands multiplied in double; the only further error is the final
  // rounding to bf16 (relative 2^-8) plus f32 accumulation.
  std::vector<double> c0(size_t(2 * M * N), 0.0);
  Tensor want = Tensor::from_vector(loop_matmul(a16.to(DType::f64), b16.to(DType::f64), c0, false, false, 1, 0, M,
                                                N, K), {2, M, N});
  EXPECT_CLOSE(out.to(DType::f64), want, 4e-3, 0.1);
}

// bf16 operands into an f32 out (the weight gradient written into an f32 gradient buffer): the f32 sum is not
// rounded to bf16, so it is as close to the exact product of the bf16 values as f32 accumulation allows, and
// beta = 1 adds it to what out held. Every transpose, a shared b, a batch.
TEST(MatmulKernel, Bf16OperandsIntoF32Out) {
  const int64_t M = 9, N = 17, K = 33;
  uint64_t seed = 40;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (double beta : {0.0, 1.0}) {
        SCOPED_TRACE(::testing::Message() << "ta " << ta << " tb " << tb << " beta " << beta);
        Tensor a16 = randn({2, ta ? K : M, ta ? M : K}, ++seed).to(DType::bf16);
        Tensor b16 = randn({tb ? N : K, tb ? K : N}, ++seed).to(DType::bf16);
        Tensor out = beta == 0 ? poisoned({2, M, N}, DType::f32) : randn({2, M, N}, ++seed, DType::f32);
        const std::vector<double> c0 = host(out);
        kernels::matmul(a16, b16, out, ta, tb, 1.0, beta);
        ASSERT_EQ(out.dtype(), DType::f32);
        Tensor want = Tensor::from_vector(
            loop_matmul(a16.to(DType::f64), b16.to(DType::f64), c0, ta, tb, 1.0, beta, M, N, K), {2, M, N});
        EXPECT_CLOSE(out.to(DType::f64), want, 1e-5, 1e-4);  // f32 accumulation only: far inside bf16's 4e-3
      }
  // Other mixes are refused.
  Tensor a32 = randn({M, K}, 1, DType::f32), b16 = randn({K, N}, 2).to(DType::bf16);
  EXPECT_THROW(kernels::matmul(a32, b16, Tensor::empty({M, N}, DType::f32)), Error);
  EXPECT_THROW(kernels::matmul(a32, a32.transpose(0, 1).contiguous(), Tensor::empty({M, M}, DType::bf16)), Error);
}

TEST(MatmulKernel, RejectsMismatchedShapes) {
  Tensor a = randn({2, 3, 4}, 1), out = Tensor::empty({2, 3, 5}, DType::f64);
  EXPECT_THROW(kernels::matmul(a, randn({2, 5, 5}, 2), out), Error);         // inner dims 4 vs 5
  EXPECT_THROW(kernels::matmul(a, randn({3, 4, 5}, 3), out), Error);         // batch 3 vs 2
  EXPECT_THROW(kernels::matmul(a, randn({4, 5}, 4, DType::f32), out), Error);  // dtype
  EXPECT_THROW(kernels::matmul(a, randn({4, 6}, 5), out), Error);            // out's N
  EXPECT_THROW(kernels::matmul(a, randn({4, 5}, 6).transpose(0, 1), Tensor::empty({2, 3, 4}, DType::f64)), Error);
}

TEST(MatmulOp, ForwardBroadcastsBatchLikeNumpy) {
  Tensor a = randn({2, 1, 3, 4}, 1), b = randn({3, 4, 5}, 2);
  Tensor c = natsl::matmul(a, b);
  ASSERT_EQ(c.shape(), (Shape{2, 3, 3, 5}));
  auto av = host(a), bv = host(b), cv = host(c);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      for (int m = 0; m < 3; ++m)
        for (int n = 0; n < 5; ++n) {
          double s = 0;
          for (int k = 0; k < 4; ++k) s += av[size_t(i * 12 + m * 4 + k)] * bv[size_t(j * 20 + k * 5 + n)];
          EXPECT_NEAR(cv[size_t(((i * 3 + j) * 3 + m) * 5 + n)], s, 1e-13);
        }
}

TEST(MatmulOp, GradcheckBroadcastBatchWithTransposes) {
  const int64_t M = 3, N = 2, K = 5;
  uint64_t seed = 100;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "ta " << ta << " tb " << tb);
      auto f = [ta, tb](const std::vector<Tensor>& v) { return natsl::matmul(v[0], v[1], ta, tb); };
      Shape as = ta ? Shape{K, M} : Shape{M, K}, bs = tb ? Shape{N, K} : Shape{K, N};
      // broadcast batch dims on both sides
      expect_gradcheck(f, {leaf(mat({2, 1}, as[0], as[1]), ++seed), leaf(mat({3}, bs[0], bs[1]), ++seed)}, "broadcast");
      // b 2-D shared by a batched a
      expect_gradcheck(f, {leaf(mat({2, 3}, as[0], as[1]), ++seed), leaf(bs, ++seed)}, "shared b");
      // a 2-D against a batched b
      expect_gradcheck(f, {leaf(as, ++seed), leaf(mat({2}, bs[0], bs[1]), ++seed)}, "2-D a");
      // plain 2-D
      expect_gradcheck(f, {leaf(as, ++seed), leaf(bs, ++seed)}, "2-D");
    }
}

TEST(LinearOp, ForwardMatchesLoopAndGradcheck) {
  Tensor x = randn({2, 3, 4}, 1), w = randn({5, 4}, 2), bias = randn({5}, 3);
  auto xv = host(x), wv = host(w), bv = host(bias), yv = host(natsl::linear(x, w, bias));
  for (int r = 0; r < 6; ++r)
    for (int o = 0; o < 5; ++o) {
      double s = bv[size_t(o)];
      for (int i = 0; i < 4; ++i) s += xv[size_t(r * 4 + i)] * wv[size_t(o * 4 + i)];
      EXPECT_NEAR(yv[size_t(r * 5 + o)], s, 1e-13);
    }
  expect_gradcheck([](auto& v) { return natsl::linear(v[0], v[1], v[2]); },
                   {leaf({2, 3, 4}, 4), leaf({5, 4}, 5), leaf({5}, 6)}, "linear with bias");
  expect_gradcheck([](auto& v) { return natsl::linear(v[0], v[1]); }, {leaf({7, 1}, 7), leaf({3, 1}, 8)},
                   "linear without bias");
  // Only the weight requires grad (the input is data).
  Tensor data = randn({4, 3}, 9);
  expect_gradcheck([data](auto& v) { return natsl::linear(data, v[0]); }, {leaf({2, 3}, 10)}, "weight only");
}

// A residual c added in the product's epilogue (out = alpha op(a) op(b) + beta c) has the bits of the product
// into a new tensor followed by a separate add, in f32 and f64, with K long enough for Eigen to cut the sum
// into panels (an in-place `C += A B` would round once per panel); out is not read (poisoned); c is untouched.
// Through the autograd op too: linear(x, w, {}, r) == add(r, linear(x, w)) bit for bit, and its gradients.
TEST(MatmulKernel, ResidualInputHasTheBitsOfASeparateAdd) {
  uint64_t seed = 70;
  for (DType dt : {DType::f32, DType::f64})
    for (bool tb : {false, true}) {
      const int64_t M = 150, N = 131, K = 1031;
      Tensor a = randn({M, K}, ++seed, dt), b = randn({tb ? N : K, tb ? K : N}, ++seed, dt);
      Tensor c = randn({M, N}, ++seed, dt);
      const std::vector<double> c0 = host(c);
      Tensor prod = Tensor::empty({M, N}, dt), sum = Tensor::empty({M, N}, dt);
      kernels::matmul(a, b, prod, false, tb);
      kernels::binary_fwd(kernels::BinaryOp::Add, c, prod, sum);
      Tensor out = poisoned({M, N}, dt);
      kernels::matmul(a, b, out, false, tb, 1.0, 1.0, c);
      const std::string what = dtype_str(dt) + (tb ? " tb" : "");
      EXPECT_EQ(0, std::memcmp(out.data_ptr(), sum.data_ptr(), size_t(out.nbytes()))) << what;
      EXPECT_EQ(host(c), c0) << what << ": c changed";
      // beta = 0 ignores c.
      Tensor out0 = poisoned({M, N}, dt);
      kernels::matmul(a, b, out0, false, tb, 1.0, 0.0, c);
      EXPECT_EQ(0, std::memcmp(out0.data_ptr(), prod.data_ptr(), size_t(out.nbytes()))) << what << " beta 0";
    }
  // c on out's memory: the same start is out itself (nothing copied: out += the product); a partial overlap is
  // refused.
  {
    Tensor a2 = randn({3, 4}, 91, DType::f32), b2 = randn({4, 5}, 92, DType::f32), big = randn({20}, 93, DType::f32);
    Tensor o = big.slice(0, 0, 15).view({3, 5});
    EXPECT_THROW(kernels::matmul(a2, b2, o, false, false, 1.0, 1.0, big.slice(0, 5, 20).view({3, 5})), Error);
    Tensor prod = Tensor::empty({3, 5}, DType::f32), want = Tensor::empty({3, 5}, DType::f32);
    kernels::matmul(a2, b2, prod);
    kernels::binary_fwd(kernels::BinaryOp::Add, o, prod, want);
    kernels::matmul(a2, b2, o, false, false, 1.0, 1.0, big.slice(0, 0, 15).view({3, 5}));
    EXPECT_EQ(0, std::memcmp(o.data_ptr(), want.data_ptr(), size_t(want.nbytes()))) << "c on out's memory";
  }
  Tensor x = randn({2, 3, 300}, 80, DType::f32), w = randn({7, 300}, 81, DType::f32), r = randn({2, 3, 7}, 82, DType::f32);
  const Tensor fused = natsl::linear(x, w, Tensor(), r), composed = add(r, natsl::linear(x, w));
  EXPECT_EQ(0, std::memcmp(fused.data_ptr(), composed.data_ptr(), size_t(fused.nbytes())));
  EXPECT_THROW(natsl::linear(x, w, Tensor(), randn({2, 3, 6}, 83, DType::f32)), Error);  // residual shape
  expect_gradcheck([](auto& v) { return natsl::linear(v[0], v[1], Tensor(), v[2]); },
                   {leaf({2, 3, 4}, 84), leaf({5, 4}, 85), leaf({2, 3, 5}, 86)}, "linear with a residual");
  expect_gradcheck([](auto& v) { return natsl::linear(v[0], v[1], v[2], v[3]); },
                   {leaf({3, 4}, 87), leaf({5, 4}, 88), leaf({5}, 89), leaf({3, 5}, 90)}, "linear, bias and residual");
}

// Products larger than one 128 x 128 tile of C, ragged at both edges, with every transpose: the tiles cover C
// exactly once (checked against loops in double).
TEST(MatmulKernel, TiledProductsCoverRaggedEdges) {
  const int64_t M = 300, N = 131, K = 257;
  uint64_t seed = 40;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (double beta : {0.0, 0.25}) {
        SCOPED_TRACE(::testing::Message() << "ta " << ta << " tb " << tb << " beta " << beta);
        Tensor a = randn({ta ? K : M, ta ? M : K}, ++seed, DType::f64);
        Tensor b = randn({tb ? N : K, tb ? K : N}, ++seed, DType::f64);
        Tensor out = beta == 0 ? poisoned({M, N}, DType::f64) : randn({M, N}, ++seed, DType::f64);
        std::vector<double> c0 = host(out);
        kernels::matmul(a, b, out, ta, tb, 0.75, beta);
        EXPECT_CLOSE(out, Tensor::from_vector(loop_matmul(a, b, c0, ta, tb, 0.75, beta, M, N, K), out.shape()), 1e-12,
                     1e-12);
      }
}

// The same f32 product gives the same bits whatever cache sizes the CPU reports to Eigen and however many
// threads run it: the machine must not change a training run (kernels/cpu/eigen.h). K = 4099 is long enough
// for Eigen to split the sum into cache-sized panels, whose length would otherwise follow the CPU's L1 size.
TEST(MatmulKernel, F32ResultsDoNotDependOnTheCpuOrTheThreadCount) {
  const int64_t M = 200, N = 140, K = 4099;
  Tensor a = randn({K, M}, 51, DType::f32);
  Tensor b = randn({K, N}, 52, DType::f32);
  auto product = [&] {
    Tensor out = poisoned({M, N}, DType::f32);
    kernels::matmul(a, b, out, /*trans_a=*/true, /*trans_b=*/false, 1.0, 0.0);
    return out.to_vector<float>();
  };
  const std::vector<float> want = product();
  struct Cpu {
    std::ptrdiff_t l1, l2, l3;
  };
  for (Cpu cpu : {Cpu{32 << 10, 1 << 20, 32 << 20}, Cpu{48 << 10, 2 << 20, 96 << 20}, Cpu{64 << 10, 512 << 10, 0}})
    for (int threads : {1, 2, 3}) {
      SCOPED_TRACE(::testing::Message() << "L1 " << cpu.l1 << " threads " << threads);
      Eigen::setCpuCacheSizes(cpu.l1, cpu.l2, cpu.l3);  // what Eigen would have read from another CPU
#if defined(_OPENMP)
      omp_set_num_threads(threads);
#endif
      const std::vector<float> got = product();
      ASSERT_EQ(got.size(), want.size());
      EXPECT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * sizeof(float)));
    }
#if defined(_OPENMP)
  omp_set_num_threads(omp_get_num_procs());
#endif
}

// cuBLASLt matmul against the CPU reference (Eigen in f64 on the same rounded inputs).
// Tolerances: f32 (exact f32 mode, K <= 700) kF32; bf16 operands with f32 accumulation and a bf16 output
// kBf16; TF32 (opt-in) rel RMS 3e-3.
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

TEST(CudaMatmul, ResidualInputInTheEpilogue) {
  NATSL_REQUIRE_GPU();
  // out = alpha op(a) op(b) + beta c with c a separate input (cuBLASLt's C): against the f64 reference, out not
  // read (poisoned), c untouched; batched, shared b, and c misaligned (the copy path).
  uint64_t seed = 500;
  for (DType dt : {DType::f32, DType::bf16})
    for (const MM& mc : {MM{{}, 257, 129, 300, false, true, false}, MM{{4}, 33, 65, 17, false, true, true},
                         MM{{3}, 31, 17, 9, false, false, false}}) {
      const Shape as = with_batch(mc.batch, mc.M, mc.K);
      const Shape bs = with_batch(mc.shared_b ? Shape{} : mc.batch, mc.tb ? mc.N : mc.K, mc.tb ? mc.K : mc.N);
      const Shape os = with_batch(mc.batch, mc.M, mc.N);
      Tensor aq = q(randn(as, ++seed), dt), bq = q(randn(bs, ++seed), dt), cq = q(randn(os, ++seed), dt);
      Tensor ref = f64(cq);
      kernels::cpu::matmul(f64(aq), f64(bq), ref, false, mc.tb, 0.5, 1.0);
      const std::string what = mm_name(mc, dt, 0.5, 1.0) + " residual";
      Tensor c = to_gpu(cq), out = gpu_poisoned(os, dt);
      kernels::matmul(to_gpu(aq), to_gpu(bq), out, false, mc.tb, 0.5, 1.0, c);
      expect_match(out, ref, tol_for(dt), what);
      expect_same_bits(c, to_gpu(cq), what + ": c untouched");
      Tensor big = Tensor::empty({cq.numel() + 1}, dt, gpu());
      Tensor c_shift = big.slice(0, 1, cq.numel() + 1).view(os);
      c_shift.copy_(to_gpu(cq));
      Tensor out2 = gpu_poisoned(os, dt);
      kernels::matmul(to_gpu(aq), to_gpu(bq), out2, false, mc.tb, 0.5, 1.0, c_shift);
      expect_match(out2, ref, tol_for(dt), what + " (c misaligned)");
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

// Rows of a length that is not a multiple of 16 bytes go through zero-padded copies with 8-element rows
// (kernels/cuda/matmul.cu, padded_matmul) unless the thin kernels take them: here the 12-wide and 5 x 3 x 7 cases;
// Gated DeltaNet's 1024 -> 6 projections (forward, input gradient, weight gradient into the f32 buffer, a residual
// c) now take the thin kernels (ThinProductsMatchTheReference below), and stay here as cases of the whole
// dispatch. A wide odd dim is not padded. Against the f64 reference.
TEST(CudaMatmul, NarrowRowsGoThroughPaddedCopies) {
  NATSL_REQUIRE_GPU();
  uint64_t seed = 800;
  for (DType dt : {DType::bf16, DType::f32})
    for (const MM& c : {MM{{}, 4096, 6, 1024, false, true, false},   // y = x W^T
                        MM{{}, 4096, 1024, 6, false, false, false},  // dx = dy W
                        MM{{}, 6, 1024, 4096, true, false, false},   // dW = dy^T x
                        MM{{}, 12, 304, 2050, true, false, false},   // K wide and odd, not a row length: M padded only
                        MM{{4}, 64, 12, 1024, false, true, true},    // a batch folded into rows
                        MM{{}, 5, 3, 7, true, true, false}})
      for (double beta : {0.0, 0.5}) run_case(c, dt, 1.0, beta, tol_for(dt), seed += 3);
  // The weight gradient of a 6-output projection in bf16, added into an f32 buffer (beta 1), and out = x W^T + c.
  Tensor dy = q(randn({4096, 6}, 900), DType::bf16), x = q(randn({4096, 1024}, 901), DType::bf16);
  Tensor g32 = randn({6, 1024}, 902, DType::f32);
  Tensor ref = f64(g32);
  kernels::cpu::matmul(f64(dy), f64(x), ref, true, false, 1.0, 1.0);
  Tensor out = to_gpu(g32);
  kernels::matmul(to_gpu(dy), to_gpu(x), out, true, false, 1.0, 1.0);
  expect_match(out, ref, kF32, "padded bf16 -> f32 dW, beta 1");
  Tensor w = q(randn({6, 1024}, 903), DType::bf16), r = q(randn({4096, 6}, 904), DType::bf16);
  Tensor ref2 = f64(r);
  kernels::cpu::matmul(f64(x), f64(w), ref2, false, true, 1.0, 1.0);
  Tensor out2 = gpu_poisoned({4096, 6}, DType::bf16);
  kernels::matmul(to_gpu(x), to_gpu(w), out2, false, true, 1.0, 1.0, to_gpu(r));
  expect_match(out2, ref2, kBf16, "padded y = x W^T + c");
}

// Products with one dim of at most 8 run on the thin kernels (kernels/cuda/matmul_thin.h): y = x W^T (rows), dx =
// dy W (spread) and dW = dy^T x (gather: slabs of rows, two passes), against the f64 reference for every narrow
// width 1..8, wide dims that are not multiples of the kernels' blocks (vectors left over in a warp's last pass, a
// column block of the gather only partly used, a gather slab cut short, one row), alpha and beta, a residual c, a
// folded batch, bf16 operands into an f32 out (the weight gradient's sink), and the same bits on a second call.
// The shapes of natsl-340m's a / b projections must take them (thin_matmul_applies).
TEST(CudaMatmul, ThinProductsMatchTheReference) {
  NATSL_REQUIRE_GPU();
#ifdef NATSL_WITH_CUDA
  uint64_t seed = 1200;
  for (DType dt : {DType::bf16, DType::f32})
    for (int64_t n = 1; n <= 8; ++n) {
      const int64_t wide = dt == DType::bf16 ? 1032 : 1028;  // rows of 129 / 257 vectors
      for (const MM& c : {MM{{}, 333, n, wide, false, true, false},    // rows: y = x W^T
                          MM{{}, 1, n, 8, false, true, false},         // one row, one vector
                          MM{{}, 333, wide, n, false, false, false},   // spread: dx = dy W
                          MM{{}, n, wide, 4097, true, false, false},   // gather: dW = dy^T x, a short last slab
                          MM{{}, n, 264, 1, true, false, false},       // gather: one row, one column block part used
                          MM{{3}, 65, n, 136, false, true, true}})     // rows, a batch folded into rows
        for (double beta : {0.0, 0.75}) run_case(c, dt, beta == 0.0 ? 1.0 : 0.5, beta, tol_for(dt), seed += 3);
    }
  // Long reductions (many slabs) in f32 out from bf16 operands, beta 1 (the gradient sink), and determinism.
  for (int64_t n : {2, 6}) {
    Tensor dy = q(randn({40000, n}, ++seed), DType::bf16), x = q(randn({40000, 520}, ++seed), DType::bf16);
    Tensor g32 = randn({n, 520}, ++seed, DType::f32);
    Tensor ref = f64(g32);
    kernels::cpu::matmul(f64(dy), f64(x), ref, true, false, 1.0, 1.0);
    Tensor out = to_gpu(g32), out2 = to_gpu(g32);
    ASSERT_TRUE(kernels::cuda::thin_matmul_applies(to_gpu(dy), to_gpu(x), out, true, false, Tensor()));
    kernels::matmul(to_gpu(dy), to_gpu(x), out, true, false, 1.0, 1.0);
    kernels::matmul(to_gpu(dy), to_gpu(x), out2, true, false, 1.0, 1.0);
    expect_match(out, ref, kF32, "thin gather bf16 -> f32, beta 1, R 40000");
    expect_same_bits(out, out2, "thin gather: the same bits twice");
  }
  // natsl-340m's projection shapes (d 1024 -> 6 heads) take the thin kernels; a residual c in the rows kernel.
  Tensor x = q(randn({2048, 1024}, ++seed), DType::bf16), w = q(randn({6, 1024}, ++seed), DType::bf16);
  Tensor dy = q(randn({2048, 6}, ++seed), DType::bf16), r = q(randn({2048, 6}, ++seed), DType::bf16);
  const Tensor gx = to_gpu(x), gw = to_gpu(w), gdy = to_gpu(dy), gr = to_gpu(r);
  EXPECT_TRUE(kernels::cuda::thin_matmul_applies(gx, gw, gpu_poisoned({2048, 6}, DType::bf16), false, true, gr));
  EXPECT_TRUE(kernels::cuda::thin_matmul_applies(gdy, gw, gpu_poisoned({2048, 1024}, DType::bf16), false, false,
                                                 Tensor()));
  EXPECT_TRUE(kernels::cuda::thin_matmul_applies(gdy, gx, gpu_poisoned({6, 1024}, DType::f32), true, false, Tensor()));
  EXPECT_FALSE(kernels::cuda::thin_matmul_applies(gx, gx, gpu_poisoned({2048, 2048}, DType::bf16), false, true,
                                                  Tensor()));
  Tensor ref2 = f64(r);
  kernels::cpu::matmul(f64(x), f64(w), ref2, false, true, 1.0, 1.0);
  Tensor out3 = gpu_poisoned({2048, 6}, DType::bf16);
  kernels::matmul(gx, gw, out3, false, true, 1.0, 1.0, gr);
  expect_match(out3, ref2, kBf16, "thin y = x W^T + c");
  expect_same_bits(gr, to_gpu(r), "thin rows: c untouched");
#endif
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

// bf16 operands into an f32 out on the GPU (cuBLASLt with an f32 C/D) against the CPU kernel in double on the
// same bf16 values: every case of kCases, beta 0 and 1 (accumulating into the f32 out), one misaligned out.
TEST(CudaMatmul, Bf16OperandsIntoF32Out) {
  NATSL_REQUIRE_GPU();
  uint64_t seed = 500;
  for (const MM& c : kCases)
    for (double beta : {0.0, 1.0}) {
      const Shape as = mat(c.batch, c.ta ? c.K : c.M, c.ta ? c.M : c.K);
      const Shape bs = mat(c.shared_b ? Shape{} : c.batch, c.tb ? c.N : c.K, c.tb ? c.K : c.N);
      const Shape os = mat(c.batch, c.M, c.N);
      Tensor a16 = q(randn(as, ++seed), DType::bf16), b16 = q(randn(bs, ++seed), DType::bf16);
      Tensor c32 = randn(os, ++seed, DType::f32);
      Tensor ref = beta == 0 ? cpu_poisoned(os) : f64(c32);
      kernels::cpu::matmul(f64(a16), f64(b16), ref, c.ta, c.tb, 1.0, beta);
      Tensor out = beta == 0 ? gpu_poisoned(os, DType::f32) : to_gpu(c32);
      kernels::matmul(to_gpu(a16), to_gpu(b16), out, c.ta, c.tb, 1.0, beta);
      ASSERT_EQ(out.dtype(), DType::f32);
      expect_match(out, ref, kF32, mm_name(c, DType::bf16, 1.0, beta) + " -> f32");
    }
  // The out one element into its storage (a gradient view inside a flat buffer).
  const int64_t M = 19, N = 23, K = 29;
  Tensor a16 = q(randn({K, M}, 7), DType::bf16), b16 = q(randn({K, N}, 8), DType::bf16);
  Tensor c32 = randn({M, N}, 9, DType::f32);
  Tensor ref = f64(c32);
  kernels::cpu::matmul(f64(a16), f64(b16), ref, true, false, 1.0, 1.0);
  Tensor big = gpu_poisoned({M * N + 1}, DType::f32);
  Tensor out = big.slice(0, 1, M * N + 1).view({M, N});
  out.copy_(to_gpu(c32));
  kernels::matmul(to_gpu(a16), to_gpu(b16), out, true, false, 1.0, 1.0);
  expect_match(out, ref, kF32, "bf16 -> f32 matmul into a misaligned out");
}

TEST(CudaMatmul, F64IsRefused) {
  NATSL_REQUIRE_GPU();
  Tensor a = Tensor::zeros({2, 2}, DType::f64, gpu());
  Tensor o = Tensor::empty({2, 2}, DType::f64, gpu());
  EXPECT_THROW(kernels::matmul(a, a, o), Error);
}
