#include "trainers/io/hf_interchange.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>

#include "core/error.h"
#include "core/json_read.h"
#include "layers/model/causal_lm.h"
#include "trainers/io/checkpoint.h"
#include "trainers/config.h"
#include "trainers/io/safetensors.h"
#include "data/sync_file.h"

namespace natsl {
namespace fs = std::filesystem;

namespace {

constexpr const char* kNatslType = "neural_attention_search_linear_attn_gdn";
constexpr const char* kGdnType = "gated_deltanet";
constexpr const char* kTransformerType = "transformer";

std::vector<int64_t> layers_of(const std::vector<std::string>& kinds, const std::string& kind) {
  std::vector<int64_t> out;
  for (size_t i = 0; i < kinds.size(); ++i)
    if (kinds[i] == kind) out.push_back(int64_t(i));
  return out;
}

nlohmann::json natsl_model_json(const ModelConfig& m) {
  RunConfig rc;
  rc.model = m;
  return config_to_json(rc)["model"];
}

// The fields every family shares (FLA's names).
void common_fields(const ModelConfig& m, nlohmann::json& j) {
  j["vocab_size"] = m.vocab_size;
  j["hidden_size"] = m.hidden_size;
  j["num_hidden_layers"] = m.num_layers;
  j["hidden_ratio"] = m.hidden_ratio;
  j["intermediate_size"] = m.mlp_intermediate();
  j["hidden_act"] = "swish";
  j["norm_eps"] = m.norm_eps;
  j["initializer_range"] = m.initializer_range;
  j["tie_word_embeddings"] = m.tie_word_embeddings;
  j["fuse_cross_entropy"] = false;
  j["max_position_embeddings"] = 2048;
}

void gdn_fields(const ModelConfig& m, nlohmann::json& j) {
  j["attn_mode"] = "chunk";
  j["num_heads"] = m.num_heads;
  j["head_dim"] = m.head_dim;
  j["expand_v"] = m.expand_v;
  j["use_gate"] = m.use_gate;
  j["use_short_conv"] = m.use_short_conv;
  j["conv_size"] = m.conv_size;
  j["allow_neg_eigval"] = m.allow_neg_eigval;
}

// The softmax-attention layers of a hybrid, as FLA's `attn` dict.
nlohmann::json attn_dict(const ModelConfig& m, const std::vector<int64_t>& layers) {
  if (layers.empty()) return nullptr;
  return {{"layers", layers},        {"num_heads", m.num_attn_heads}, {"num_kv_heads", m.num_attn_heads},
          {"qkv_bias", false},       {"qk_norm", m.attn_qk_norm},    {"window_size", nullptr},
          {"rope_theta", m.attn_rope ? nlohmann::json(m.rope_theta) : nlohmann::json(nullptr)}};
}

template <class T>
T need(const nlohmann::json& c, const char* key, const std::string& what) {
  if (!c.contains(key) || c[key].is_null())
    throw InputError(what + " has no \"" + std::string(key) + "\", which natsl needs to build the model");
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    return json_integer<T>(c[key], what + ": \"" + key + "\"");
  } else {
    try {
      return c[key].get<T>();
    } catch (const nlohmann::json::exception&) {
      throw InputError(what + ": \"" + std::string(key) + "\" is " + c[key].dump() + ", of the wrong type");
    }
  }
}

template <class T>
T get_or(const nlohmann::json& c, const char* key, T fallback, const std::string& what) {
  return c.contains(key) && !c[key].is_null() ? need<T>(c, key, what) : fallback;
}

void read_common(const nlohmann::json& c, ModelConfig& m, const std::string& what) {
  m.vocab_size = need<int64_t>(c, "vocab_size", what);
  m.hidden_size = need<int64_t>(c, "hidden_size", what);
  m.num_layers = need<int64_t>(c, "num_hidden_layers", what);
  m.hidden_ratio = get_or<double>(c, "hidden_ratio", 4.0, what);
  m.intermediate_size = get_or<int64_t>(c, "intermediate_size", 0, what);
  m.norm_eps = get_or<double>(c, "norm_eps", 1e-6, what);
  m.initializer_range = get_or<double>(c, "initializer_range", 0.02, what);
  m.tie_word_embeddings = get_or<bool>(c, "tie_word_embeddings", false, what);
  const std::string act = get_or<std::string>(c, "hidden_act", "swish", what);
  if (act != "swish" && act != "silu")
    throw InputError(what + ": hidden_act \"" + act + "\" is not implemented (natsl's MLP is SwiGLU)");
  if (m.num_layers < 1 || m.num_layers > 4096) throw InputError(what + ": num_hidden_layers out of range");
}

void read_gdn(const nlohmann::json& c, ModelConfig& m, const std::string& what) {
  m.num_heads = need<int64_t>(c, "num_heads", what);
  m.head_dim = need<int64_t>(c, "head_dim", what);
  m.expand_v = get_or<double>(c, "expand_v", 2.0, what);
  m.use_gate = get_or<bool>(c, "use_gate", true, what);
  m.use_short_conv = get_or<bool>(c, "use_short_conv", true, what);
  m.conv_size = get_or<int64_t>(c, "conv_size", 4, what);
  m.allow_neg_eigval = get_or<bool>(c, "allow_neg_eigval", false, what);
  if (c.contains("num_v_heads") && !c["num_v_heads"].is_null() && c["num_v_heads"] != c["num_heads"])
    throw InputError(what + ": num_v_heads different from num_heads (grouped values) is not implemented");
}

// FLA's attn dict -> the attn layer indices and their settings.
std::vector<int64_t> read_attn(const nlohmann::json& c, ModelConfig& m, const std::string& what) {
  if (!c.contains("attn") || c["attn"].is_null()) return {};
  const nlohmann::json& a = c["attn"];
  if (!a.is_object()) throw InputError(what + ": \"attn\" must be an object");
  std::vector<int64_t> layers;
  if (!a.contains("layers") || !a["layers"].is_array()) throw InputError(what + ": attn has no \"layers\" list");
  for (const auto& l : a["layers"]) layers.push_back(json_integer<int64_t>(l, what + ": attn.layers"));
  m.num_attn_heads = need<int64_t>(a, "num_heads", what + " (attn)");
  if (a.contains("num_kv_heads") && !a["num_kv_heads"].is_null() && a["num_kv_heads"] != a["num_heads"])
    throw InputError(what + ": attn.num_kv_heads different from num_heads (grouped-query attention) is not implemented");
  if (a.contains("window_size") && !a["window_size"].is_null())
    throw InputError(what + ": attn.window_size (sliding windows) is not implemented");
  if (get_or<bool>(a, "qkv_bias", false, what)) throw InputError(what + ": attn.qkv_bias is not implemented");
  m.attn_qk_norm = get_or<bool>(a, "qk_norm", false, what);
  m.attn_rope = a.contains("rope_theta") && !a["rope_theta"].is_null();
  if (m.attn_rope) m.rope_theta = need<double>(a, "rope_theta", what);
  return layers;
}

std::vector<std::string> kinds_with(int64_t n, const std::string& base, const std::vector<int64_t>& attn,
                                    const std::vector<int64_t>& gdn, const std::string& what) {
  std::vector<std::string> kinds(size_t(n), base);
  for (int64_t i : attn) {
    if (i < 0 || i >= n) throw InputError(what + ": attn.layers holds " + std::to_string(i) + ", not a layer index");
    kinds[size_t(i)] = "attn";
  }
  for (int64_t i : gdn) {
    if (i < 0 || i >= n) throw InputError(what + ": gdn_layers holds " + std::to_string(i) + ", not a layer index");
    kinds[size_t(i)] = "gdn";
  }
  return kinds;
}

nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw InputError("cannot read '" + path + "' (does it exist?)");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw InputError("'" + path + "' is not valid JSON (" + e.what() + ")");
  }
}

