#include "trainers/config.h"

#include <algorithm>
#include <filesystem>
#include <set>
#include <sstream>

#include <yaml-cpp/yaml.h>

#include "core/config_key_error.h"
#include "core/error.h"
#include "trainers/config_schema.h"
#include "trainers/data_factory.h"

namespace fs = std::filesystem;

namespace natsl {

namespace {

const FieldSpec* find_field(const std::vector<FieldSpec>& schema, const std::string& key) {
  for (const auto& f : schema)
    if (f.key == key) return &f;
  return nullptr;
}

bool is_section(const std::string& key) {
  auto s = config_sections();
  return std::find(s.begin(), s.end(), key) != s.end();
}

// The names directly under `prefix` ("" = top level): its keys and its sub-sections.
std::vector<std::string> children(const std::vector<FieldSpec>& schema, const std::string& prefix) {
  std::vector<std::string> out;
  std::string p = prefix.empty() ? "" : prefix + ".";
  auto add = [&](const std::string& full) {
    if (full.rfind(p, 0) != 0) return;
    std::string rest = full.substr(p.size());
    std::string head = rest.substr(0, rest.find('.'));
    if (!head.empty() && std::find(out.begin(), out.end(), head) == out.end()) out.push_back(head);
  };
  for (const auto& f : schema) add(f.key);
  for (const auto& s : config_sections()) add(s);
  return out;
}

std::vector<std::string> all_keys(const std::vector<FieldSpec>& schema) {
  std::vector<std::string> out;
  for (const auto& f : schema) out.push_back(f.key);
  return out;
}

std::string unknown_key_message(const std::vector<FieldSpec>& schema, const std::string& prefix, const std::string& name,
                                const std::string& where) {
  std::string full = prefix.empty() ? name : prefix + "." + name;
  std::string msg = where + ": unknown key '" + full + "'";
  std::string near = nearest_name(name, children(schema, prefix));
  if (!near.empty()) return msg + " (did you mean '" + (prefix.empty() ? near : prefix + "." + near) + "'?)";
  // The key may belong to another section (`lr` at the top level): match the last name part of every key.
  for (const auto& k : all_keys(schema)) {
    std::string leaf = k.substr(k.rfind('.') == std::string::npos ? 0 : k.rfind('.') + 1);
    if (leaf == name) return msg + " (did you mean '" + k + "'?)";
  }
  std::string valid;
  for (const auto& c : children(schema, prefix)) valid += (valid.empty() ? "" : ", ") + c;
  return msg + "; valid keys " + (prefix.empty() ? "at the top level" : "in '" + prefix + "'") + ": " + valid;
}

std::string at_line(const std::string& file, const YAML::Mark& mark) {
  if (mark.is_null()) return file;
  return file + ":" + std::to_string(mark.line + 1);
}

YAML::Node load_yaml_file(const std::string& path, const std::string& what) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw InputError(what + " '" + path + "' does not exist");
  if (fs::is_directory(path, ec)) throw InputError(what + " '" + path + "' is a directory, expected a YAML file");
  try {
    return YAML::LoadFile(path);
  } catch (const YAML::ParserException& e) {
    throw InputError(at_line(path, e.mark) + ":" + std::to_string(e.mark.column + 1) + ": YAML syntax error: " + e.msg);
  } catch (const YAML::BadFile&) {
    throw InputError(what + " '" + path + "' cannot be read (permissions?)");
  }
}

void load_model_file(RunConfig& cfg, const std::vector<FieldSpec>& schema, const std::string& path);

void load_mapping(RunConfig& cfg, const std::vector<FieldSpec>& schema, const YAML::Node& map, const std::string& prefix,
                  const std::string& file) {
  std::set<std::string> seen;
  for (const auto& kv : map) {
    const YAML::Node k = kv.first, v = kv.second;
    std::string where = at_line(file, k.Mark());
    if (!k.IsScalar()) throw InputError(where + ": a key must be a plain name");
    std::string name = k.Scalar();
    std::string full = prefix.empty() ? name : prefix + "." + name;
    if (!seen.insert(name).second) throw InputError(where + ": key '" + full + "' appears twice");
    if (const FieldSpec* f = find_field(schema, full)) {
      set_field_from_yaml(*f, v, where);
      cfg.origin[full] = where;
    } else if (full == "model" && v.IsScalar()) {
      // `model: path/to/model.yaml`, relative to the file that names it.
      fs::path p = fs::path(v.Scalar());
      if (p.is_relative()) p = fs::path(file).parent_path() / p;
      load_model_file(cfg, schema, p.lexically_normal().string());
    } else if (is_section(full)) {
      if (v.IsNull()) continue;  // an empty section keeps its defaults
      if (!v.IsMap())
        throw InputError(where + ": '" + full + "' must be a mapping of keys" +
                         (full == "model" ? " or the path of a model YAML file" : ""));
      load_mapping(cfg, schema, v, full, file);
    } else {
      throw InputError(unknown_key_message(schema, prefix, name, where));
    }
  }
}

void load_model_file(RunConfig& cfg, const std::vector<FieldSpec>& schema, const std::string& path) {
  YAML::Node root = load_yaml_file(path, "model config file");
  if (root.IsNull())
    throw InputError(path + ": the model config file is empty (or holds only comments); write the model keys "
                            "(hidden_size: ..., num_layers: ...)");
  if (!root.IsMap()) throw InputError(path + ": a model file must be a mapping of model keys (hidden_size: ..., ...)");
  // Accept both a bare mapping of model keys and one wrapped in `model:`.
  if (root.size() == 1 && root["model"] && root["model"].IsMap()) root = root["model"];
  load_mapping(cfg, schema, root, "model", path);
}

std::string origin_of(const RunConfig& cfg, const std::string& key) {
  auto it = cfg.origin.find(key);
  if (it != cfg.origin.end()) return it->second;
  return cfg.config_path.empty() ? "config" : cfg.config_path + " (default of " + key + ")";
}

}  // namespace

RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides) {
  RunConfig cfg;
  cfg.config_path = path;
  YAML::Node root = load_yaml_file(path, "config file");
  auto schema = config_schema(cfg);
  // An empty file is far likelier a mistake (a wrong path, a truncated copy) than a wish for every default;
  // `{}` says the latter explicitly.
  if (root.IsNull())
    throw InputError(path + ": the config file is empty (or holds only comments); write the sections model:, "
                            "data:, train: (see configs/), or {} for every default");
  if (!root.IsMap())
    throw InputError(path + ": a config must be a mapping with sections model:, data:, train: (this file holds a " +
                     (root.IsSequence() ? "list" : "single value") + ")");
  load_mapping(cfg, schema, root, "", path);
  for (const auto& o : overrides) apply_override(cfg, o);
  validate_config(cfg);
  return cfg;
}

void apply_override(RunConfig& cfg, const std::string& assignment) {
  auto schema = config_schema(cfg);
  size_t eq = assignment.find('=');
  std::string where = "command-line override '" + assignment + "'";
  if (eq == std::string::npos || eq == 0)
    throw InputError("command-line argument '" + assignment + "' is not an override KEY=VALUE (e.g. train.steps=100)");
  std::string key = assignment.substr(0, eq), value = assignment.substr(eq + 1);
  if (key == "model") {
    load_model_file(cfg, schema, value);
    return;
  }
  const FieldSpec* f = find_field(schema, key);
  if (!f) {
    if (is_section(key))
      throw InputError(where + ": '" + key + "' is a section; override one of its keys, e.g. " + key + "." +
                       children(schema, key).front() + "=...");
    std::string near = nearest_name(key, all_keys(schema));
    if (near.empty()) {
      // A bare leaf name (`lr=...`) or a typo in the leaf only: compare the last name parts.
      std::string leaf = key.substr(key.rfind('.') == std::string::npos ? 0 : key.rfind('.') + 1);
      std::vector<std::string> leaves;
      for (const auto& k : all_keys(schema)) leaves.push_back(k.substr(k.rfind('.') == std::string::npos ? 0 : k.rfind('.') + 1));
      std::string l = nearest_name(leaf, leaves);
      for (const auto& k : all_keys(schema))
        if (!l.empty() && k.size() >= l.size() && k.compare(k.size() - l.size(), l.size(), l) == 0 &&
            (k.size() == l.size() || k[k.size() - l.size() - 1] == '.')) {
          near = k;
          break;
        }
    }
    throw InputError(where + ": unknown key '" + key + "'" + (near.empty() ? "" : " (did you mean '" + near + "'?)"));
  }
  if (value.empty()) throw InputError(where + ": no value given for '" + key + "'");
  YAML::Node node;
  if (std::holds_alternative<std::string*>(f->ptr)) {
    node = YAML::Node(value);  // strings are taken literally (paths may hold ':' or '#')
  } else {
    try {
      node = YAML::Load(value);
    } catch (const YAML::Exception& e) {
      throw InputError(where + ": cannot parse the value: " + e.msg);
    }
  }
  set_field_from_yaml(*f, node, where);
  cfg.origin[key] = "command line";
}

