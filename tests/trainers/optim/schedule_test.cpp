// LR schedules at their boundary steps, against the formulas written out independently here.
#include <gtest/gtest.h>

#include <cmath>

#include "trainers/optim/schedule.h"

namespace natsl {
namespace {

constexpr double kPi = 3.14159265358979323846;

LrSchedule make(const std::string& kind, int64_t W, int64_t N, double r) {
  LrSchedule s;
  s.kind = kind;
  s.warmup_steps = W;
  s.total_steps = N;
  s.min_lr_ratio = r;
  return s;
}

TEST(Schedule, WarmupIsLinearFromOneOverWPlusOne) {
  for (const char* kind : {"cosine", "linear", "wsd", "constant"}) {
    LrSchedule s = make(kind, 4, 20, 0.1);
    for (int64_t i = 0; i < 4; ++i) EXPECT_DOUBLE_EQ(s.multiplier(i), double(i + 1) / 5.0) << kind << " " << i;
  }
}

TEST(Schedule, CosineMatchesTorchtitan) {
  // The NAtS-L recipe: W = 1024, N = 20480, floor 0.1.
  LrSchedule s = make("cosine", 1024, 20480, 0.1);
  EXPECT_DOUBLE_EQ(s.multiplier(0), 1.0 / 1025.0);
  EXPECT_DOUBLE_EQ(s.multiplier(1023), 1024.0 / 1025.0);
  // First decay step: prog = 1 / 19456.
  double p = 1.0 / 19456.0;
  EXPECT_DOUBLE_EQ(s.multiplier(1024), 0.1 + 0.9 * 0.5 * (1 + std::cos(kPi * p)));
  // Half way through the decay the multiplier is the mid point.
  EXPECT_NEAR(s.multiplier(1024 + 19456 / 2 - 1), 0.55, 1e-12);
  EXPECT_DOUBLE_EQ(s.multiplier(20479), 0.1);  // the last step reaches the floor
  EXPECT_DOUBLE_EQ(s.multiplier(30000), 0.1);  // and stays there
}

TEST(Schedule, Linear) {
  LrSchedule s = make("linear", 2, 12, 0.0);
  EXPECT_DOUBLE_EQ(s.multiplier(2), 1.0 - 1.0 / 10.0);
  EXPECT_DOUBLE_EQ(s.multiplier(6), 1.0 - 5.0 / 10.0);
  EXPECT_DOUBLE_EQ(s.multiplier(11), 0.0);
}

TEST(Schedule, ConstantAfterWarmup) {
  LrSchedule s = make("constant", 3, 10, 0.1);
  EXPECT_DOUBLE_EQ(s.multiplier(3), 1.0);
  EXPECT_DOUBLE_EQ(s.multiplier(9), 1.0);
}

TEST(Schedule, NoWarmup) {
  LrSchedule s = make("cosine", 0, 10, 0.0);
  EXPECT_DOUBLE_EQ(s.multiplier(0), 0.5 * (1 + std::cos(kPi * 0.1)));
  EXPECT_DOUBLE_EQ(s.multiplier(9), 0.0);
}

TEST(Schedule, WarmupStableDecay) {
  // W = 10, N = 110, 20% decay -> D = 20 decay steps: 90..109.
  LrSchedule s = make("wsd", 10, 110, 0.1);
  s.decay_fraction = 0.2;
  EXPECT_DOUBLE_EQ(s.multiplier(10), 1.0);
  EXPECT_DOUBLE_EQ(s.multiplier(89), 1.0);
  EXPECT_DOUBLE_EQ(s.multiplier(90), 0.1 + 0.9 * (1 - 1.0 / 20.0));
  EXPECT_DOUBLE_EQ(s.multiplier(99), 0.1 + 0.9 * (1 - 10.0 / 20.0));
  EXPECT_DOUBLE_EQ(s.multiplier(109), 0.1);
  s.decay_shape = "sqrt";
  EXPECT_DOUBLE_EQ(s.multiplier(94), 0.1 + 0.9 * (1 - std::sqrt(5.0 / 20.0)));
  s.decay_shape = "cosine";
  EXPECT_DOUBLE_EQ(s.multiplier(99), 0.1 + 0.9 * 0.5 * (1 + std::cos(kPi * 0.5)));
  EXPECT_DOUBLE_EQ(s.multiplier(109), 0.1);
  s.decay_fraction = 0.0;  // no decay phase: stable to the end
  EXPECT_DOUBLE_EQ(s.multiplier(109), 1.0);
}

}  // namespace
}  // namespace natsl