// Copies tensors `names` of `r` (dtype and bytes) to `path`, replaced atomically, each viewed as
// shape_of(name, its shape).
void copy_tensors(SafeTensorsReader& r, const std::vector<std::string>& names, const std::string& path,
                  const std::function<Shape(const std::string&, const Shape&)>& shape_of) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& n : names) {
    const Tensor t = r.read(n);
    tensors.emplace_back(n, t.view(shape_of(n, t.shape())));
  }
  replace_file_atomically_with(path, [&](const std::string& tmp) {
    write_safetensors(tmp, tensors, {{"format", "pt"}, {"producer", "natsl"}});
  });
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

}  // namespace

Shape hf_tensor_shape(const std::string& name, const Shape& natsl_shape) {
  if (ends_with(name, "_conv1d.weight") && natsl_shape.size() == 2) return {natsl_shape[0], 1, natsl_shape[1]};
  return natsl_shape;
}

bool fits_parameter(const std::string& name, const Shape& stored, const Shape& natsl_shape) {
  return stored == natsl_shape || stored == hf_tensor_shape(name, natsl_shape);
}

nlohmann::json hf_config(const ModelConfig& m) {
  const std::vector<std::string> kinds = m.mixer_kinds();
  const auto natsl = layers_of(kinds, "natsl"), gdn = layers_of(kinds, "gdn"), attn = layers_of(kinds, "attn");
  nlohmann::json j;
  if (!natsl.empty()) {
    j["model_type"] = kNatslType;
    j["architectures"] = {"NeuralAttentionSearchLinearAttnGDNForCausalLM"};
    gdn_fields(m, j);
    j["gdn_layers"] = gdn;
    j["attn"] = attn_dict(m, attn);
    j["num_attn_heads"] = m.num_attn_heads;
    j["n_ops"] = 2;
    j["num_nats_head"] = m.num_nats_heads == 0 ? nlohmann::json(nullptr) : nlohmann::json(m.num_nats_heads);
    j["nats_block_size"] = m.nats_block_size;
    j["nats_block_agg_type"] = "mean";
    j["nats_sample_strategy"] = m.nats_sample;
    j["ops_for_incomplete_chunks"] = "all";
    j["outputs_are_wighted"] = true;  // sic: the reference's spelling
    j["attn_qk_norm"] = m.attn_qk_norm;
    j["attn_with_short_conv"] = true;
    j["attn_apply_pos_encoding"] = false;
    j["decay_for_non_gdn_blocks"] = true;
    j["incomplete_block_start_with_ht"] = true;
    j["compute_dnats_for_invalid_blocks_attn"] = false;
    j["compute_dnats_for_invalid_blocks_linear_att"] = false;
  } else if (!gdn.empty()) {
    j["model_type"] = kGdnType;
    j["architectures"] = {"GatedDeltaNetForCausalLM"};
    gdn_fields(m, j);
    j["attn"] = attn_dict(m, attn);
  } else {
    j["model_type"] = kTransformerType;
    j["architectures"] = {"TransformerForCausalLM"};
    j["num_heads"] = m.num_attn_heads;
    j["num_kv_heads"] = m.num_attn_heads;
    j["qkv_bias"] = false;
    j["qk_norm"] = m.attn_qk_norm;
    j["window_size"] = nullptr;
    j["rope_theta"] = m.attn_rope ? nlohmann::json(m.rope_theta) : nlohmann::json(nullptr);
    j["elementwise_affine"] = true;
  }
  // FLA's attention layers take their head dim as hidden_size / num_heads and values as wide as keys.
  const int64_t dk = m.attn_head_dim != 0 ? m.attn_head_dim : m.hidden_size / m.num_attn_heads;
  const int64_t dv = m.attn_value_dim != 0 ? m.attn_value_dim : dk;
  if (!attn.empty() && (dk * m.num_attn_heads != m.hidden_size || dv != dk))
    throw InputError("the attention layers' head dims (" + std::to_string(dk) + ", values " + std::to_string(dv) +
                     ") are not hidden_size / num_attn_heads: the HF attention classes have no field for that");
  common_fields(m, j);
  j["natsl"] = natsl_model_json(m);
  return j;
}

