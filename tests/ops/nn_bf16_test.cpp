// The nn kernels on bf16 data (what the CUDA kernels are compared against): same results as the f64
// reference on the same bf16-rounded inputs, up to the final rounding to bf16 (relative 2^-8).
#include "kernels/nn.h"
#include "tests/ops/ops_test_util.h"

using namespace natsl;
using namespace natsl::testing;

namespace {
constexpr double kBf16Rel = 8e-3;  // relative RMS: a few bf16 half-ulps

// x rounded through bf16, and that rounded value in f64 (the oracle's input).
struct Pair {
  Tensor lo, hi;
};
Pair bf16_pair(const Shape& s, uint64_t seed, double std = 1.0) {
  Tensor lo = randn(s, seed, DType::f64, std).to(DType::bf16);
  return {lo, lo.to(DType::f64)};
}
}  // namespace

TEST(NnKernelsBf16, MatchF64OnRoundedInputs) {
  Pair x = bf16_pair({3, 4, 33}, 1), w = bf16_pair({33}, 2);
  {
    Tensor y = poisoned({3, 4, 33}, DType::bf16), r = poisoned({3, 4}, DType::f32);
    Tensor y64 = poisoned({3, 4, 33}), r64 = poisoned({3, 4});
    kernels::rmsnorm_fwd(x.lo, w.lo, 1e-6, y, r);
    kernels::rmsnorm_fwd(x.hi, w.hi, 1e-6, y64, r64);
    EXPECT_CLOSE(y.to(DType::f64), y64, kBf16Rel, 0.05);
    EXPECT_CLOSE(r.to(DType::f64), r64, 1e-6, 1e-5);
  }
  {
    Tensor y = poisoned({3, 4, 33}, DType::bf16), y64 = poisoned({3, 4, 33});
    kernels::softmax_fwd(x.lo, y);
    kernels::softmax_fwd(x.hi, y64);
    EXPECT_CLOSE(y.to(DType::f64), y64, kBf16Rel, 0.01);
  }
  {
    Pair u = bf16_pair({3, 4, 33}, 3);
    Tensor y = poisoned({3, 4, 33}, DType::bf16), y64 = poisoned({3, 4, 33});
    kernels::swiglu_fwd(x.lo, u.lo, y);
    kernels::swiglu_fwd(x.hi, u.hi, y64);
    EXPECT_CLOSE(y.to(DType::f64), y64, kBf16Rel, 0.05);
  }
  {
    Pair cw = bf16_pair({33, 4}, 4, 0.5);
    Tensor y = poisoned({3, 4, 33}, DType::bf16), y64 = poisoned({3, 4, 33});
    kernels::short_conv_fwd(x.lo, cw.lo, true, y);
    kernels::short_conv_fwd(x.hi, cw.hi, true, y64);
    EXPECT_CLOSE(y.to(DType::f64), y64, kBf16Rel, 0.05);
  }
}

TEST(NnKernelsBf16, CrossEntropyStatisticsAreF32) {
  Pair logits = bf16_pair({6, 50}, 5, 3.0);
  Tensor targets = Tensor::from_vector(std::vector<int64_t>{0, 49, -100, 7, 7, 20}, {6}, DType::i64);
  Tensor l = poisoned({6}, DType::f32), s = poisoned({6}, DType::f32), v = poisoned({6}, DType::f32);
  Tensor l64 = poisoned({6}), s64 = poisoned({6}), v64 = poisoned({6});
  kernels::cross_entropy_fwd(logits.lo, targets, -100, l, s, v);
  kernels::cross_entropy_fwd(logits.hi, targets, -100, l64, s64, v64);
  EXPECT_CLOSE(l.to(DType::f64), l64, 1e-6, 1e-5);
  EXPECT_CLOSE(s.to(DType::f64), s64, 1e-6, 1e-5);
  EXPECT_CLOSE(v.to(DType::f64), v64, 0, 0);
  Tensor d = poisoned({6, 50}, DType::bf16), d64 = poisoned({6, 50});
  kernels::cross_entropy_bwd(logits.lo, targets, s, Tensor::full({1}, 0.2, DType::f32), -100, d);
  kernels::cross_entropy_bwd(logits.hi, targets, s64, Tensor::full({1}, 0.2, DType::f64), -100, d64);
  EXPECT_CLOSE(d.to(DType::f64), d64, kBf16Rel, 0.01);
}
