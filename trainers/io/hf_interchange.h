#pragma once
// Hugging Face interchange: a natsl checkpoint as a `config.json` + `model.safetensors` folder in the layout
// of the reference's and FLA's model classes, and back (docs/training.md, "Hugging Face interchange").
//
//   natsl layers present  -> model_type "neural_attention_search_linear_attn_gdn" (the NAtS-L reference's
//                            NeuralAttentionSearchLineraAttnGDNConfig): gdn_layers lists the GDN layers,
//                            attn {layers, num_heads, ...} the softmax-attention layers, the rest are NAtS-L
//   gdn (+ attn) layers   -> model_type "gated_deltanet" (FLA's GatedDeltaNetConfig, attn for hybrids)
//   attn layers only      -> model_type "transformer" (FLA's TransformerConfig)
// Parameter names are natsl's, which are those classes' names (model.embeddings.weight,
// model.layers.N.attn.q_proj.weight, ..., lm_head.weight), so tensors are copied as they are, in their dtype,
// with one change of shape: a short convolution's weight, [C, K] in natsl, is [C, 1, K] in those classes (a
// depthwise nn.Conv1d), the same bytes.
// config.json also carries a "natsl" object with natsl's whole model section, so that settings the HF
// classes have no field for (routing controls, Gumbel temperature) survive a round trip; an import of a
// folder written elsewhere reads the HF fields alone.
#include <string>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "layers/model/model_config.h"

namespace natsl {

// The shape tensor `name` has in an HF folder, from natsl's shape: [C, 1, K] for a short convolution's
// [C, K] weight (`*_conv1d.weight`), else the same.
Shape hf_tensor_shape(const std::string& name, const Shape& natsl_shape);
// Whether a stored tensor of shape `stored` can fill natsl's parameter `name` of shape `natsl_shape`: the
// same shape, or its HF shape (what import-hf and train.init_from accept).
bool fits_parameter(const std::string& name, const Shape& stored, const Shape& natsl_shape);

// The HF config.json of a model (InputError when the model has no HF equivalent).
nlohmann::json hf_config(const ModelConfig& model);
// The model a config.json describes; `what` names the file in errors (unknown model_type, missing keys,
// settings natsl does not implement).
ModelConfig model_from_hf_config(const nlohmann::json& config, const std::string& what);

// CKPT_DIR (a natsl checkpoint) -> OUT_DIR/config.json + OUT_DIR/model.safetensors.
void export_hf(const std::string& checkpoint_dir, const std::string& out_dir);
// HF_DIR (config.json + model.safetensors) -> OUT_DIR/model.yaml (natsl's model section, for `model=`) and
// OUT_DIR/model.safetensors (the weights, for train.init_from). Every tensor the model needs must be there
// with its shape; extra tensors are an error.
void import_hf(const std::string& hf_dir, const std::string& out_dir);

}  // namespace natsl
