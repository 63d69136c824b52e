// `natsl train --nproc N`: refused below 1 and under another launcher (one line, exit 2), the config checked
// once before any rank starts, and a run of one rank through the launcher.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "trainer_test_util.h"

namespace natsl {
namespace {

using testing::CommandResult;
using testing::expect_one_line_input_error;
using testing::kSmallConfig;
using testing::run_natsl;
using testing::TempDir;
using testing::write_text;

TEST(Cli, NprocBelowOneIsRefused) {
  TempDir dir;
  write_text(dir / "ok.yaml", kSmallConfig);
  expect_one_line_input_error(run_natsl("train --nproc 0 " + dir / "ok.yaml"), {"--nproc 0", "1 or more"});
  expect_one_line_input_error(run_natsl("train --nproc -3 " + dir / "ok.yaml"), {"--nproc -3"});
  expect_one_line_input_error(run_natsl("train --nproc two " + dir / "ok.yaml"), {"--nproc"});
}

TEST(Cli, NprocIsRefusedUnderAnotherLauncher) {
  TempDir dir;
  write_text(dir / "ok.yaml", kSmallConfig);
  expect_one_line_input_error(run_natsl("train --nproc 2 " + dir / "ok.yaml", "RANK=1 WORLD_SIZE=2 "),
                            {"RANK=1 is already set", "drop --nproc"});
  expect_one_line_input_error(run_natsl("train --nproc 2 " + dir / "ok.yaml", "WORLD_SIZE=2 "), {"WORLD_SIZE=2"});
  const std::string srun =
      "SLURM_JOB_ID=77 SLURM_STEP_ID=0 SLURM_PROCID=1 SLURM_NTASKS=2 SLURM_LOCALID=0 "
      "SLURM_STEP_TASKS_PER_NODE='1(x2)' SLURM_NODEID=1 SLURM_STEP_NODELIST='n[1-2]' ";
  expect_one_line_input_error(run_natsl("train --nproc 2 " + dir / "ok.yaml", srun),
                            {"rank 1 of 2 started by slurm", "drop --nproc"});
  EXPECT_FALSE(std::filesystem::exists(dir / "runs"));
}

TEST(Cli, NprocChecksTheConfigOnce) {
  TempDir dir;
  expect_one_line_input_error(run_natsl("train --nproc 3 " + dir / "missing.yaml"), {dir / "missing.yaml", "does not exist"});
  write_text(dir / "ok.yaml", kSmallConfig);
  expect_one_line_input_error(run_natsl("train " + dir / "ok.yaml --nproc 3 train.stpes=3"), {"train.stpes"});
}

TEST(Cli, NprocRunsTheRanks) {
  TempDir dir;
  write_text(dir / "ok.yaml", kSmallConfig);
  const CommandResult r = run_natsl("train --nproc 1 " + dir / "ok.yaml train.out_dir=" + dir / "run");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("natsl: started 1 rank (pid "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("done: step 4/4"), std::string::npos) << r.output;
  EXPECT_TRUE(std::filesystem::exists(dir / "run/metrics.jsonl"));
}

TEST(Cli, NprocInHelp) {
  const CommandResult r = run_natsl("train --help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.output.find("--nproc"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("torchrun --nproc-per-node=N --no-python natsl train"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace natsl
