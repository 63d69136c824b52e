#pragma once
// A training batch as the data pipeline hands it to the trainer: host tensors (i32) that the trainer moves
// to the device.
#include "core/tensor.h"

namespace natsl {

constexpr int64_t kIgnoreIndex = -100;

struct Batch {
  Tensor inputs;   // [B, T] i32 token ids
  Tensor targets;  // [B, T] i32 next-token ids; kIgnoreIndex where the loss must not count (answer masks)
};

}  // namespace natsl
