#include "layers/model/model_config.h"

#include <algorithm>

#include "core/error.h"

namespace natsl {

std::vector<std::string> ModelConfig::mixer_kinds() const {
  if (!layers.empty()) {
    NATSL_CHECK(int64_t(layers.size()) == num_layers, "model.layers has ", layers.size(), " entries but num_layers is ",
                num_layers);
    return layers;
  }
  std::vector<std::string> kinds(size_t(num_layers), default_mixer);
  for (int64_t i : attn_layers) {
    if (i < 0 || i >= num_layers) throw InputError("model.attn_layers: index " + std::to_string(i) + " outside [0, num_layers)");
    kinds[size_t(i)] = "attn";
  }
  for (int64_t i : natsl_layers) {
    if (i < 0 || i >= num_layers) throw InputError("model.natsl_layers: index " + std::to_string(i) + " outside [0, num_layers)");
    kinds[size_t(i)] = "natsl";
  }
  return kinds;
}

int64_t ModelConfig::mlp_intermediate() const {
  if (intermediate_size > 0) return intermediate_size;
  // FLA GatedMLP: int(d * hidden_ratio * 2 / 3) rounded up to a multiple of 256.
  int64_t raw = int64_t(double(hidden_size) * hidden_ratio * 2.0 / 3.0);
  return 256 * ((raw + 255) / 256);
}

}  // namespace natsl
