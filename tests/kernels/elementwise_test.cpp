// CUDA elementwise family against the CPU reference (f64 oracle on the same rounded inputs).
// Tolerances: f32 kF32 (rel RMS 1e-5, max 1e-4 of max|ref|), bf16 kBf16 (6e-3, 1.2e-2): see cuda_test_util.h.
#include <cstring>
#include <string>
#include <utility>

#include "kernels/elementwise.h"
#include "tests/cuda_test_util.h"

using namespace natsl;
using namespace natsl::testing;
using kernels::BinaryOp;
using kernels::UnaryOp;

namespace {

const UnaryOp kUnaryOps[] = {UnaryOp::Neg,      UnaryOp::Exp,  UnaryOp::Log,  UnaryOp::Silu,  UnaryOp::Sigmoid,
                             UnaryOp::Softplus, UnaryOp::Tanh, UnaryOp::Sqrt, UnaryOp::Square};

// Inputs inside each op's domain; Softplus gets values past its x > 20 branch.
Tensor unary_input(UnaryOp op, int64_t n, uint64_t seed) {
  if (op == UnaryOp::Log || op == UnaryOp::Sqrt) return rand_uniform({n}, seed, 0.2, 4.0);
  if (op == UnaryOp::Softplus) return randn({n}, seed, DType::f64, 12.0);
  return randn({n}, seed, DType::f64, 2.0);
}

// A contiguous 1-D tensor of n elements on the GPU that starts one element into its storage, so its
// address is not 16-byte aligned (exercises the scalar path).
Tensor misaligned_gpu(const Tensor& host_q) {
  const int64_t n = host_q.numel();
  Tensor big = Tensor::empty({n + 1}, host_q.dtype(), gpu());
  Tensor v = big.slice(0, 1, n + 1);
  v.copy_(host_q.to(gpu()));
  return v;
}

}  // namespace

TEST(CudaElementwise, UnaryForwardAndBackwardAllOps) {
  NATSL_REQUIRE_GPU();
  uint64_t seed = 1;
  for (DType dt : {DType::f32, DType::bf16})
    for (UnaryOp op : kUnaryOps)
      for (int64_t n : {int64_t(1), int64_t(7), int64_t(4097), int64_t(1000003)})
        for (bool aligned : {true, false}) {
          if (!aligned && n > 5000) continue;
          const std::string what = std::string(kernels::unary_name(op)) + (aligned ? "" : " (misaligned)");
          Tensor xq = q(unary_input(op, n, seed++), dt);
          // forward
          Tensor ref_y = cpu_poisoned({n});
          kernels::cpu::unary_fwd(op, f64(xq), ref_y);
          Tensor xg = aligned ? to_gpu(xq) : misaligned_gpu(xq);
          Tensor yg = gpu_poisoned({n}, dt);
          kernels::unary_fwd(op, xg, yg);
          expect_match(yg, ref_y, tol_for(dt), case_name((what + " fwd").c_str(), dt, {n}));
          // backward, with the forward output given (as the autograd ops do) and without it
          Tensor yq = q(ref_y, dt), dyq = q(randn({n}, seed++), dt);
          for (bool with_y : {true, false}) {
            Tensor ref_dx = cpu_poisoned({n});
            kernels::cpu::unary_bwd(op, f64(xq), with_y ? f64(yq) : Tensor(), f64(dyq), ref_dx);
            Tensor dxg = gpu_poisoned({n}, dt);
            kernels::unary_bwd(op, xg, with_y ? to_gpu(yq) : Tensor(), to_gpu(dyq), dxg);
            expect_match(dxg, ref_dx, tol_for(dt),
                         case_name((what + (with_y ? " bwd" : " bwd (y recomputed)")).c_str(), dt, {n}));
          }
        }
}

TEST(CudaElementwise, UnaryInPlace) {
  NATSL_REQUIRE_GPU();
  for (DType dt : {DType::f32, DType::bf16}) {
    Tensor xq = q(randn({12345}, 3), dt);
    Tensor ref = cpu_poisoned({12345});
    kernels::cpu::unary_fwd(UnaryOp::Tanh, f64(xq), ref);
    Tensor g = to_gpu(xq);
    kernels::unary_fwd(UnaryOp::Tanh, g, g);
    expect_match(g, ref, tol_for(dt), case_name("tanh in place", dt, {12345}));
  }
}

TEST(CudaElementwise, BinaryBroadcastAndStrided) {
  NATSL_REQUIRE_GPU();
  struct Case {
    Shape a, b;
  };
  const Case cases[] = {{{1000003}, {1000003}}, {{33, 65}, {65}},   {{5, 1, 7}, {3, 1}},
                        {{4, 1}, {1, 6}},       {{1}, {2, 3, 5}}, {{2, 3, 4, 5}, {3, 1, 5}}};
  uint64_t seed = 100;
  for (DType dt : {DType::f32, DType::bf16})
    for (BinaryOp op : {BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div})
      for (const Case& c : cases) {
        Tensor aq = q(randn(c.a, seed++), dt);
        // Divisors kept away from zero.
        Tensor bq = q(op == BinaryOp::Div ? rand_uniform(c.b, seed++, 0.5, 2.0) : randn(c.b, seed++), dt);
        Shape s = kernels::broadcast_shapes(c.a, c.b);
        Tensor ref = cpu_poisoned(s);
        kernels::binary_fwd(op, f64(aq), f64(bq), ref);  // the dispatcher expands, then runs cpu::binary_fwd
        Tensor out = gpu_poisoned(s, dt);
        kernels::binary_fwd(op, to_gpu(aq), to_gpu(bq), out);
        const char* names[] = {"add", "sub", "mul", "div"};
        expect_match(out, ref, tol_for(dt),
                     case_name(names[int(op)], dt, s) + " from a " + shape_str(c.a) + ", b " + shape_str(c.b));
      }
}

