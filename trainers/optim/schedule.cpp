#include "trainers/optim/schedule.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace natsl {

namespace {
constexpr double kPi = 3.14159265358979323846;

double clamp01(double x) { return std::min(1.0, std::max(0.0, x)); }

double decay_curve(const std::string& shape, double q, double r) {
  if (shape == "linear") return r + (1.0 - r) * (1.0 - q);
  if (shape == "sqrt") return r + (1.0 - r) * (1.0 - std::sqrt(q));
  if (shape == "cosine") return r + (1.0 - r) * 0.5 * (1.0 + std::cos(kPi * q));
  throw InputError("unknown decay shape '" + shape + "' (expected linear, sqrt or cosine)");
}
}  // namespace

double LrSchedule::multiplier(int64_t s) const {
  const int64_t W = warmup_steps, N = total_steps;
  const double r = min_lr_ratio;
  if (s < W) return double(s + 1) / double(W + 1);
  if (kind == "constant") return 1.0;
  if (kind == "cosine" || kind == "linear") {
    double p = N > W ? clamp01(double(s + 1 - W) / double(N - W)) : 1.0;
    return decay_curve(kind, p, r);
  }
  if (kind == "wsd") {
    int64_t D = int64_t(std::llround(decay_fraction * double(N - W)));
    int64_t decay_start = N - D;  // first step of the decay phase
    if (D <= 0 || s < decay_start) return 1.0;
    return decay_curve(decay_shape, clamp01(double(s + 1 - decay_start) / double(D)), r);
  }
  throw InputError("unknown LR schedule '" + kind + "' (expected cosine, linear, wsd or constant)");
}

}  // namespace natsl