ModelConfig model_from_hf_config(const nlohmann::json& c, const std::string& what) {
  if (!c.is_object()) throw InputError(what + " is not a JSON object");
  const std::string type = get_or<std::string>(c, "model_type", "", what);
  ModelConfig m;
  m.name = type;
  read_common(c, m, what);
  if (type == kNatslType) {
    read_gdn(c, m, what);
    const std::vector<int64_t> attn = read_attn(c, m, what);
    std::vector<int64_t> gdn;
    if (c.contains("gdn_layers") && c["gdn_layers"].is_array())
      for (const auto& l : c["gdn_layers"]) gdn.push_back(json_integer<int64_t>(l, what + ": gdn_layers"));
    m.layers = kinds_with(m.num_layers, "natsl", attn, gdn, what);
    m.num_attn_heads = need<int64_t>(c, "num_attn_heads", what);
    m.attn_qk_norm = get_or<bool>(c, "attn_qk_norm", false, what);
    m.num_nats_heads = get_or<int64_t>(c, "num_nats_head", 0, what);
    m.nats_block_size = get_or<int64_t>(c, "nats_block_size", 64, what);
    m.nats_sample = get_or<std::string>(c, "nats_sample_strategy", "argmax", what);
    // What natsl's NAtS-L layer computes (natsl-layer.md §7.1): other settings are another function.
    const std::pair<const char*, nlohmann::json> fixed[] = {
        {"n_ops", 2}, {"nats_block_agg_type", "mean"}, {"ops_for_incomplete_chunks", "all"},
        {"outputs_are_wighted", true}, {"attn_with_short_conv", true}, {"attn_apply_pos_encoding", false},
        {"decay_for_non_gdn_blocks", true}, {"incomplete_block_start_with_ht", true}};
    for (const auto& [key, want] : fixed)
      if (c.contains(key) && c[key] != want)
        throw InputError(what + ": " + key + " = " + c[key].dump() + " is not what natsl's NAtS-L layer computes (" +
                         want.dump() + ")");
  } else if (type == kGdnType) {
    read_gdn(c, m, what);
    m.layers = kinds_with(m.num_layers, "gdn", read_attn(c, m, what), {}, what);
  } else if (type == kTransformerType) {
    m.num_attn_heads = need<int64_t>(c, "num_heads", what);
    if (c.contains("num_kv_heads") && !c["num_kv_heads"].is_null() && c["num_kv_heads"] != c["num_heads"])
      throw InputError(what + ": num_kv_heads different from num_heads (grouped-query attention) is not implemented");
    if (c.contains("window_size") && !c["window_size"].is_null())
      throw InputError(what + ": window_size (sliding windows) is not implemented");
    m.attn_qk_norm = get_or<bool>(c, "qk_norm", false, what);
    m.attn_rope = c.contains("rope_theta") && !c["rope_theta"].is_null();
    if (m.attn_rope) m.rope_theta = need<double>(c, "rope_theta", what);
    m.layers = std::vector<std::string>(size_t(m.num_layers), "attn");
  } else {
    throw InputError(what + ": model_type \"" + type + "\" is not one natsl reads (" + kNatslType + ", " + kGdnType +
                     ", " + kTransformerType + ")");
  }
  // natsl's own settings ride along in "natsl" when natsl wrote the file: they win (they include the HF
  // fields, and the routing controls and the rest the HF classes have no field for).
  if (c.contains("natsl") && c["natsl"].is_object()) {
    nlohmann::json full = config_to_json(RunConfig{});
    full["model"] = c["natsl"];
    m = config_from_json(full, what + " (its \"natsl\" object)").model;
  }
  validate_model_config(m);
  return m;
}

