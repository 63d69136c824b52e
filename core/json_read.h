#pragma once
// Integers read from JSON that came from disk (a checkpoint's state.json, a data loader's saved state).
// nlohmann's get<int64_t>() and value(key, int64_t) cast a float or an out-of-range number without a check,
// which is undefined behaviour (the checkpoint fuzzer found one: 9.2e22 as an int64). Every integer natsl
// takes from an untrusted document goes through json_integer, which throws an InputError naming the field
// when the value is not an integer that fits the type.
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace natsl {

// `j` as a T, or an InputError that names `what` (say "'run/state.json': trainer.skipped_steps").
template <class T>
T json_integer(const nlohmann::json& j, const std::string& what) {
  static_assert(std::is_integral_v<T> && !std::is_same_v<T, bool>);
  if (j.is_number_unsigned()) {
    const uint64_t v = j.get<uint64_t>();
    if (std::in_range<T>(v)) return T(v);
  } else if (j.is_number_integer()) {
    const int64_t v = j.get<int64_t>();
    if (std::in_range<T>(v)) return T(v);
  }
  throw InputError(what + " is " + j.dump(-1, ' ', true) + " but must be an integer from " +
                   std::to_string(std::numeric_limits<T>::min()) + " to " +
                   std::to_string(std::numeric_limits<T>::max()) + " (the file is corrupt or was edited)");
}

// obj[key] as a T when obj is an object holding key, else `fallback`.
template <class T>
T json_integer_or(const nlohmann::json& obj, const char* key, T fallback, const std::string& where) {
  if (!obj.is_object() || !obj.contains(key)) return fallback;
  return json_integer<T>(obj.at(key), where + key);
}

}  // namespace natsl
