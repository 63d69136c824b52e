// Checkpoint directories: atomic publication, keep-last-k, and what resume does with a write that was
// killed half way or a checkpoint damaged afterwards.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>

#include "core/error.h"
#include "trainers/checkpoint.h"
#include "../test_util.h"
#include "trainer_test_util.h"

namespace natsl {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

CheckpointWrite make_checkpoint(int64_t step) {
  CheckpointWrite ck;
  ck.step = step;
  ck.model = {{"a.weight", testing::randn({4, 3}, uint64_t(step), DType::f32)},
              {"b.weight", testing::randn({5}, uint64_t(step) + 100, DType::f32)},
              {"c.weight", testing::randn({2, 2}, uint64_t(step) + 200, DType::f32)}};
  ck.optimizer = {{"exp_avg.a.weight", Tensor::zeros({4, 3})}};
  ck.trainer = {{"note", "test"}, {"step_seen", step}};
  return ck;
}

TEST(Checkpoint, WritesAndReadsBack) {
  TempDir dir;
  CheckpointWrite ck = make_checkpoint(7);
  std::string path = save_checkpoint(dir.str(), ck, 3);
  EXPECT_EQ(fs::path(path).filename(), "step_000007");
  CheckpointReader r(path);
  EXPECT_EQ(r.step(), 7);
  EXPECT_EQ(r.trainer().at("step_seen"), 7);
  EXPECT_EQ(r.state().at("format"), kCheckpointFormat);
  Tensor a = r.model().read("a.weight");
  EXPECT_EQ(a.to_vector<float>(), ck.model[0].second.to_vector<float>());
  EXPECT_EQ(r.model().metadata().at("format"), "pt");
  EXPECT_FALSE(fs::exists(dir / "checkpoints/.tmp-step_000007"));
}

TEST(Checkpoint, KeepsTheLastK) {
  TempDir dir;
  for (int64_t s : {10, 20, 30, 40}) save_checkpoint(dir.str(), make_checkpoint(s), 2);
  EXPECT_EQ(list_checkpoint_steps(dir.str()), (std::vector<int64_t>{30, 40}));
  EXPECT_EQ(*find_latest_checkpoint(dir.str()).latest, dir / "checkpoints/step_000040");
}

TEST(Checkpoint, NoCheckpointDirectory) {
  TempDir dir;
  CheckpointScan scan = find_latest_checkpoint(dir.str());
  EXPECT_FALSE(scan.latest);
  EXPECT_TRUE(scan.warnings.empty());
}

TEST(Checkpoint, WriteKilledBetweenTensorsIsNotPicked) {
  TempDir dir;
  save_checkpoint(dir.str(), make_checkpoint(1), 5);
  save_checkpoint(dir.str(), make_checkpoint(2), 5);
  // A child process starts checkpoint 3 and dies right after the first tensor of model.safetensors.
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    CheckpointWrite ck = make_checkpoint(3);
    ck.after_model_tensor = [](size_t i) {
      if (i == 0) ::_exit(0);
    };
    save_checkpoint(dir.str(), ck, 5);
    ::_exit(1);  // not reached: the hook ends the process
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ASSERT_TRUE(fs::exists(dir / "checkpoints/.tmp-step_000003/model.safetensors"));

  CheckpointScan scan = find_latest_checkpoint(dir.str());
  ASSERT_TRUE(scan.latest);
  EXPECT_EQ(*scan.latest, dir / "checkpoints/step_000002");
  ASSERT_EQ(scan.warnings.size(), 1u);
  EXPECT_NE(scan.warnings[0].find(".tmp-step_000003"), std::string::npos) << scan.warnings[0];

  // Given explicitly, the half-written directory is refused with the missing file named.
  try {
    CheckpointReader r(dir / "checkpoints/.tmp-step_000003");
    ADD_FAILURE() << "opened a half-written checkpoint";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("state.json"), std::string::npos) << e.what();
  }
  // The next save of that step replaces the leftover.
  save_checkpoint(dir.str(), make_checkpoint(3), 5);
  EXPECT_FALSE(fs::exists(dir / "checkpoints/.tmp-step_000003"));
  EXPECT_EQ(*find_latest_checkpoint(dir.str()).latest, dir / "checkpoints/step_000003");
}

TEST(Checkpoint, DamagedCheckpointIsSkippedOrRefused) {
  TempDir dir;
  save_checkpoint(dir.str(), make_checkpoint(1), 5);
  std::string two = save_checkpoint(dir.str(), make_checkpoint(2), 5);
  // Truncate the newest model file: resume falls back to step 1, and opening it names the file.
  fs::resize_file(two + "/model.safetensors", fs::file_size(two + "/model.safetensors") - 4);
  CheckpointScan scan = find_latest_checkpoint(dir.str());
  EXPECT_EQ(*scan.latest, dir / "checkpoints/step_000001");
  ASSERT_EQ(scan.warnings.size(), 1u);
  EXPECT_NE(scan.warnings[0].find(two + "/model.safetensors"), std::string::npos) << scan.warnings[0];
  try {
    CheckpointReader r(two);
    ADD_FAILURE() << "opened a truncated checkpoint";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(two + "/model.safetensors"), std::string::npos) << e.what();
  }

  // A state.json that is not JSON, or of another format.
  std::string one = dir / "checkpoints/step_000001";
  testing::write_text(one + "/state.json", "{not json");
  EXPECT_THROW(CheckpointReader r(one), InputError);
  testing::write_text(one + "/state.json", R"({"format": "other", "step": 1, "trainer": {}})");
  try {
    CheckpointReader r(one);
    ADD_FAILURE();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(one + "/state.json"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(find_latest_checkpoint(dir.str()).latest);
  EXPECT_THROW(CheckpointReader r(dir / "nowhere"), InputError);
}

}  // namespace
}  // namespace natsl