void export_hf(const std::string& checkpoint_dir, const std::string& out_dir) {
  CheckpointReader ck(checkpoint_dir);
  const std::string state = (fs::path(checkpoint_dir) / "state.json").string();
  if (!ck.trainer().contains("config")) throw InputError("'" + state + "' holds no config; cannot name the model");
  const RunConfig cfg = config_from_json(ck.trainer().at("config"), state);
  const nlohmann::json config = hf_config(cfg.model);
  fs::create_directories(out_dir);
  std::vector<std::string> names;
  for (const auto& e : ck.model().entries()) names.push_back(e.name);
  copy_tensors(ck.model(), names, (fs::path(out_dir) / "model.safetensors").string(), hf_tensor_shape);
  replace_file_atomically((fs::path(out_dir) / "config.json").string(), config.dump(2) + "\n");
}

void import_hf(const std::string& hf_dir, const std::string& out_dir) {
  const std::string config_path = (fs::path(hf_dir) / "config.json").string();
  const ModelConfig m = model_from_hf_config(read_json_file(config_path), "'" + config_path + "'");
  const std::string weights = (fs::path(hf_dir) / "model.safetensors").string();
  SafeTensorsReader r(weights);
  // The model's parameters, by name and shape, against the file's tensors.
  const CausalLM model(m);
  std::vector<std::string> names;
  std::set<std::string> wanted;
  std::map<std::string, Shape> shapes;
  for (const ParameterRef& p : model.named_parameters()) {
    names.push_back(p.name);
    wanted.insert(p.name);
    shapes[p.name] = p.meta->shape;
    const SafeTensorEntry* e = r.find(p.name);
    if (!e) throw InputError("'" + weights + "' has no tensor '" + p.name + "', which the model of " + config_path + " needs");
    if (!fits_parameter(p.name, e->shape, p.meta->shape))
      throw InputError("'" + weights + "': tensor '" + p.name + "' has shape " + shape_str(e->shape) +
                       " but the model of " + config_path + " needs " + shape_str(hf_tensor_shape(p.name, p.meta->shape)));
  }
  for (const auto& e : r.entries())
    if (!wanted.count(e.name))
      throw InputError("'" + weights + "' holds tensor '" + e.name + "', which the model of " + config_path +
                       " does not have (another architecture?)");
  fs::create_directories(out_dir);
  copy_tensors(r, names, (fs::path(out_dir) / "model.safetensors").string(),
               [&](const std::string& name, const Shape&) { return shapes.at(name); });
  // JSON is YAML: model.yaml loads with `model=OUT_DIR/model.yaml`.
  replace_file_atomically((fs::path(out_dir) / "model.yaml").string(), natsl_model_json(m).dump(2) + "\n");
}

}  // namespace natsl