void validate_config(RunConfig& cfg) {
  // Each owner checks its own options and names the key; only here is it known where that key was set.
  try {
    validate_train_config(cfg.train);
    validate_model_config(cfg.model);
    validate_data_config(cfg);
  } catch (const ConfigKeyError& e) {
    throw InputError(origin_of(cfg, e.key()) + ": " + e.what());
  } catch (const InputError& e) {  // a check that names no single key: the config as a whole
    throw InputError((cfg.config_path.empty() ? std::string("config") : cfg.config_path) + ": " + e.what());
  }
}

std::string config_to_yaml(const RunConfig& cfg_in) {
  RunConfig cfg = cfg_in;
  auto schema = config_schema(cfg);
  std::ostringstream os;
  std::vector<std::string> open;  // the sections printed so far along the current path
  for (const auto& f : schema) {
    std::vector<std::string> parts;
    std::stringstream ss(f.key);
    for (std::string p; std::getline(ss, p, '.');) parts.push_back(p);
    std::vector<std::string> sec(parts.begin(), parts.end() - 1);
    size_t common = 0;
    while (common < open.size() && common < sec.size() && open[common] == sec[common]) ++common;
    for (size_t i = common; i < sec.size(); ++i) os << std::string(2 * i, ' ') << sec[i] << ":\n";
    open = sec;
    os << std::string(2 * sec.size(), ' ') << parts.back() << ": " << field_to_string(f) << "\n";
  }
  return os.str();
}

nlohmann::json config_to_json(const RunConfig& cfg_in) {
  RunConfig cfg = cfg_in;
  nlohmann::json j = nlohmann::json::object();
  for (const auto& f : config_schema(cfg)) {
    std::string ptr = "/" + f.key;
    std::replace(ptr.begin(), ptr.end(), '.', '/');
    j[nlohmann::json::json_pointer(ptr)] = field_to_json(f);
  }
  return j;
}

RunConfig config_from_json(const nlohmann::json& j, const std::string& what) {
  RunConfig cfg;
  if (!j.is_object()) throw InputError(what + ": the saved config is not a JSON object");
  for (const auto& f : config_schema(cfg)) {
    std::string ptr = "/" + f.key;
    std::replace(ptr.begin(), ptr.end(), '.', '/');
    nlohmann::json::json_pointer p(ptr);
    if (j.contains(p)) set_field_from_json(f, j.at(p), what);
  }
  return cfg;
}

std::string config_table(const RunConfig& cfg_in) {
  RunConfig cfg = cfg_in;
  auto schema = config_schema(cfg);
  size_t w = 0;
  for (const auto& f : schema) w = std::max(w, f.key.size());
  std::ostringstream os;
  for (const auto& f : schema) {
    std::string from;
    auto it = cfg.origin.find(f.key);
    if (it != cfg.origin.end()) from = it->second == "command line" ? "  (command line)" : "";
    os << "  " << f.key << std::string(w + 2 - f.key.size(), ' ') << field_to_string(f) << from << "\n";
  }
  return os.str();
}

}  // namespace natsl
