#include "layers/model/model_config.h"

#include <algorithm>

#include "core/config_key_error.h"
#include "core/error.h"
#include "layers/mixer.h"

namespace natsl {

std::vector<std::string> ModelConfig::mixer_kinds() const {
  // validate_model_config refused lists that disagree with num_layers, naming the key.
  if (!layers.empty()) {
    NATSL_CHECK(int64_t(layers.size()) == num_layers, "model.layers has ", layers.size(), " entries but num_layers is ",
                num_layers);
    return layers;
  }
  std::vector<std::string> kinds(size_t(num_layers), default_mixer);
  for (int64_t i : attn_layers) {
    NATSL_CHECK(i >= 0 && i < num_layers, "model.attn_layers: index ", i, " outside [0, num_layers)");
    kinds[size_t(i)] = "attn";
  }
  for (int64_t i : natsl_layers) {
    NATSL_CHECK(i >= 0 && i < num_layers, "model.natsl_layers: index ", i, " outside [0, num_layers)");
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

void validate_model_config(const ModelConfig& c) {
  auto fail = [](const std::string& key, const std::string& message) { throw ConfigKeyError(key, message); };
  auto positive = [&](const std::string& key, int64_t v) {
    if (v <= 0) fail(key, key + " must be positive, got " + std::to_string(v));
  };
  positive("model.vocab_size", c.vocab_size);
  positive("model.hidden_size", c.hidden_size);
  positive("model.num_layers", c.num_layers);

  // The layer arrangement: an explicit list, or the default mixer with index lists.
  if (!c.layers.empty() && int64_t(c.layers.size()) != c.num_layers)
    fail("model.layers", "model.layers has " + std::to_string(c.layers.size()) + " entries but model.num_layers is " +
                             std::to_string(c.num_layers));
  for (const char* key : {"model.attn_layers", "model.natsl_layers"}) {
    const auto& idx = std::string(key) == "model.attn_layers" ? c.attn_layers : c.natsl_layers;
    for (int64_t i : idx)
      if (i < 0 || i >= c.num_layers)
        fail(key, std::string(key) + " holds layer " + std::to_string(i) + " but model.num_layers is " +
                      std::to_string(c.num_layers) + " (indices count from 0)");
  }

  // Norms, initialisation, MLP.
  if (!(c.norm_eps > 0)) fail("model.norm_eps", "model.norm_eps must be positive, got " + std::to_string(c.norm_eps));
  if (!(c.initializer_range > 0))
    fail("model.initializer_range", "model.initializer_range must be positive, got " + std::to_string(c.initializer_range));
  if (c.intermediate_size < 0)
    fail("model.intermediate_size", "model.intermediate_size must be >= 0 (0 = from hidden_ratio)");
  if (c.mlp_intermediate() <= 0)
    fail("model.hidden_ratio", "model.mlp_intermediate (from model.hidden_ratio) must be positive, got " +
                                   std::to_string(c.mlp_intermediate()) + "; raise model.hidden_ratio or set "
                                   "model.intermediate_size");

  // Each mixer kind in use checks the options it reads (MixerSpec::check), once per kind.
  const std::string kinds_key = c.layers.empty() ? "model.default_mixer" : "model.layers";
  std::vector<std::string> kinds;  // in order of first use, so the first layer's kind is checked first
  for (const std::string& kind : c.mixer_kinds())
    if (std::find(kinds.begin(), kinds.end(), kind) == kinds.end()) kinds.push_back(kind);
  const auto& registry = mixer_registry();
  for (const std::string& kind : kinds) {
    auto it = registry.find(kind);
    if (it == registry.end()) {
      std::string known;
      for (const auto& [k, spec] : registry) known += (known.empty() ? "" : ", ") + k;
      throw ConfigKeyError(kinds_key, "unknown mixer kind '" + kind + "' in " + kinds_key + "; known kinds: " + known);
    }
    if (it->second.check) it->second.check(c);
  }
}

}  // namespace natsl
