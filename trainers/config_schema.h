#pragma once
// The declaration of every config key: dotted name, type, range or allowed values, and where it lives in a
// RunConfig. Loading, overrides, printing and JSON all walk this one list, so a key added here is
// everywhere at once.
#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "trainers/config.h"

namespace natsl {

using FieldPtr = std::variant<int64_t*, double*, bool*, std::string*, std::vector<int64_t>*, std::vector<double>*,
                              std::vector<std::string>*, std::vector<MixEntry>*>;

struct FieldSpec {
  std::string key;  // "train.lr"
  FieldPtr ptr;
  std::optional<double> min, max;     // inclusive bounds for numbers (and list elements)
  std::vector<std::string> choices;   // allowed strings (and list elements) when non-empty
  int64_t list_size = -1;             // required list length; -1 = any
  std::string help;                   // one phrase shown with range errors
  bool min_exclusive = false, max_exclusive = false;  // (min, ...] / [..., max): the bound itself is out
};

// Every key of the schema, bound to the fields of `cfg`.
std::vector<FieldSpec> config_schema(RunConfig& cfg);
// The section names ("model", "data", "data.mqar", ...) that hold keys.
std::vector<std::string> config_sections();

// The type name used in messages: "an integer", "a number", "true or false", "a string", "a list of ...".
std::string field_type_name(const FieldSpec& f);
// Parses `node` into the field, checking type, choices and range. `where` prefixes the messages
// ("tiny.yaml:12" or "command-line override 'train.lr=x'"). Throws InputError.
void set_field_from_yaml(const FieldSpec& f, const YAML::Node& node, const std::string& where);
void set_field_from_json(const FieldSpec& f, const nlohmann::json& value, const std::string& where);
nlohmann::json field_to_json(const FieldSpec& f);
// The value as a one-line YAML flow scalar/sequence (numbers in shortest round-trip form).
std::string field_to_string(const FieldSpec& f);

// The candidate nearest to `word` by edit distance (optimal string alignment), or "" when none is close.
std::string nearest_name(const std::string& word, const std::vector<std::string>& candidates);
size_t edit_distance(const std::string& a, const std::string& b);

}  // namespace natsl
