#include "data/synthetic_state.h"

#include <sstream>
#include <utility>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_read.h"

namespace natsl {

nlohmann::json synthetic_state(const std::string& kind, nlohmann::json settings, int64_t global_batch_rows,
                               uint64_t seed, int64_t last_step) {
  settings["global_batch_rows"] = global_batch_rows;
  settings["seed"] = seed;
  return {{"kind", kind}, {"settings", std::move(settings)}, {"last_step", last_step}};
}

std::string synthetic_batch_text(int64_t batch_size, int rank, int world_size, uint64_t seed) {
  std::ostringstream os;
  os << ", batch " << batch_size << " (rank " << rank << "/" << world_size << "), seed " << seed;
  return os.str();
}

int64_t check_synthetic_state(const nlohmann::json& theirs, const nlohmann::json& mine) {
  const std::string fix = "; resume with the data settings of the checkpoint or start a new run.";
  const std::string kind = mine.at("kind").get<std::string>();
  if (!theirs.is_object() || !theirs.contains("kind") || !theirs.contains("settings") || !theirs.contains("last_step"))
    throw InputError("the checkpoint's data state is not a " + kind + " state (missing kind/settings/last_step)" + fix);
  if (theirs.at("kind") != mine.at("kind"))
    throw InputError("the checkpoint's data source is " + theirs.at("kind").dump() + " but this run uses " +
                     mine.at("kind").dump() + fix);
  const nlohmann::json& a = theirs.at("settings");
  for (const auto& [key, value] : mine.at("settings").items()) {
    if (!a.contains(key)) throw InputError("the checkpoint's " + kind + " data state lacks setting '" + key + "'" + fix);
    if (a.at(key) != value)
      throw InputError("the checkpoint's " + kind + " data has " + key + " = " + a.at(key).dump() +
                       " but this run has " + value.dump() + fix);
  }
  return json_integer<int64_t>(theirs.at("last_step"), "the checkpoint's " + kind + " data state's last_step");
}

}  // namespace natsl
