#include "kernels/cpu/index.h"

namespace natsl::kernels::cpu {

std::vector<int64_t> load_ids(const Tensor& ids, int64_t limit, const char* what, std::optional<int64_t> allowed) {
  std::vector<int64_t> out(size_t(ids.numel()));
  auto read = [&](const auto* p) {
    for (size_t i = 0; i < out.size(); ++i) out[i] = int64_t(p[i]);
  };
  if (ids.dtype() == DType::i32) read(ids.data<int32_t>());
  else if (ids.dtype() == DType::i64) read(ids.data<int64_t>());
  else NATSL_FAIL(what, ": ids must be i32 or i64, got ", dtype_name(ids.dtype()));
  for (size_t i = 0; i < out.size(); ++i) {
    if (allowed && out[i] == *allowed) continue;
    if (out[i] < 0 || out[i] >= limit)
      throw InputError(detail::str(what, ": id ", out[i], " at position ", i, " is outside [0, ", limit,
                                   "); the data's token ids must be below the model's vocab_size"));
  }
  return out;
}

}  // namespace natsl::kernels::cpu
