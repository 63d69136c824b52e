#include "layers/mixer.h"

#include "autograd/ops.h"
#include "layers/gated_deltanet.h"
#include "layers/natsl_attention.h"
#include "layers/softmax_attention.h"

namespace natsl {

Tensor Mixer::forward_residual(const Tensor& x, const Tensor& residual) { return add(residual, forward(x)); }

const std::map<std::string, MixerSpec>& mixer_registry() {
  static const std::map<std::string, MixerSpec> registry = {
      {"attn",
       MixerSpec{[](const ModelConfig& c, int64_t i) -> std::shared_ptr<Mixer> {
                   return std::make_shared<SoftmaxAttention>(c, i);
                 },
                 &SoftmaxAttention::num_params, &SoftmaxAttention::extra_flops_per_token,
                 [](const ModelConfig& c) { attention_dims(c); }}},
      {"gdn",
       MixerSpec{[](const ModelConfig& c, int64_t i) -> std::shared_ptr<Mixer> {
                   return std::make_shared<GatedDeltaNet>(c, i);
                 },
                 &GatedDeltaNet::num_params, &GatedDeltaNet::extra_flops_per_token,
                 [](const ModelConfig& c) { gdn_dims(c); }}},
      {"natsl",
       MixerSpec{[](const ModelConfig& c, int64_t i) -> std::shared_ptr<Mixer> {
                   return std::make_shared<NatslAttention>(c, i);
                 },
                 &NatslAttention::num_params, &NatslAttention::extra_flops_per_token, &check_natsl_config}},
  };
  return registry;
}

const MixerSpec& mixer_spec(const std::string& kind) {
  const auto& reg = mixer_registry();
  auto it = reg.find(kind);
  if (it == reg.end()) {
    std::string known;
    for (const auto& [k, spec] : reg) known += (known.empty() ? "" : ", ") + k;
    throw InputError("unknown mixer kind '" + kind + "' in the model config; known kinds: " + known);
  }
  return it->second;
}

std::shared_ptr<Mixer> make_mixer(const std::string& kind, const ModelConfig& config, int64_t layer_idx) {
  return mixer_spec(kind).make(config, layer_idx);
}

}  // namespace natsl