TEST(CudaElementwise, BinaryTransposedOperand) {
  NATSL_REQUIRE_GPU();
  for (DType dt : {DType::f32, DType::bf16}) {
    Tensor aq = q(randn({37, 129}, 7), dt), bq = q(randn({129, 37}, 8), dt);
    Tensor ref = cpu_poisoned({37, 129});
    kernels::binary_fwd(BinaryOp::Mul, f64(aq), f64(bq).transpose(0, 1), ref);
    Tensor out = gpu_poisoned({37, 129}, dt);
    kernels::binary_fwd(BinaryOp::Mul, to_gpu(aq), to_gpu(bq).transpose(0, 1), out);
    expect_match(out, ref, tol_for(dt), case_name("mul with transposed b", dt, {37, 129}));
  }
}

TEST(CudaElementwise, Axpby) {
  NATSL_REQUIRE_GPU();
  for (DType dt : {DType::f32, DType::bf16})
    for (int64_t n : {int64_t(1), int64_t(1001), int64_t(1000003)}) {
      Tensor xq = q(randn({n}, 11), dt), yq = q(randn({n}, 12), dt);
      Tensor ref = cpu_poisoned({n});
      kernels::cpu::axpby(0.7, f64(xq), -1.3, f64(yq), ref);
      Tensor out = gpu_poisoned({n}, dt);
      kernels::axpby(0.7, to_gpu(xq), -1.3, to_gpu(yq), out);
      expect_match(out, ref, tol_for(dt), case_name("axpby", dt, {n}));
      // beta = 0 must not read y: y full of NaN leaves the result finite.
      Tensor nan_y = gpu_poisoned({n}, dt);
      Tensor ref2 = cpu_poisoned({n});
      kernels::cpu::axpby(2.0, f64(xq), 0.0, f64(xq), ref2);
      Tensor out2 = gpu_poisoned({n}, dt);
      kernels::axpby(2.0, to_gpu(xq), 0.0, nan_y, out2);
      expect_match(out2, ref2, tol_for(dt), case_name("axpby beta=0, y NaN", dt, {n}));
    }
}

TEST(Elementwise, AddIntoIsACastFollowedByAnAdd) {
  // add_into (a gradient added into a .grad of another dtype) has the bits of x.to(out's dtype) and an add.
  const std::pair<DType, DType> pairs[] = {{DType::bf16, DType::f32}, {DType::f32, DType::f32}, {DType::f32, DType::bf16},
                                           {DType::f64, DType::f32}, {DType::f32, DType::f64}, {DType::bf16, DType::bf16}};
  for (const auto& [xd, od] : pairs) {
    Tensor x = randn({37}, 21).to(xd), out = randn({37}, 22, DType::f64, 3.0).to(od);
    Tensor want = Tensor::empty({37}, od);
    kernels::binary_fwd(BinaryOp::Add, out, x.to(od), want);
    kernels::add_into(x, out);
    const Tensor a = out, b = want;
    EXPECT_EQ(0, std::memcmp(a.data_ptr(), b.data_ptr(), size_t(a.nbytes()))) << dtype_name(xd) << " into "
                                                                               << dtype_name(od);
  }
  EXPECT_THROW(kernels::add_into(randn({3}, 1), randn({4}, 2)), Error);
}

TEST(CudaElementwise, AddIntoIsACastFollowedByAnAdd) {
  NATSL_REQUIRE_GPU();
  const std::pair<DType, DType> pairs[] = {{DType::bf16, DType::f32}, {DType::f32, DType::f32}, {DType::f32, DType::bf16},
                                           {DType::bf16, DType::bf16}};
  for (const auto& [xd, od] : pairs)
    for (int64_t n : {int64_t(1), int64_t(1001), int64_t(1000003)})
      for (bool aligned : {true, false}) {
        const std::string what = std::string(dtype_name(xd)) + " into " + std::string(dtype_name(od)) + " n " +
                                 std::to_string(n) + (aligned ? "" : " misaligned");
        Tensor xq = q(randn({n}, 31), xd), oq = q(randn({n}, 32, DType::f64, 3.0), od);
        Tensor x = aligned ? to_gpu(xq) : misaligned_gpu(xq), out = aligned ? to_gpu(oq) : misaligned_gpu(oq);
        Tensor want = Tensor::empty({n}, od, gpu());
        kernels::binary_fwd(BinaryOp::Add, out, x.to(od), want);
        kernels::add_into(x, out);
        expect_same_bits(out, want, what);
        // Against the CPU too: the same roundings.
        Tensor ref = oq.clone();
        kernels::add_into(xq, ref);
        expect_same_bits(out, ref, what + " vs the CPU");
      }
}

TEST(CudaElementwise, F64IsRefusedWithAClearError) {
  NATSL_REQUIRE_GPU();
  Tensor x = Tensor::zeros({4}, DType::f64, gpu()), y = Tensor::empty({4}, DType::f64, gpu());
  try {
    kernels::unary_fwd(UnaryOp::Exp, x, y);
    ADD_FAILURE() << "f64 on the GPU should throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("f64 is not supported on the GPU"), std::string::npos) << e.what();
  }
}
