// launch_info_from_env: which rank a process is, read from the variables of torchrun, srun and
// `natsl train --nproc`; malformed or partial sets refused naming the variable; Slurm node lists.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "core/error.h"
#include "trainers/dist/launch.h"

namespace natsl::dist {
namespace {

using Vars = std::map<std::string, std::string>;

LaunchInfo info_of(const Vars& vars) {
  return launch_info_from_env([&](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

// The InputError's message, which must name every one of `mentions`.
void expect_refused(const Vars& vars, const std::vector<std::string>& mentions) {
  try {
    const LaunchInfo li = info_of(vars);
    ADD_FAILURE() << "accepted: rank " << li.rank << " of " << li.world_size;
  } catch (const InputError& e) {
    const std::string what = e.what();
    for (const auto& m : mentions) EXPECT_NE(what.find(m), std::string::npos) << "'" << m << "' missing in: " << what;
  }
}

const Vars kTorchrun = {{"RANK", "3"},           {"WORLD_SIZE", "8"},          {"LOCAL_RANK", "1"},
                        {"LOCAL_WORLD_SIZE", "2"}, {"MASTER_ADDR", "10.0.0.7"}, {"MASTER_PORT", "29500"},
                        {"TORCHELASTIC_RUN_ID", "abc"}};

Vars with(Vars v, const Vars& changes) {
  for (const auto& [k, x] : changes) v[k] = x;
  return v;
}
Vars without(Vars v, const std::string& name) {
  v.erase(name);
  return v;
}

TEST(Launch, NothingSetIsOneProcess) {
  const LaunchInfo li = info_of({});
  EXPECT_EQ(li.rank, 0);
  EXPECT_EQ(li.world_size, 1);
  EXPECT_FALSE(li.multi());
  EXPECT_EQ(li.master_port, 0);
  EXPECT_EQ(li.launcher, "single");
  // Empty values count as unset (`export RANK=` in a script).
  EXPECT_EQ(info_of({{"RANK", ""}, {"WORLD_SIZE", ""}}).launcher, "single");
  // MASTER_ADDR/PORT alone do not make a multi-rank job.
  EXPECT_FALSE(info_of({{"MASTER_ADDR", "h"}, {"MASTER_PORT", "1234"}}).multi());
}

TEST(Launch, Torchrun) {
  const LaunchInfo li = info_of(kTorchrun);
  EXPECT_EQ(li.rank, 3);
  EXPECT_EQ(li.world_size, 8);
  EXPECT_EQ(li.local_rank, 1);
  EXPECT_EQ(li.local_world_size, 2);
  EXPECT_EQ(li.master_addr, "10.0.0.7");
  EXPECT_EQ(li.master_port, 29500);
  EXPECT_EQ(li.run_id, "abc");
  EXPECT_EQ(li.launcher, "torchrun");
  EXPECT_TRUE(li.multi());
  // torchrun always sets a run id; a hand-made set without one is still a torchrun-style launch.
  EXPECT_EQ(info_of(without(kTorchrun, "TORCHELASTIC_RUN_ID")).run_id, "");
}

TEST(Launch, NatslLauncher) {
  const LaunchInfo li = info_of(with(without(kTorchrun, "TORCHELASTIC_RUN_ID"), {{"NATSL_RUN_ID", "f00d"}}));
  EXPECT_EQ(li.launcher, "natsl");
  EXPECT_EQ(li.run_id, "f00d");
  EXPECT_EQ(li.rank, 3);
}

TEST(Launch, WorldOfOneNeedsNoMaster) {
  const LaunchInfo li = info_of({{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"LOCAL_RANK", "0"}, {"LOCAL_WORLD_SIZE", "1"}});
  EXPECT_FALSE(li.multi());
  EXPECT_EQ(li.master_port, 0);
}

TEST(Launch, MalformedTorchrunValuesNameTheVariable) {
  for (const char* bad : {"abc", " 3", "3 ", "+3", "3x", "0x3", "3.0", "99999999999999999999"})
    expect_refused(with(kTorchrun, {{"RANK", bad}}), {"RANK", bad});
  expect_refused(with(kTorchrun, {{"RANK", "-1"}}), {"RANK=-1", "out of range"});
  expect_refused(with(kTorchrun, {{"RANK", "8"}}), {"RANK=8", "WORLD_SIZE=8"});
  expect_refused(with(kTorchrun, {{"WORLD_SIZE", "0"}}), {"WORLD_SIZE=0"});
  expect_refused(with(kTorchrun, {{"LOCAL_RANK", "2"}}), {"LOCAL_RANK=2", "LOCAL_WORLD_SIZE=2"});
  expect_refused(with(kTorchrun, {{"LOCAL_WORLD_SIZE", "9"}}), {"LOCAL_WORLD_SIZE=9", "WORLD_SIZE=8"});
  for (const char* bad : {"0", "65536", "-5", "http", "29500a"})
    expect_refused(with(kTorchrun, {{"MASTER_PORT", bad}}), {"MASTER_PORT", bad});
  EXPECT_EQ(info_of(with(kTorchrun, {{"MASTER_PORT", "65535"}})).master_port, 65535);
  EXPECT_EQ(info_of(with(kTorchrun, {{"MASTER_PORT", "1"}})).master_port, 1);
}

TEST(Launch, PartialSetsAreRefused) {
  expect_refused({{"RANK", "0"}}, {"RANK is set", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"});
  expect_refused(without(kTorchrun, "WORLD_SIZE"), {"WORLD_SIZE is not"});
  expect_refused(without(kTorchrun, "LOCAL_WORLD_SIZE"), {"LOCAL_WORLD_SIZE is not"});
  expect_refused({{"LOCAL_RANK", "0"}}, {"LOCAL_RANK is set"});
  expect_refused(without(kTorchrun, "MASTER_ADDR"), {"MASTER_ADDR is not set"});
  expect_refused(without(kTorchrun, "MASTER_PORT"), {"MASTER_PORT is not set"});
}

const Vars kSlurm = {{"SLURM_JOB_ID", "123456"},      {"SLURM_STEP_ID", "0"},
                     {"SLURM_PROCID", "5"},           {"SLURM_NTASKS", "8"},
                     {"SLURM_LOCALID", "1"},          {"SLURM_NODEID", "1"},
                     {"SLURM_STEP_TASKS_PER_NODE", "4(x2)"}, {"SLURM_STEP_NODELIST", "gpu[07-08]"},
                     {"SLURM_JOB_NODELIST", "gpu[01-16]"},   {"SLURM_NTASKS_PER_NODE", "4"}};

TEST(Launch, Slurm) {
  const LaunchInfo li = info_of(kSlurm);
  EXPECT_EQ(li.launcher, "slurm");
  EXPECT_EQ(li.rank, 5);
  EXPECT_EQ(li.world_size, 8);
  EXPECT_EQ(li.local_rank, 1);
  EXPECT_EQ(li.local_world_size, 4);
  EXPECT_EQ(li.master_addr, "gpu07");  // the step's first node, not the job's
  EXPECT_EQ(li.master_port, 20000 + 123456 % 10000);
  EXPECT_EQ(li.run_id, "123456.0");
}

TEST(Launch, SlurmLayoutAndFallbacks) {
  // MASTER_ADDR / MASTER_PORT win.
  const LaunchInfo m = info_of(with(kSlurm, {{"MASTER_ADDR", "head"}, {"MASTER_PORT", "4000"}}));
  EXPECT_EQ(m.master_addr, "head");
  EXPECT_EQ(m.master_port, 4000);
  // The job's node list when the step's is absent.
  EXPECT_EQ(info_of(without(kSlurm, "SLURM_STEP_NODELIST")).master_addr, "gpu01");
  // Uneven steps: this node's entry of SLURM_STEP_TASKS_PER_NODE.
  const Vars uneven = with(kSlurm, {{"SLURM_STEP_TASKS_PER_NODE", "5,3"}, {"SLURM_LOCALID", "2"}});
  EXPECT_EQ(info_of(uneven).local_world_size, 3);
  EXPECT_EQ(info_of(with(uneven, {{"SLURM_NODEID", "0"}})).local_world_size, 5);
  EXPECT_EQ(info_of(with(kSlurm, {{"SLURM_STEP_TASKS_PER_NODE", "2(x2),4"}, {"SLURM_NODEID", "2"}})).local_world_size, 4);
  // SLURM_NTASKS_PER_NODE when the step's layout is absent.
  EXPECT_EQ(info_of(with(without(kSlurm, "SLURM_STEP_TASKS_PER_NODE"), {{"SLURM_NTASKS_PER_NODE", "6"}})).local_world_size, 6);
  // The derived port: the same for every task of a step, in 20000..29999, another for another step.
  const LaunchInfo step1 = info_of(with(kSlurm, {{"SLURM_STEP_ID", "1"}}));
  EXPECT_EQ(step1.master_port, info_of(with(kSlurm, {{"SLURM_STEP_ID", "1"}, {"SLURM_PROCID", "0"}})).master_port);
  EXPECT_NE(step1.master_port, info_of(kSlurm).master_port);
  EXPECT_EQ(step1.run_id, "123456.1");
  for (const char* job : {"0", "9999", "10000", "29999", "4294967295", "123456789012"}) {
    const int port = info_of(with(kSlurm, {{"SLURM_JOB_ID", job}})).master_port;
    EXPECT_GE(port, 20000) << job;
    EXPECT_LE(port, 29999) << job;
  }
}

TEST(Launch, TorchrunWinsOverSlurm) {
  Vars both = kSlurm;
  for (const auto& [k, v] : kTorchrun) both[k] = v;
  const LaunchInfo li = info_of(both);
  EXPECT_EQ(li.launcher, "torchrun");
  EXPECT_EQ(li.rank, 3);
  EXPECT_EQ(li.master_addr, "10.0.0.7");
}

TEST(Launch, SlurmBatchScriptIsOneProcess) {
  // sbatch's script (no srun step) and salloc's interactive step are one process, whatever SLURM_NTASKS says.
  EXPECT_EQ(info_of(without(kSlurm, "SLURM_STEP_ID")).launcher, "single");
  EXPECT_EQ(info_of(with(kSlurm, {{"SLURM_STEP_ID", "4294967291"}})).launcher, "single");
  EXPECT_EQ(info_of(with(kSlurm, {{"SLURM_STEP_ID", "4294967290"}})).launcher, "single");
}

TEST(Launch, MalformedSlurmValuesNameTheVariable) {
  expect_refused(with(kSlurm, {{"SLURM_NTASKS", "eight"}}), {"SLURM_NTASKS", "eight"});
  expect_refused(with(kSlurm, {{"SLURM_PROCID", "8"}}), {"SLURM_PROCID=8", "SLURM_NTASKS=8"});
  expect_refused(with(kSlurm, {{"SLURM_LOCALID", "4"}}), {"SLURM_LOCALID=4"});
  expect_refused(with(kSlurm, {{"SLURM_STEP_ID", "batch"}}), {"SLURM_STEP_ID", "batch"});
  for (const char* bad : {"4(x", "4(x2", "(x2)", "4,,2", "x", ""})
    if (*bad) expect_refused(with(kSlurm, {{"SLURM_STEP_TASKS_PER_NODE", bad}}), {"SLURM_STEP_TASKS_PER_NODE"});
  expect_refused(with(kSlurm, {{"SLURM_NODEID", "2"}}), {"SLURM_NODEID=2"});
  expect_refused(without(kSlurm, "SLURM_LOCALID"), {"SLURM_LOCALID is not"});
  expect_refused(without(kSlurm, "SLURM_NTASKS"), {"SLURM_NTASKS is not"});
  expect_refused(with(kSlurm, {{"SLURM_STEP_NODELIST", "gpu[07-08"}}), {"SLURM_STEP_NODELIST", "gpu[07-08"});
  expect_refused(with(kSlurm, {{"SLURM_JOB_ID", "x1"}}), {"SLURM_JOB_ID", "MASTER_PORT"});
  expect_refused(with(kSlurm, {{"MASTER_PORT", "0"}}), {"MASTER_PORT"});
  Vars no_list = without(without(kSlurm, "SLURM_STEP_NODELIST"), "SLURM_JOB_NODELIST");
  expect_refused(no_list, {"MASTER_ADDR"});
  EXPECT_EQ(info_of(with(no_list, {{"MASTER_ADDR", "h"}})).master_addr, "h");
}

TEST(Launch, FirstSlurmHost) {
  EXPECT_EQ(first_slurm_host("a"), "a");
  EXPECT_EQ(first_slurm_host("a,b"), "a");
  EXPECT_EQ(first_slurm_host("node[01-04,07]"), "node01");
  EXPECT_EQ(first_slurm_host("node[07,01-04]"), "node07");
  EXPECT_EQ(first_slurm_host("gpu[1-2]-ib,cpu3"), "gpu1-ib");
  EXPECT_EQ(first_slurm_host("rack1-node[003-005]"), "rack1-node003");
  EXPECT_EQ(first_slurm_host("r[1-2]n[08-09],x"), "r1n08");
  EXPECT_EQ(first_slurm_host("node[5],other[1-3]"), "node5");
  EXPECT_EQ(first_slurm_host("host-a.example.org"), "host-a.example.org");
  for (const char* bad : {"", ",a", "node[01-04", "node]", "node[a-b]", "node[]", "node[[1]]", "[1-2"}) {
    try {
      const std::string h = first_slurm_host(bad);
      ADD_FAILURE() << "'" << bad << "' gave '" << h << "'";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("'" + std::string(bad) + "'"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace natsl::dist
