#pragma once
// Helpers for the tests of trainers/dist/ that run their ranks as threads of the test process.
#include "trainers/dist/launch.h"

namespace natsl::testing {

// Rank `rank` of `world` ranks, all on this host (local rank = rank) at the default master address, as a
// test launched it; the caller sets the store's port and the run id where it needs them.
inline dist::LaunchInfo thread_rank(int rank, int world) {
  dist::LaunchInfo li;
  li.rank = rank;
  li.world_size = world;
  li.local_rank = rank;
  li.local_world_size = world;
  li.launcher = "test";
  return li;
}

}  // namespace natsl::testing
