// The `natsl` program's exit codes and messages: 0 ok, 2 bad input (config, override, file, checkpoint,
// command line) with one line naming the key/line/file, and working help, tokenize and inspect.
#include <gtest/gtest.h>

#include <csignal>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "trainers/io/checkpoint.h"

#include <nlohmann/json.hpp>

#include "trainers/io/checkpoint.h"
#include "trainer_test_util.h"

namespace natsl {
namespace {

using testing::CommandResult;
using testing::expect_one_line_input_error;
using testing::run_natsl;
using testing::TempDir;
using testing::write_text;

using testing::kSmallConfig;

TEST(Cli, ConfigErrorsExitTwoNamingKeyAndLine) {
  TempDir dir;
  write_text(dir / "unknown.yaml", "train:\n  steps: 3\n  setps: 4\n");
  expect_one_line_input_error(run_natsl("train " + dir / "unknown.yaml"),
                   {dir / "unknown.yaml:3", "train.setps", "did you mean 'train.steps'?"});

  write_text(dir / "type.yaml", "model:\n  hidden_size: big\n");
  expect_one_line_input_error(run_natsl("train " + dir / "type.yaml"), {dir / "type.yaml:2", "model.hidden_size", "an integer"});

  write_text(dir / "range.yaml", "train:\n  clip_grad_norm: -1\n");
  expect_one_line_input_error(run_natsl("train " + dir / "range.yaml"), {dir / "range.yaml:2", "train.clip_grad_norm", "out of range"});

  expect_one_line_input_error(run_natsl("train " + dir / "missing.yaml"), {dir / "missing.yaml", "does not exist"});

  write_text(dir / "ok.yaml", kSmallConfig);
  expect_one_line_input_error(run_natsl("train " + dir / "ok.yaml train.lr=fast"), {"train.lr=fast", "'train.lr' must be a number"});
  expect_one_line_input_error(run_natsl("train " + dir / "ok.yaml train.stpes=3"), {"did you mean 'train.steps'?"});
  expect_one_line_input_error(run_natsl("train " + dir / "ok.yaml nonsense"), {"'nonsense' is not an override KEY=VALUE"});
  expect_one_line_input_error(run_natsl("train " + dir / "ok.yaml train.device=cuda:7"), {"train.device", "cuda:7"});
  expect_one_line_input_error(run_natsl("train " + dir / "ok.yaml resume=" + dir / "nowhere"), {dir / "nowhere", "not a directory"});
}

TEST(Cli, CommandLineErrorsExitTwo) {
  expect_one_line_input_error(run_natsl(""), {"subcommand"});
  expect_one_line_input_error(run_natsl("fly"), {"fly"});
  expect_one_line_input_error(run_natsl("train"), {"config"});
  expect_one_line_input_error(run_natsl("train a.yaml --bogus"), {"--bogus"});
  expect_one_line_input_error(run_natsl("inspect /nonexistent/x"), {"/nonexistent/x", "does not exist"});
}

// The GDN kernels read no environment switch (their layouts are a GdnPlan argument, kernels/cuda/gdn/plan.h):
// the old timing switch NATSL_GDN_DIAG no longer stops a run.
TEST(Cli, IgnoresTheRemovedGdnTimingSwitch) {
  TempDir dir;
  write_text(dir / "ok.yaml", kSmallConfig);
  setenv("NATSL_GDN_DIAG", "2", 1);
  const CommandResult r = run_natsl("train " + dir / "ok.yaml train.out_dir=" + dir / "run");
  unsetenv("NATSL_GDN_DIAG");
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

TEST(Cli, EmptyOrNonMappingConfigIsBadInput) {
  TempDir dir;
  // Bounded, should the file be taken for a default config again (a default model trains for hours on a CPU).
  const std::string bound = " train.steps=1 train.warmup_steps=0 train.device=cpu";
  write_text(dir / "empty.yaml", "");
  expect_one_line_input_error(run_natsl("train " + dir / "empty.yaml train.out_dir=" + dir / "run" + bound),
                   {dir / "empty.yaml: the config file is empty"});
  write_text(dir / "comments.yaml", "# train:\n#   steps: 3\n");
  expect_one_line_input_error(run_natsl("train " + dir / "comments.yaml train.out_dir=" + dir / "run" + bound),
                   {dir / "comments.yaml", "holds only comments"});
  write_text(dir / "scalar.yaml", "natsl-tiny\n");
  expect_one_line_input_error(run_natsl("train " + dir / "scalar.yaml train.out_dir=" + dir / "run" + bound),
                   {dir / "scalar.yaml", "must be a mapping"});
  EXPECT_FALSE(std::filesystem::exists(dir / "run"));
}

// A train.out_dir that cannot hold a run is bad input naming the key and the system's reason, and a refused
// run leaves no directory behind.
TEST(Cli, UnusableOutDirIsBadInput) {
  namespace fs = std::filesystem;
  TempDir dir;
  write_text(dir / "ok.yaml", kSmallConfig);
  write_text(dir / "file", "x");
  expect_one_line_input_error(run_natsl("train " + dir / "ok.yaml train.out_dir=" + dir / "file/run"),
                   {"train.out_dir '" + dir / "file/run" + "'", "Not a directory"});
  expect_one_line_input_error(run_natsl("train " + dir / "ok.yaml train.out_dir=" + dir / "file"),
                   {"train.out_dir '" + dir / "file" + "'", "is a file"});
  // Set up fails after the directory was made (a data file that does not exist): the directory goes again.
  expect_one_line_input_error(run_natsl("train " + dir / "ok.yaml data.source=text data.text.train=" + dir / "none.bin" +
                             " train.out_dir=" + dir / "new/run"),
                   {dir / "none.bin"});
  EXPECT_FALSE(fs::exists(dir / "new"));

  // Read-only directories: root writes anyway, so run as nobody there.
  const std::string launcher = ::geteuid() == 0 ? "setpriv --reuid=65534 --regid=65534 --clear-groups " : "";
  if (!launcher.empty() && std::system("setpriv --reuid=65534 --regid=65534 --clear-groups true 2>/dev/null") != 0)
    GTEST_SKIP() << "running as root without setpriv: cannot test a read-only train.out_dir";
  fs::create_directories(dir / "ro");
  fs::permissions(dir / "ro", fs::perms::owner_read | fs::perms::owner_exec | fs::perms::group_read |
                                  fs::perms::group_exec | fs::perms::others_read | fs::perms::others_exec);
  expect_one_line_input_error(run_natsl("train " + dir / "ok.yaml train.out_dir=" + dir / "ro", launcher),
                   {"train.out_dir '" + dir / "ro" + "' is not writable", "Permission denied"});
  expect_one_line_input_error(run_natsl("train " + dir / "ok.yaml train.out_dir=" + dir / "ro/run", launcher),
                   {"train.out_dir '" + dir / "ro/run" + "' cannot be created", "Permission denied"});
  fs::permissions(dir / "ro", fs::perms::owner_all);
}

// A full disk under metrics.jsonl (/dev/full answers every write with ENOSPC): the run stops at once with a
// non-zero exit, after saving the weights in a checkpoint, and says so.
TEST(Cli, FullDiskForMetricsStopsTheRunAfterSavingACheckpoint) {
  namespace fs = std::filesystem;
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full";
  TempDir dir;
  write_text(dir / "ok.yaml", kSmallConfig);
  fs::create_directories(dir / "run");
  fs::create_symlink("/dev/full", dir / "run/metrics.jsonl");
  const CommandResult r = run_natsl("train " + dir / "ok.yaml train.out_dir=" + dir / "run train.ckpt_every=0");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_EQ(r.output.find("done:"), std::string::npos) << r.output;
  const std::string last = r.output.substr(r.output.rfind("natsl: error: "));
  for (const std::string& m : std::vector<std::string>{dir / "run/metrics.jsonl", "No space left on device", "step 1",
                              "saved the checkpoint " + dir / "run/checkpoints/step_000001", "resume=auto"})
    EXPECT_NE(last.find(m), std::string::npos) << "missing '" << m << "' in:\n" << r.output;
  CheckpointReader ck(dir / "run/checkpoints/step_000001");
  EXPECT_EQ(ck.step(), 1);
}

// A checkpoint that cannot be written (here `checkpoints` is a file) stops the run; the metrics so far stay.
TEST(Cli, FailedCheckpointWriteStopsTheRunKeepingTheMetrics) {
  TempDir dir;
  write_text(dir / "ok.yaml", kSmallConfig);
  write_text(dir / "run/checkpoints", "not a directory\n");
  const CommandResult r = run_natsl("train " + dir / "ok.yaml train.out_dir=" + dir / "run train.ckpt_every=2");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  const std::string last = r.output.substr(r.output.rfind("natsl: error: "));
  for (const std::string& m : std::vector<std::string>{"cannot write the checkpoint of step 2", dir / "run/checkpoints",
                              "metrics.jsonl holds steps 1..2", "no checkpoint of this run exists"})
    EXPECT_NE(last.find(m), std::string::npos) << "missing '" << m << "' in:\n" << r.output;
  EXPECT_EQ(testing::count_lines(dir / "run/metrics.jsonl"), 2u);
}

// Two runs into one out_dir: the second is refused while the first runs (its lock names its pid), and the
// first's metrics hold each step once.
TEST(Cli, ASecondRunIntoABusyOutDirIsRefused) {
  TempDir dir;
  write_text(dir / "ok.yaml", kSmallConfig);
  const std::string steps = "train.steps=1000000";
  const pid_t pid = testing::spawn_natsl({"train", dir / "ok.yaml", steps, "train.ckpt_every=0", "train.out_dir=" + dir / "run"},
                                         dir / "first.log");
  ASSERT_GT(pid, 0);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (testing::count_lines(dir / "run/metrics.jsonl") < 2 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  // stop_at_step bounds the second run should it not be refused.
  for (const char* resume : {"resume=auto", "resume=none"})
    expect_one_line_input_error(run_natsl("train " + dir / "ok.yaml " + steps + " train.stop_at_step=3 train.out_dir=" + dir / "run " + resume),
                     {"train.out_dir '" + dir / "run" + "' is in use by another natsl run (pid " + std::to_string(pid) + ")"});
  ::kill(pid, SIGTERM);
  ASSERT_EQ(testing::wait_exit_code(pid), 0) << testing::read_text(dir / "first.log");
  std::istringstream metrics(testing::read_text(dir / "run/metrics.jsonl"));
  int64_t expect = 1;
  for (std::string line; std::getline(metrics, line); ++expect)
    EXPECT_EQ(nlohmann::json::parse(line).at("step").get<int64_t>(), expect);
  // The lock went with its holder.
  const CommandResult again = run_natsl("train " + dir / "ok.yaml " + steps + " train.out_dir=" + dir / "run resume=auto "
                                        "train.stop_at_step=" + std::to_string(expect));
  EXPECT_EQ(again.exit_code, 0) << again.output;
}

TEST(Cli, HelpAndVersion) {
  CommandResult r = run_natsl("--help");
  EXPECT_EQ(r.exit_code, 0);
  for (const char* c : {"train", "eval", "tokenize", "inspect"}) EXPECT_NE(r.output.find(c), std::string::npos) << r.output;
  r = run_natsl("train --help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.output.find("train.stop_at_step"), std::string::npos) << r.output;
  r = run_natsl("tokenize --help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.output.find("--val-fraction"), std::string::npos) << r.output;
  r = run_natsl("--version");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.output.find("natsl "), std::string::npos) << r.output;
}

TEST(Cli, TrainEvalInspect) {
  TempDir dir;
  write_text(dir / "ok.yaml", kSmallConfig);
  CommandResult r = run_natsl("train " + dir / "ok.yaml train.out_dir=" + dir / "run");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("done: step 4/4"), std::string::npos) << r.output;
  EXPECT_TRUE(std::filesystem::exists(dir / "run/config.yaml"));
  EXPECT_EQ(testing::count_lines(dir / "run/metrics.jsonl"), 4u);

  // A fresh run into the same directory is refused before it writes anything: the earlier run's metrics
  // and checkpoints stay as they were.
  const std::string metrics_before = testing::read_text(dir / "run/metrics.jsonl");
  expect_one_line_input_error(run_natsl("train " + dir / "ok.yaml train.out_dir=" + dir / "run"),
                   {"train.out_dir", "already holds a run", "resume=auto"});
  EXPECT_EQ(testing::read_text(dir / "run/metrics.jsonl"), metrics_before);
  EXPECT_TRUE(std::filesystem::exists(dir / "run/checkpoints/step_000004/model.safetensors"));

  // The saved resolved config is itself a valid config that gives the same run settings.
  r = run_natsl("train " + dir / "run/config.yaml train.out_dir=" + dir / "run2 train.steps=1");
  EXPECT_EQ(r.exit_code, 0) << r.output;

  r = run_natsl("eval " + dir / "ok.yaml checkpoint=" + dir / "run/checkpoints/step_000004");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("eval at step 4: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("accuracy"), std::string::npos) << r.output;

  r = run_natsl("inspect " + dir / "run/checkpoints/step_000004");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("step 4"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("model.embeddings.weight"), std::string::npos) << r.output;

  // A checkpoint of another model is refused, naming the differing key.
  write_text(dir / "other.yaml", std::string(kSmallConfig) + "resume: " + dir / "run/checkpoints/step_000004" + "\n");
  expect_one_line_input_error(run_natsl("train " + dir / "other.yaml model.hidden_size=32 model.num_attn_heads=2"),
                   {"model.hidden_size", "resume with the same model"});

  // A corrupt checkpoint given explicitly names the file.
  std::filesystem::resize_file(dir / "run/checkpoints/step_000004/optimizer.safetensors", 10);
  expect_one_line_input_error(run_natsl("eval " + dir / "ok.yaml checkpoint=" + dir / "run/checkpoints/step_000004"),
                   {dir / "run/checkpoints/step_000004/optimizer.safetensors"});
}

// Found by tests/fuzz/fuzz_checkpoint_state: `natsl inspect` on a checkpoint whose state.json has a field of
// the wrong type ended as an internal error (exit 1) from a JSON type_error; it is bad input.
TEST(Cli, InspectOfAMalformedStateJsonIsBadInput) {
  TempDir dir;
  CheckpointWrite ck;
  ck.step = 3;
  ck.model = {{"w", Tensor::from_vector<float>({1.0f, 2.0f}, {2})}};
  ck.optimizer = {{"exp_avg.w", Tensor::zeros({2}, DType::f32)}};
  ck.trainer = {{"optimizer_steps", 3}, {"skipped_steps", 0}};
  const std::string ckpt = save_checkpoint(dir / "run", ck, 1);
  CommandResult r = run_natsl("inspect " + ckpt);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // What the error names: the file, and the field where natsl reads it as a checked integer.
  const std::pair<const char*, const char*> cases[] = {{"/natsl_version", "malformed field"},
                                                       {"/trainer/tokens_seen", "trainer.tokens_seen"}};
  for (const auto& [field, named] : cases) {
    nlohmann::json st = nlohmann::json::parse(testing::read_text(ckpt + "/state.json"));
    st[nlohmann::json::json_pointer(field)] = nlohmann::json::array({1});
    write_text(ckpt + "/state.json", st.dump());
    expect_one_line_input_error(run_natsl("inspect " + ckpt), {ckpt + "/state.json", named});
  }
}

TEST(Cli, TokenizeThenInspectAndTrainOnText) {
  TempDir dir;
  std::string text;
  for (int i = 0; i < 300; ++i) text += "the quick brown fox jumps over the lazy dog " + std::to_string(i) + "\n";
  write_text(dir / "a.txt", text);
  CommandResult r = run_natsl("tokenize " + dir / "a.txt " + dir / "tok/a --val-fraction 0.1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_natsl("inspect " + dir / "tok/a.train.000000.bin");
  ASSERT_EQ(r.exit_code, 0) << r.output;

  write_text(dir / "text.yaml", "model:\n  hidden_size: 16\n  num_layers: 1\n  num_attn_heads: 2\n  intermediate_size: 32\n"
                                "data:\n  source: text\n"
                                "train:\n  steps: 3\n  batch_size: 2\n  seq_len: 32\n  warmup_steps: 1\n"
                                "  eval_batches: 2\n  device: cpu\n");
  // A tokenize prefix: train and val shards found from it.
  r = run_natsl("train " + dir / "text.yaml data.text.train=" + dir / "tok/a train.out_dir=" + dir / "r1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("eval bpb"), std::string::npos) << r.output;
  // A plain text file: tokenized into the run directory, its tail held out.
  r = run_natsl("train " + dir / "text.yaml data.text.train=" + dir / "a.txt train.out_dir=" + dir / "r2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("eval bpb"), std::string::npos) << r.output;
  // Neither a file nor a prefix.
  expect_one_line_input_error(run_natsl("train " + dir / "text.yaml data.text.train=" + dir / "nothing train.out_dir=" + dir / "r3"),
                   {"data.text.train", dir / "nothing"});
  // A mixture source that is neither: named by its entry.
  expect_one_line_input_error(run_natsl("train " + dir / "text.yaml 'data.text.mix=[{path: " + dir / "a.txt" +
                             ", weight: 1}, {path: " + dir / "nothing" + ", weight: 1}]' train.out_dir=" + dir / "r4"),
                   {"data.text.mix[1].path", dir / "nothing"});
}

}  // namespace
}  // namespace natsl
