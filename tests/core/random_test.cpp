// Philox random numbers (core/philox.h, core/random.cpp, core/cuda/random.cu): the CPU streams, then the GPU's
// against the CPU's (CudaPhilox, skipped without a GPU).
//
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "core/philox.h"
#include "tests/cuda_test_util.h"
#include "tests/test_util.h"

using namespace natsl;

// Known-answer vectors published with Random123 (kat_vectors, philox4x32_10).
TEST(Philox, KnownAnswerVectors) {
  PhiloxWords z = philox4x32_10_block(0, 0, 0, 0, 0, 0);
  EXPECT_EQ(z.w[0], 0x6627e8d5u);
  EXPECT_EQ(z.w[1], 0xe169c58du);
  EXPECT_EQ(z.w[2], 0xbc57ac4cu);
  EXPECT_EQ(z.w[3], 0x9b00dbd8u);
  PhiloxWords f = philox4x32_10_block(~0u, ~0u, ~0u, ~0u, ~0u, ~0u);
  EXPECT_EQ(f.w[0], 0x408f276du);
  EXPECT_EQ(f.w[1], 0x41c83b0eu);
  EXPECT_EQ(f.w[2], 0xa20bc7c6u);
  EXPECT_EQ(f.w[3], 0x6d5451fdu);
  PhiloxWords p = philox4x32_10_block(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u);
  EXPECT_EQ(p.w[0], 0xd16cfe09u);
  EXPECT_EQ(p.w[1], 0x94fdccebu);
  EXPECT_EQ(p.w[2], 0x5001e420u);
  EXPECT_EQ(p.w[3], 0x24126ea1u);
}

TEST(Philox, DeterministicInSeedAndOffset) {
  Tensor a = Tensor::empty({1000}), b = Tensor::empty({1000}), c = Tensor::empty({1000});
  Generator g1(42), g2(42), g3(43);
  uniform_(a, g1);
  uniform_(b, g2);
  uniform_(c, g3);
  EXPECT_EQ(a.to_vector<float>(), b.to_vector<float>());
  EXPECT_NE(a.to_vector<float>(), c.to_vector<float>());
  // The generator advanced by whole blocks: a second draw differs from the first and starts at 1000.
  EXPECT_EQ(g1.offset, 1000u);
  Tensor a2 = Tensor::empty({1000});
  uniform_(a2, g1);
  EXPECT_NE(a.to_vector<float>(), a2.to_vector<float>());
  // A generator started at the offset reproduces the second draw exactly (resume from a checkpoint).
  Generator g4(42, 1000);
  Tensor a3 = Tensor::empty({1000});
  uniform_(a3, g4);
  EXPECT_EQ(a2.to_vector<float>(), a3.to_vector<float>());
}

TEST(Philox, MomentsOfUniformAndNormal) {
  const int n = 200000;
  Tensor u = Tensor::empty({n}, DType::f64), z = Tensor::empty({n}, DType::f64);
  Generator g(7);
  uniform_(u, g, -1.0, 3.0);
  normal_(z, g, 0.5, 2.0);
  auto uv = u.to_vector<double>(), zv = z.to_vector<double>();
  double um = 0, zm = 0, zv2 = 0, umin = 1e9, umax = -1e9;
  for (int i = 0; i < n; ++i) {
    um += uv[i];
    zm += zv[i];
    umin = std::min(umin, uv[i]);
    umax = std::max(umax, uv[i]);
  }
  um /= n;
  zm /= n;
  for (int i = 0; i < n; ++i) zv2 += (zv[i] - zm) * (zv[i] - zm);
  zv2 /= n;
  EXPECT_NEAR(um, 1.0, 0.02);  // 4/sqrt(12)/sqrt(n) = 0.0026
  EXPECT_GT(umin, -1.0);
  EXPECT_LT(umax, 3.0);
  EXPECT_NEAR(zm, 0.5, 0.02);
  EXPECT_NEAR(std::sqrt(zv2), 2.0, 0.02);
}

