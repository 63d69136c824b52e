#pragma once
// Reading integer index tensors (token ids, targets) in the CPU references.
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace natsl::kernels::cpu {

// The ids of a contiguous i32/i64 tensor as int64. Every id must lie in [0, limit) or equal `allowed`
// (the ignore index); otherwise throws InputError naming the id, its position and `what`.
std::vector<int64_t> load_ids(const Tensor& ids, int64_t limit, const char* what,
                              std::optional<int64_t> allowed = std::nullopt);

}  // namespace natsl::kernels::cpu
