#pragma once
// Learning-rate schedules: the multiplier of train.lr at a 0-based optimizer step s, with W warmup steps,
// N total steps and floor r = min_lr_ratio. The formulas follow torchtitan's (natsl-layer.md §7.2):
//   warmup (s < W):  (s + 1) / (W + 1)
//   cosine:  r + (1 - r) * 0.5 * (1 + cos(pi * p)),   p = (s + 1 - W) / (N - W)
//   linear:  r + (1 - r) * (1 - p)
//   constant: 1
//   wsd (warmup-stable-decay): 1 until the last D = round(decay_fraction * (N - W)) steps, then over those
//     steps, with q = (s + 1 - (N - D)) / D in (0, 1]:
//       linear: r + (1 - r) (1 - q);  sqrt: r + (1 - r) (1 - sqrt(q));  cosine: r + (1 - r) 0.5 (1 + cos(pi q))
// p is clamped to [0, 1], so the last step (s = N - 1) reaches exactly r and steps past N stay there.
#include <cstdint>
#include <string>

namespace natsl {

struct LrSchedule {
  std::string kind = "cosine";  // cosine | linear | wsd | constant
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  double min_lr_ratio = 0.0;
  double decay_fraction = 0.2;        // wsd
  std::string decay_shape = "linear";  // wsd: linear | sqrt | cosine

  double multiplier(int64_t step) const;
};

}  // namespace natsl