TEST(Philox, CpuAndGpuProduceTheSameNumbers) {
  NATSL_REQUIRE_GPU();
  for (DType dt : {DType::f32, DType::bf16}) {
    Tensor hc = Tensor::empty({12345}, dt), hg = Tensor::empty({12345}, dt, Device::cuda(0));
    Generator g1(99, 8), g2(99, 8);
    uniform_(hc, g1, -2.0, 5.0);
    uniform_(hg, g2, -2.0, 5.0);
    EXPECT_EQ(hc.to_vector<float>(), hg.to_vector<float>());
    normal_(hc, g1);
    normal_(hg, g2);
    auto a = hc.to_vector<float>(), b = hg.to_vector<float>();
    int differ = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      // Box-Muller runs in double on both; the float results may differ only by the last bit.
      EXPECT_LE(std::abs(a[i] - b[i]), std::abs(a[i]) * 1.2e-7f + 1e-30f) << i;
      differ += a[i] != b[i];
    }
    EXPECT_LE(differ, 20);
  }
  Tensor bc = Tensor::empty({1001}, DType::i32), bg = Tensor::empty({1001}, DType::i32, Device::cuda(0));
  Generator g1(5), g2(5);
  random_bits_(bc, g1);
  random_bits_(bg, g2);
  EXPECT_EQ(bc.to_vector<int32_t>(), bg.to_vector<int32_t>());
}

// Philox on the GPU against the CPU: uniform_ and raw bits identical bit for bit, normal_ within one f32
// ulp (Box-Muller runs in double on both, but the device's double log/sin/cos may round differently).
using namespace natsl;
using namespace natsl::testing;

namespace {
// Distance in units in the last place between two finite floats of the same sign (0 when equal).
int64_t ulp_distance(float a, float b) {
  int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  if ((ia < 0) != (ib < 0)) return a == b ? 0 : INT64_MAX;
  return std::abs(int64_t(ia) - int64_t(ib));
}
}  // namespace

TEST(CudaPhilox, UniformAndBitsIdenticalNormalWithinOneUlp) {
  NATSL_REQUIRE_GPU();
  // Sizes spanning many blocks, odd counts, and generators that start mid-stream.
  for (int64_t n : {int64_t(1), int64_t(4099), int64_t(3000017)})
    for (uint64_t offset : {uint64_t(0), uint64_t(8), uint64_t(1) << 33}) {
      const std::string what = "n " + std::to_string(n) + " offset " + std::to_string(offset);
      Generator gc(1234, offset), gg(1234, offset);
      Tensor uc = Tensor::empty({n}), ug = Tensor::empty({n}, DType::f32, gpu());
      uniform_(uc, gc, -3.0, 7.0);
      uniform_(ug, gg, -3.0, 7.0);
      expect_same_bits(uc, ug, "uniform_ " + what);

      Tensor bc = Tensor::empty({n}, DType::i32), bg = Tensor::empty({n}, DType::i32, gpu());
      random_bits_(bc, gc);
      random_bits_(bg, gg);
      expect_same_bits(bc, bg, "random_bits_ " + what);

      Tensor nc = Tensor::empty({n}), ng = Tensor::empty({n}, DType::f32, gpu());
      // Standard normal: an affine map a + b z could turn a one-ulp difference in z into many ulps of a
      // result near zero.
      normal_(nc, gc);
      normal_(ng, gg);
      const std::vector<float> a = nc.to_vector<float>(), b = ng.to_vector<float>();
      int64_t worst = 0;
      size_t worst_i = 0;
      for (size_t i = 0; i < a.size(); ++i) {
        const int64_t d = ulp_distance(a[i], b[i]);
        if (d > worst) {
          worst = d;
          worst_i = i;
        }
      }
      EXPECT_LE(worst, 1) << "normal_ " << what << ": element " << worst_i << " cpu " << a[worst_i] << " gpu "
                          << b[worst_i];
      EXPECT_EQ(gc.offset, gg.offset) << what;
    }
}
