// Checkpoint directories: atomic publication, keep-last-k, and what resume does with a write that was
// killed half way or a checkpoint damaged afterwards.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "trainers/io/checkpoint.h"
#include "tests/test_util.h"
#include "tests/trainers/io/checkpoint_test_util.h"
#include "tests/trainers/trainer_test_util.h"

namespace natsl {
namespace {

namespace fs = std::filesystem;
using namespace testing;  // natsl::testing: the helpers of checkpoint_test_util.h, trainer_test_util.h

CheckpointWrite make_checkpoint(int64_t step) {
  CheckpointWrite ck;
  ck.step = step;
  ck.model = {{"a.weight", testing::randn({4, 3}, uint64_t(step), DType::f32)},
              {"b.weight", testing::randn({5}, uint64_t(step) + 100, DType::f32)},
              {"c.weight", testing::randn({2, 2}, uint64_t(step) + 200, DType::f32)}};
  ck.optimizer = {{"exp_avg.a.weight", testing::randn({4, 3}, uint64_t(step) + 300, DType::f32)},
                  {"exp_avg_sq.a.weight", testing::randn({4, 3}, uint64_t(step) + 400, DType::f32, 0.01)}};
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

// One flipped byte in the weights or in the optimizer moments, which the safetensors header cannot notice:
// the file's XXH3-64 no longer matches state.json. resume=auto skips it with a warning naming the file; given
// explicitly, it is an InputError naming the file.
TEST(Checkpoint, FlippedByteInWeightsOrMomentsIsDetected) {
  for (const char* file : {"model.safetensors", "optimizer.safetensors"}) {
    SCOPED_TRACE(file);
    TempDir dir;
    save_checkpoint(dir.str(), make_checkpoint(1), 5);
    const std::string two = save_checkpoint(dir.str(), make_checkpoint(2), 5);
    ASSERT_EQ(open_error(two), "");
    const std::string path = two + "/" + file;
    flip_byte_from_end(path, 7);
    SafeTensorsReader still_parses(path);  // the damage is invisible to the format's own checks

    CheckpointScan scan = find_latest_checkpoint(dir.str());
    ASSERT_TRUE(scan.latest);
    EXPECT_EQ(*scan.latest, dir / "checkpoints/step_000001");
    ASSERT_EQ(scan.warnings.size(), 1u);
    EXPECT_NE(scan.warnings[0].find(path), std::string::npos) << scan.warnings[0];
    EXPECT_NE(scan.warnings[0].find("checksum"), std::string::npos) << scan.warnings[0];
    std::string e = open_error(two);
    EXPECT_NE(e.find(path), std::string::npos) << e;
    EXPECT_NE(e.find("checksum"), std::string::npos) << e;

    flip_byte_from_end(path, 7);  // flipped back: valid again
    EXPECT_EQ(open_error(two), "");
  }
}

TEST(Checkpoint, StateRecordsAChecksumPerTensorFile) {
  TempDir dir;
  const std::string one = save_checkpoint(dir.str(), make_checkpoint(1), 5);
  CheckpointReader r(one);
  EXPECT_EQ(r.state().at("format_version"), kGatheredCheckpointFormatVersion);
  EXPECT_TRUE(r.warnings().empty());
  std::set<std::string> sums;
  for (const char* f : {"model.safetensors", "optimizer.safetensors"}) {
    const auto& rec = r.state().at("files").at(f);
    ASSERT_TRUE(rec.at("xxh3_64").is_string()) << f;
    EXPECT_EQ(rec.at("xxh3_64").get<std::string>().size(), 16u) << f;
    sums.insert(rec.at("xxh3_64").get<std::string>());
  }
  EXPECT_EQ(sums.size(), 2u);
  // A state.json that lost its checksum is refused (only format version 1 has none).
  nlohmann::json st = r.state();
  st["files"]["model.safetensors"].erase("xxh3_64");
  testing::write_text(one + "/state.json", st.dump());
  EXPECT_NE(open_error(one).find("xxh3_64"), std::string::npos) << open_error(one);
}

// Checkpoints written before checksums (format version 1) still open, with a warning that says so.
TEST(Checkpoint, FormatVersion1WithoutChecksumsOpensWithAWarning) {
  TempDir dir;
  const std::string one = save_checkpoint(dir.str(), make_checkpoint(1), 5);
  nlohmann::json st = CheckpointReader(one).state();
  st["format_version"] = 1;
  for (const char* f : {"model.safetensors", "optimizer.safetensors"}) st["files"][f].erase("xxh3_64");
  testing::write_text(one + "/state.json", st.dump());
  CheckpointReader r(one);
  ASSERT_EQ(r.warnings().size(), 1u);
  EXPECT_NE(r.warnings()[0].find("cannot be verified"), std::string::npos) << r.warnings()[0];
  st["format_version"] = kCheckpointFormatVersion + 1;
  testing::write_text(one + "/state.json", st.dump());
  EXPECT_NE(open_error(one).find("format version 4 is not supported"), std::string::npos) << open_error(one);
}

// keep_last counts valid checkpoints only: a damaged newest one never pushes the valid older ones out, and
// nothing newer than a kept valid checkpoint is deleted.
TEST(Checkpoint, DamagedCheckpointsNeverPushValidOnesOut) {
  TempDir dir;
  for (int64_t s : {10, 20, 30}) save_checkpoint(dir.str(), make_checkpoint(s), 2);
  EXPECT_EQ(list_checkpoint_steps(dir.str()), (std::vector<int64_t>{20, 30}));
  flip_byte_from_end(dir / "checkpoints/step_000030/model.safetensors", 3);
  save_checkpoint(dir.str(), make_checkpoint(40), 2);
  // Valid: 40 and 20 (the two kept); 30 is damaged and newer than 20, so it stays too.
  EXPECT_EQ(list_checkpoint_steps(dir.str()), (std::vector<int64_t>{20, 30, 40}));
  fs::resize_file(dir / "checkpoints/step_000040/optimizer.safetensors", 100);
  save_checkpoint(dir.str(), make_checkpoint(50), 2);
  EXPECT_EQ(list_checkpoint_steps(dir.str()), (std::vector<int64_t>{20, 30, 40, 50}));
  EXPECT_EQ(*find_latest_checkpoint(dir.str()).latest, dir / "checkpoints/step_000050");
  // Two valid ones newer than every damaged one: the rest goes.
  save_checkpoint(dir.str(), make_checkpoint(60), 2);
  EXPECT_EQ(list_checkpoint_steps(dir.str()), (std::vector<int64_t>{50, 60}));
}

// state.json's counters are untrusted: a float, a string or an integer out of range is one InputError naming
// the file and the field, never a silent cast (nlohmann casts 9.2e22 to int64 with undefined behaviour; the
// checkpoint fuzzer found it in CI).
TEST(Checkpoint, CountersThatAreNotIntegersOfTheirRangeAreRefused) {
  TempDir dir;
  CheckpointWrite ck = make_checkpoint(3);
  ck.trainer = {{"optimizer_steps", 3}, {"skipped_steps", 0}, {"tokens_seen", 4096}};
  const std::string path = save_checkpoint(dir.str(), ck, 1);
  {
    CheckpointReader r(path);
    const TrainerCounters c = read_trainer_counters(r, /*required=*/true);
    EXPECT_EQ(c.optimizer_steps, 3);
    EXPECT_EQ(c.skipped_steps, 0);
    EXPECT_EQ(c.tokens_seen, 4096);
    EXPECT_EQ(c.nonfinite_streak, 0);
  }
  const std::string state_path = path + "/state.json";
  nlohmann::json good;
  std::ifstream(state_path) >> good;
  for (const char* bad : {"9.2e22", "1.5", "\"3\"", "9223372036854775808", "true", "null", "[1]"}) {
    SCOPED_TRACE(bad);
    nlohmann::json st = good;
    st["trainer"]["optimizer_steps"] = nlohmann::json::parse(bad);
    testing::write_text(state_path, st.dump());
    CheckpointReader r(path);
    try {
      read_trainer_counters(r, /*required=*/false);
      ADD_FAILURE() << "read optimizer_steps = " << bad;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(state_path), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("trainer.optimizer_steps"), std::string::npos) << e.what();
    }
  }
  // Resume needs the counters; inspect prints -1 for an absent one.
  nlohmann::json st = good;
  st["trainer"].erase("skipped_steps");
  testing::write_text(state_path, st.dump());
  CheckpointReader r(path);
  EXPECT_EQ(read_trainer_counters(r, /*required=*/false).skipped_steps, -1);
  EXPECT_THROW(read_trainer_counters(r, /*required=*/true), InputError);
}

// A checkpoint holding NaN or Inf (weights or moments) is refused before anything is written.
TEST(Checkpoint, NonFiniteTensorsAreNeverWritten) {
  TempDir dir;
  save_checkpoint(dir.str(), make_checkpoint(1), 1);
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  for (int which = 0; which < 3; ++which) {
    SCOPED_TRACE(which);
    CheckpointWrite ck = make_checkpoint(2);
    std::string name;
    if (which == 0) {
      ck.model[1].second.fill_(nan);
      name = "b.weight";
    } else if (which == 1) {
      ck.optimizer[1].second.view({12}).slice(0, 5, 6).fill_(inf);
      name = "exp_avg_sq.a.weight";
    } else {
      ck.optimizer.emplace_back("exp_avg.h", Tensor::full({3}, -inf, DType::bf16));
      name = "exp_avg.h";
    }
    try {
      save_checkpoint(dir.str(), ck, 1);
      ADD_FAILURE() << "wrote a non-finite checkpoint";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("'" + name + "'"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("NaN or Inf"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(dir / "checkpoints/step_000002"));
    EXPECT_FALSE(fs::exists(dir / "checkpoints/.tmp-step_000002"));
    EXPECT_EQ(list_checkpoint_steps(dir.str()), (std::vector<int64_t>{1}));
  }
}

}  // namespace
}  // namespace natsl
