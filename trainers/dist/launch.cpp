#include "trainers/dist/launch.h"

#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <vector>

#include "core/error.h"

namespace natsl::dist {

namespace {

using Env = std::function<const char*(const char*)>;

// An empty value counts as unset: `export RANK=` in a script means "no rank", not a malformed one.
std::optional<std::string> read(const Env& env, const char* name) {
  const char* v = env(name);
  if (!v || !*v) return std::nullopt;
  return std::string(v);
}

// The whole string, decimal, no sign or blanks ("+3", " 3", "3x" are refused).
std::optional<int64_t> parse_integer(const std::string& s) {
  int64_t v = 0;
  const char* end = s.data() + s.size();
  if (s.empty() || s[0] == '+') return std::nullopt;
  auto [p, ec] = std::from_chars(s.data(), end, v);
  if (ec != std::errc() || p != end) return std::nullopt;
  return v;
}

int integer_var(const std::string& name, const std::string& value, int64_t lo, int64_t hi, const std::string& what) {
  const std::optional<int64_t> v = parse_integer(value);
  if (!v) throw InputError(name + "='" + value + "' is not an integer; it should be " + what);
  if (*v < lo || *v > hi)
    throw InputError(name + "=" + value + " is out of range; it should be " + what);
  return int(*v);
}

int port_var(const std::string& name, const std::string& value) {
  return integer_var(name, value, 1, 65535, "a TCP port, 1..65535");
}

std::string join(const std::vector<std::string>& items) {
  std::string s;
  for (const auto& x : items) s += (s.empty() ? "" : ", ") + x;
  return s;
}

// The variables a launcher sets together: some but not all of them is a broken launch, not a single process.
void require_together(const Env& env, const std::vector<const char*>& names, const std::string& who) {
  std::vector<std::string> set, missing;
  for (const char* n : names) (read(env, n) ? set : missing).push_back(n);
  if (!set.empty() && !missing.empty())
    throw InputError(join(set) + (set.size() == 1 ? " is" : " are") + " set but " + join(missing) +
                     (missing.size() == 1 ? " is" : " are") + " not: " + who + " sets them together; set all of them or none");
}

void check_ranks(LaunchInfo& li, const std::string& rank_name, const std::string& world_name,
                 const std::string& local_rank_name, const std::string& local_world_name) {
  if (li.rank >= li.world_size)
    throw InputError(rank_name + "=" + std::to_string(li.rank) + " is not below " + world_name + "=" +
                     std::to_string(li.world_size) + " (ranks are 0.." + std::to_string(li.world_size - 1) +
                     "); check the launcher's settings");
  if (li.local_world_size > li.world_size)
    throw InputError(local_world_name + "=" + std::to_string(li.local_world_size) + " is above " + world_name + "=" +
                     std::to_string(li.world_size) + "; check the launcher's settings");
  if (li.local_rank >= li.local_world_size)
    throw InputError(local_rank_name + "=" + std::to_string(li.local_rank) + " is not below " + local_world_name +
                     "=" + std::to_string(li.local_world_size) + "; check the launcher's settings");
}

LaunchInfo from_torchrun(const Env& env) {
  LaunchInfo li;
  li.rank = integer_var("RANK", *read(env, "RANK"), 0, 1 << 30, "this process's rank, 0..WORLD_SIZE-1");
  li.world_size = integer_var("WORLD_SIZE", *read(env, "WORLD_SIZE"), 1, 1 << 30, "the number of processes, at least 1");
  li.local_rank = integer_var("LOCAL_RANK", *read(env, "LOCAL_RANK"), 0, 1 << 30, "the rank on this host, 0..LOCAL_WORLD_SIZE-1");
  li.local_world_size = integer_var("LOCAL_WORLD_SIZE", *read(env, "LOCAL_WORLD_SIZE"), 1, 1 << 30,
                                    "the number of processes on this host, at least 1");
  check_ranks(li, "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE");
  const auto addr = read(env, "MASTER_ADDR");
  const auto port = read(env, "MASTER_PORT");
  if (li.multi() && (!addr || !port))
    throw InputError("WORLD_SIZE=" + std::to_string(li.world_size) + " but " +
                     (!addr && !port ? "MASTER_ADDR and MASTER_PORT are" : !addr ? "MASTER_ADDR is" : "MASTER_PORT is") +
                     " not set: the ranks meet at MASTER_ADDR:MASTER_PORT (rank 0's host and a free port); set both");
  if (addr) li.master_addr = *addr;
  if (port) li.master_port = port_var("MASTER_PORT", *port);
  if (const auto id = read(env, "NATSL_RUN_ID")) {
    li.run_id = *id;
    li.launcher = "natsl";
  } else {
    li.run_id = read(env, "TORCHELASTIC_RUN_ID").value_or("");
    li.launcher = "torchrun";
  }
  return li;
}

// "4(x2),3" -> {4, 4, 3}: the task counts of a step's nodes, in node order.
std::vector<int> tasks_per_node(const std::string& name, const std::string& value) {
  std::vector<int> counts;
  const std::string what = "tasks per node as Slurm writes them, e.g. '4' or '4(x2),3'";
  size_t i = 0;
  while (i <= value.size()) {
    const size_t comma = std::min(value.find(',', i), value.size());
    const std::string item = value.substr(i, comma - i);
    const size_t paren = item.find("(x");
    int count = 0, repeat = 1;
    if (paren == std::string::npos) {
      count = integer_var(name, item, 1, 1 << 20, what);
    } else {
      if (item.back() != ')') throw InputError(name + "='" + value + "' is malformed; it should be " + what);
      count = integer_var(name, item.substr(0, paren), 1, 1 << 20, what);
      repeat = integer_var(name, item.substr(paren + 2, item.size() - paren - 3), 1, 1 << 20, what);
    }
    if (counts.size() + size_t(repeat) > (1u << 20)) throw InputError(name + "='" + value + "' lists too many nodes");
    counts.insert(counts.end(), size_t(repeat), count);
    i = comma + 1;
  }
  return counts;
}

// Slurm's batch script, salloc's interactive step and the extern step carry step ids near 2^32 (0xfffffffa
// and above): such a process was not started by srun as one task of many.
constexpr uint64_t kFirstSpecialStepId = 0xfffffff0u;

std::optional<LaunchInfo> from_slurm(const Env& env) {
  const auto step = read(env, "SLURM_STEP_ID");
  const auto procid = read(env, "SLURM_PROCID");
  if (!step || !procid) return std::nullopt;
  const std::optional<int64_t> step_id = parse_integer(*step);
  if (!step_id || *step_id < 0) throw InputError("SLURM_STEP_ID='" + *step + "' is not a step number");
  if (uint64_t(*step_id) >= kFirstSpecialStepId) return std::nullopt;
  require_together(env, {"SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_ID"}, "srun");

  LaunchInfo li;
  li.launcher = "slurm";
  li.rank = integer_var("SLURM_PROCID", *procid, 0, 1 << 30, "this task's rank, 0..SLURM_NTASKS-1");
  li.world_size = integer_var("SLURM_NTASKS", *read(env, "SLURM_NTASKS"), 1, 1 << 30, "the number of tasks, at least 1");
  li.local_rank = integer_var("SLURM_LOCALID", *read(env, "SLURM_LOCALID"), 0, 1 << 30, "the task's rank on its node");
  // The step's own layout wins over the job's (an srun inside sbatch --ntasks-per-node=8 may run fewer tasks).
  if (const auto step_tasks = read(env, "SLURM_STEP_TASKS_PER_NODE")) {
    const std::vector<int> counts = tasks_per_node("SLURM_STEP_TASKS_PER_NODE", *step_tasks);
    int node = 0;
    if (const auto nodeid = read(env, "SLURM_NODEID"))
      node = integer_var("SLURM_NODEID", *nodeid, 0, int64_t(counts.size()) - 1,
                         "this node's index in the step, below the " + std::to_string(counts.size()) +
                             " nodes of SLURM_STEP_TASKS_PER_NODE");
    li.local_world_size = counts[size_t(node)];
  } else if (const auto per_node = read(env, "SLURM_NTASKS_PER_NODE")) {
    li.local_world_size = integer_var("SLURM_NTASKS_PER_NODE", *per_node, 1, 1 << 30, "the tasks per node, at least 1");
  } else {
    throw InputError("SLURM_PROCID is set but neither SLURM_STEP_TASKS_PER_NODE nor SLURM_NTASKS_PER_NODE is: "
                     "run natsl under srun, or set RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE yourself");
  }
  check_ranks(li, "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
              read(env, "SLURM_STEP_TASKS_PER_NODE") ? "the tasks of this node in SLURM_STEP_TASKS_PER_NODE"
                                                     : "SLURM_NTASKS_PER_NODE");

  const std::string job = *read(env, "SLURM_JOB_ID");
  li.run_id = job + "." + *step;
  if (const auto addr = read(env, "MASTER_ADDR")) {
    li.master_addr = *addr;
  } else {
    const char* list_name = read(env, "SLURM_STEP_NODELIST") ? "SLURM_STEP_NODELIST" : "SLURM_JOB_NODELIST";
    const auto list = read(env, list_name);
    if (!list) throw InputError("SLURM_PROCID is set but neither MASTER_ADDR nor SLURM_STEP_NODELIST nor "
                                "SLURM_JOB_NODELIST is: set MASTER_ADDR to rank 0's host");
    try {
      li.master_addr = first_slurm_host(*list);
    } catch (const InputError& e) {
      throw InputError(std::string(list_name) + ": " + e.what());
    }
  }
  if (const auto port = read(env, "MASTER_PORT")) {
    li.master_port = port_var("MASTER_PORT", *port);
  } else {
    // Every task derives the same port; the step id in it lets steps of one job run side by side.
    const std::optional<int64_t> job_id = parse_integer(job);
    if (!job_id || *job_id < 0)
      throw InputError("SLURM_JOB_ID='" + job + "' is not a job number, so no port can be derived from it; set MASTER_PORT");
    li.master_port = 20000 + int((uint64_t(*job_id) + uint64_t(*step_id)) % 10000);
  }
  return li;
}

}  // namespace

LaunchInfo launch_info_from_env(const std::function<const char*(const char*)>& env_arg) {
  const Env env = env_arg ? env_arg : Env([](const char* n) -> const char* { return std::getenv(n); });
  const std::vector<const char*> torchrun = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"};
  bool any_torchrun = false;
  for (const char* n : torchrun) any_torchrun = any_torchrun || read(env, n);
  if (any_torchrun) {
    require_together(env, torchrun, "a launcher (torchrun, natsl train --nproc)");
    return from_torchrun(env);
  }
  if (std::optional<LaunchInfo> slurm = from_slurm(env)) return *slurm;
  return LaunchInfo{};
}

std::string first_slurm_host(const std::string& nodelist) {
  // A list is hosts separated by top-level commas; a host is text with [ranges] groups, each range "a-b" or
  // "a" (digits, zero padding kept). The first host takes the first number of each group.
  const std::string what = "Slurm node list '" + nodelist + "'";
  if (nodelist.empty()) throw InputError(what + " is empty");
  std::string host;
  size_t i = 0;
  while (i < nodelist.size() && nodelist[i] != ',') {
    const char c = nodelist[i];
    if (c == ']') throw InputError(what + " has a ']' without its '['");
    if (c != '[') {
      host += c;
      ++i;
      continue;
    }
    const size_t close = nodelist.find(']', i);
    if (close == std::string::npos) throw InputError(what + " has a '[' without its ']'");
    const std::string group = nodelist.substr(i + 1, close - i - 1);
    if (group.find('[') != std::string::npos) throw InputError(what + " has nested '['");
    const std::string first = group.substr(0, std::min(group.find(','), group.find('-')));
    if (first.empty() || group.find_first_not_of("0123456789,-") != std::string::npos)
      throw InputError(what + " has a malformed range '[" + group + "]' (numbers, a-b ranges and commas)");
    host += first;
    i = close + 1;
  }
  if (host.empty()) throw InputError(what + " starts with an empty host name");
  return host;
}

}  // namespace natsl::dist
