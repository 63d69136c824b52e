#pragma once
// Checkpoint state of the synthetic sources: {"kind", "settings": {...}, "last_step"}. Restoring compares
// the settings key by key, so a resumed run on different data is refused with the key that changed.
#include <cstdint>

#include <nlohmann/json_fwd.hpp>

namespace natsl {

// Returns the checkpoint's last_step; throws InputError when kind or any setting differs from `mine`.
int64_t check_synthetic_state(const nlohmann::json& theirs, const nlohmann::json& mine);

}  // namespace natsl
