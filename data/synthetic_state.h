#pragma once
// Checkpoint state of the synthetic sources: {"kind", "settings": {...}, "last_step"}. Restoring compares
// the settings key by key, so a resumed run on different data is refused with the key that changed.
#include <cstdint>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace natsl {

// {"kind", "settings", "last_step"} of a synthetic source: `settings` with the two entries every source adds,
// global_batch_rows (rows per rank x ranks) and seed.
nlohmann::json synthetic_state(const std::string& kind, nlohmann::json settings, int64_t global_batch_rows,
                               uint64_t seed, int64_t last_step);

// The end of a synthetic source's describe(): ", batch B (rank R/W), seed S".
std::string synthetic_batch_text(int64_t batch_size, int rank, int world_size, uint64_t seed);

// Returns the checkpoint's last_step; throws InputError when kind or any setting differs from `mine`.
int64_t check_synthetic_state(const nlohmann::json& theirs, const nlohmann::json& mine);

}  // namespace natsl
