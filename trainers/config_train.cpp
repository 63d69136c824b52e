// The train: section's rules that span keys or need parsing; single-key ranges are in the schema
// (trainers/config_schema.cpp).
#include <string>

#include "core/config_key_error.h"
#include "core/device.h"
#include "trainers/config.h"

namespace natsl {

void validate_train_config(const TrainConfig& t) {
  auto fail = [](const char* key, const std::string& message) { throw ConfigKeyError(key, message); };
  if (t.warmup_steps > t.steps)
    fail("train.warmup_steps", "train.warmup_steps (" + std::to_string(t.warmup_steps) + ") exceeds train.steps (" +
                                   std::to_string(t.steps) + ")");
  if (t.stop_at_step > t.steps)
    fail("train.stop_at_step", "train.stop_at_step (" + std::to_string(t.stop_at_step) + ") exceeds train.steps (" +
                                   std::to_string(t.steps) + ")");
  if (!t.profile_steps.empty() &&
      (t.profile_steps.size() != 2 || t.profile_steps[1] <= t.profile_steps[0] || t.profile_steps[1] > t.steps + 1))
    fail("train.profile_steps", "train.profile_steps must be [] or [first, end) with first < end <= train.steps + 1 "
                                "(e.g. [10, 13] times steps 10, 11 and 12)");
  if (t.device != "auto") {
    try {
      Device::parse(t.device);
    } catch (const InputError&) {
      fail("train.device", "train.device '" + t.device + "' is not one of auto, cpu, cuda, cuda:N");
    }
  }
}

}  // namespace natsl
