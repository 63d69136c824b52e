#include "layers/ssm_init.h"

#include <algorithm>
#include <cmath>

namespace natsl {

CustomInit a_log_init(double lo, double hi) {
  NATSL_CHECK(lo >= 0 && hi > lo, "a_log_init: need 0 <= lo < hi, got ", lo, ", ", hi);
  return [lo, hi](Tensor& t, Generator& g) {
    uniform_(t, g, lo, hi);
    float* p = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = float(std::log(double(p[i])));
  };
}

CustomInit dt_bias_init(double dt_min, double dt_max, double dt_floor) {
  NATSL_CHECK(dt_min > 0 && dt_max > dt_min && dt_floor > 0, "dt_bias_init: need 0 < dt_min < dt_max and dt_floor > 0");
  return [dt_min, dt_max, dt_floor](Tensor& t, Generator& g) {
    uniform_(t, g, std::log(dt_min), std::log(dt_max));
    float* p = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) {
      double dt = std::max(std::exp(double(p[i])), dt_floor);
      p[i] = float(dt + std::log(-std::expm1(-dt)));
    }
  };
}

}  // namespace natsl
