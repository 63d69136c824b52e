#pragma once
// Which rank this process is and how to reach rank 0: read from the variables the launchers set.
//   natsl train --nproc N   RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT, NATSL_RUN_ID
//   torchrun                the same names (run id: TORCHELASTIC_RUN_ID)
//   Slurm (srun)            SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE / SLURM_STEP_TASKS_PER_NODE,
//                           the first host of SLURM_JOB_NODELIST (or SLURM_STEP_NODELIST), run id SLURM_JOB_ID.SLURM_STEP_ID;
//                           MASTER_ADDR / MASTER_PORT win when set
//   nothing set             one process, world size 1
#include <functional>
#include <string>

namespace natsl::dist {

struct LaunchInfo {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 0;        // 0: no store needed (world size 1)
  std::string run_id;         // the job's id; a peer with another id is refused at rendezvous
  std::string launcher = "single";  // "single", "natsl", "torchrun" or "slurm"
  bool multi() const { return world_size > 1; }
};

// Reads the variables through `env` (getenv by default; tests pass a map). Throws InputError naming the
// variable when one is set but malformed or inconsistent (RANK >= WORLD_SIZE, a port out of range, ...).
LaunchInfo launch_info_from_env(const std::function<const char*(const char*)>& env = {});

// "node[01-04,07],gpu5" -> "node01": the first host of a Slurm node list.
std::string first_slurm_host(const std::string& nodelist);

}  // namespace natsl::dist
