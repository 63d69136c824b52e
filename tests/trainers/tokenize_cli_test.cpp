// `natsl tokenize` as a program: its options and messages, and resume after real kills (SIGKILL at moments
// picked by how far the progress file has grown) to the same bytes as a run never interrupted.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <thread>

#include <nlohmann/json.hpp>

#include "trainer_test_util.h"

namespace natsl {
namespace {

namespace fs = std::filesystem;
using testing::CommandResult;
using testing::read_text;
using testing::run_natsl;
using testing::TempDir;
using testing::write_text;

std::map<std::string, std::string> dir_bytes(const std::string& dir) {
  std::map<std::string, std::string> m;
  for (const auto& e : fs::directory_iterator(dir)) m[e.path().filename().string()] = read_text(e.path().string());
  return m;
}

size_t file_lines(const std::string& path) { return testing::count_lines(path); }

// Inputs: a JSONL file of many documents and a text file.
void write_inputs(const std::string& dir, int docs) {
  std::string jsonl;
  for (int i = 0; i < docs; ++i) {
    std::string text;
    for (int k = 0; k < 1 + i % 7; ++k) text += "document " + std::to_string(i) + " sentence " + std::to_string(k) + ". ";
    jsonl += nlohmann::json{{"text", text}, {"n", i}}.dump() + "\n";
  }
  write_text(dir + "/a.jsonl", jsonl);
  write_text(dir + "/b.txt", jsonl.substr(0, 20000));
}

TEST(TokenizeCli, HelpSummaryAndBadLines) {
  CommandResult r = run_natsl("tokenize --help");
  ASSERT_EQ(r.exit_code, 0);
  for (const char* o : {"--threads", "--text-field", "--bad-lines", "--tokenizer-model", "--no-eos", "--overwrite"})
    EXPECT_NE(r.output.find(o), std::string::npos) << o << " missing in:\n" << r.output;

  TempDir dir;
  write_text(dir / "in/a.jsonl", "{\"text\": \"one\"}\n{\"text\": \"two\"\n{\"text\": \"three\"}\n");
  r = run_natsl("tokenize " + dir / "in " + dir / "out/x --quiet");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find(dir / "in/a.jsonl:2: the line is not valid JSON"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--bad-lines skip"), std::string::npos) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;

  r = run_natsl("tokenize " + dir / "in " + dir / "out/x --quiet --bad-lines skip --overwrite --threads 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("warning: " + dir / "in/a.jsonl:2: the line is not valid JSON"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("2 document(s) from 1 input(s)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("1 bad line(s) skipped"), std::string::npos) << r.output;
  const nlohmann::json m = nlohmann::json::parse(read_text(dir / "out/x.manifest.json"));
  EXPECT_EQ(m["totals"]["skipped_lines"], 1);
  r = run_natsl("tokenize " + dir / "in " + dir / "out/x --quiet --bad-lines skip --threads 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("up to date"), std::string::npos) << r.output;
  r = run_natsl("tokenize " + dir / "in " + dir / "out/x --tokenizer-kind sentencepiece");
  EXPECT_EQ(r.exit_code, 2) << r.output;
}

// kill -9 at growing points of a run (while shards, records or the manifest are written), a damaged kept
// shard on top, then a run to the end: the output is the bytes of a run never interrupted.
TEST(TokenizeCli, KilledRunsResumeToIdenticalOutput) {
  TempDir dir;
  write_inputs(dir / "in", 12000);
  const std::string common = " --max-tokens-per-shard 3001 --block-bytes 8192 --val-fraction 0.05 --quiet";
  CommandResult ref = run_natsl("tokenize " + dir / "in " + dir / "ref/x --threads 1" + common);
  ASSERT_EQ(ref.exit_code, 0) << ref.output;
  const auto want = dir_bytes(dir / "ref");
  ASSERT_GT(want.size(), 100u);

  fs::create_directories(dir / "out");
  const std::string progress = dir / "out/x.progress.jsonl";
  std::vector<std::string> args = {"tokenize", dir / "in", dir / "out/x", "--threads", "2", "--max-tokens-per-shard",
                                   "3001", "--block-bytes", "8192", "--val-fraction", "0.05", "--quiet"};
  int kills = 0;
  bool last_killed = false;
  for (size_t target : {3u, 40u, 41u, 120u, 200u, 330u}) {
    const pid_t pid = testing::spawn_natsl(args, dir / "log.txt");
    ASSERT_GT(pid, 0);
    bool exited = false;
    for (;;) {
      int status = 0;
      if (waitpid(pid, &status, WNOHANG) == pid) {
        exited = true;
        break;
      }
      if (fs::exists(progress) && file_lines(progress) >= target) break;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    last_killed = !exited;
    if (exited) break;
    ::kill(pid, SIGKILL);
    testing::wait_exit_code(pid);
    ++kills;
    if (kills == 3 && fs::exists(dir / "out/x.train.000001.bin")) {
      // A kept shard damaged while the run was stopped: found by its checksum and written again.
      std::string bytes = read_text(dir / "out/x.train.000001.bin");
      bytes[bytes.size() / 2] ^= 0x5A;
      write_text(dir / "out/x.train.000001.bin", bytes);
    }
  }
  EXPECT_GE(kills, 2) << "the runs ended before they could be killed; make the input larger";
  std::printf("killed %d runs with SIGKILL before the last one\n", kills);
  CommandResult last = run_natsl(
      "tokenize " + dir / "in " + dir / "out/x --threads 2 --max-tokens-per-shard 3001 --block-bytes 8192 --val-fraction 0.05 --quiet");
  ASSERT_EQ(last.exit_code, 0) << last.output;
  EXPECT_NE(last.output.find(last_killed ? "resumed" : "up to date"), std::string::npos) << last.output;
  const auto got = dir_bytes(dir / "out");
  EXPECT_EQ(got.size(), want.size());
  for (const auto& [name, bytes] : want) {
    auto it = got.find(name);
    ASSERT_NE(it, got.end()) << name << " missing after resume";
    EXPECT_TRUE(it->second == bytes) << name << " differs after resume";
  }

  // Resuming with other options is refused, naming the progress file and what differs.
  fs::create_directories(dir / "o2");
  write_text(dir / "o2/x.progress.jsonl", "{\"natsl_tokenize_progress\": 1}\n");
  CommandResult other = run_natsl("tokenize " + dir / "in " + dir / "o2/x --quiet");
  EXPECT_EQ(other.exit_code, 2) << other.output;
  EXPECT_NE(other.output.find("x.progress.jsonl"), std::string::npos) << other.output;
  EXPECT_NE(other.output.find("--overwrite"), std::string::npos) << other.output;
}

}  // namespace
}  // namespace natsl
