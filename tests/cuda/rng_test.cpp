// Philox on the GPU against the CPU: uniform_ and raw bits identical bit for bit, normal_ within one f32
// ulp (Box-Muller runs in double on both, but the device's double log/sin/cos may round differently).
#include <cstring>

#include "core/philox.h"
#include "tests/cuda/cuda_test_util.h"

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
