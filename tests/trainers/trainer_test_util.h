#pragma once
// Helpers for the trainers/ tests: a fresh temporary directory per test, small configs, writing small files,
// running the built `natsl` program and checking its one-line errors.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "trainers/config.h"

namespace natsl::testing {

// A directory unique to the running test, emptied at construction and removed at destruction.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::temp_directory_path() /
            ("natsl_trainers_" + std::string(info->test_suite_name()) + "_" + info->name() + "_" +
             std::to_string(::getpid()));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

// A one-layer attention model on MQAR that trains 4 steps in a fraction of a second: for tests of the
// program's behaviour (errors, sweeps), not of what it learns.
inline constexpr const char* kSmallConfig = R"(model:
  vocab_size: 64
  hidden_size: 16
  num_layers: 1
  num_attn_heads: 2
  intermediate_size: 32
data:
  mqar:
    num_kv_pairs: 2
train:
  steps: 4
  batch_size: 2
  seq_len: 16
  warmup_steps: 1
  log_every: 100
  eval_batches: 1
  device: cpu
)";

// The model and data of a run whose step takes about a millisecond (one attention layer, MQAR with 2 pairs),
// as YAML; a test appends its own `train:` section.
inline std::string millisecond_model_yaml(const std::string& name) {
  return "model:\n  name: " + name + R"(
  vocab_size: 64
  hidden_size: 16
  num_layers: 1
  layers: [attn]
  num_attn_heads: 2
  intermediate_size: 32
data:
  source: mqar
  mqar:
    num_kv_pairs: 2
)";
}

// The start of the `train:` section of the stop/resume and crash runs: `steps` steps of 4 rows of `seq_len`
// tokens in 2 micro-batches, lr 1e-2 after 3 warmup steps, no log lines; a test appends its own keys.
inline std::string resume_train_yaml(int64_t steps, int64_t seq_len) {
  return "train:\n  steps: " + std::to_string(steps) + "\n  batch_size: 4\n  seq_len: " + std::to_string(seq_len) +
         R"(
  grad_accum: 2
  warmup_steps: 3
  lr: 1.0e-2
  log_every: 1000
)";
}

// The same model in code, on the CPU, 16 tokens a row, no warmup and no evaluation, writing to `out_dir`; the
// caller sets the rest of train.* (steps, batch size, ...) and then calls validate_config.
inline RunConfig millisecond_run_config(const std::string& out_dir) {
  RunConfig c;
  c.model.vocab_size = 64;
  c.model.hidden_size = 16;
  c.model.num_layers = 1;
  c.model.layers = {"attn"};
  c.model.num_attn_heads = 2;
  c.model.intermediate_size = 32;
  c.data.mqar.num_kv_pairs = 2;
  c.train.seq_len = 16;
  c.train.warmup_steps = 0;
  c.train.device = "cpu";
  c.train.eval_batches = 0;
  c.train.out_dir = out_dir;
  return c;
}

// The message of the exception of type E that f throws ("" when it throws none).
template <class E = std::exception>
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "";
}

inline void write_text(const std::string& path, const std::string& text) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path) << text;
}

inline std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The InputError message of load_config(path, overrides), or "" when it loads.
inline std::string load_error(const std::string& path, const std::vector<std::string>& overrides = {}) {
  return error_of<InputError>([&] { load_config(path, overrides); });
}

// Writes `yaml` to `path` and checks that loading it (with `overrides`) fails with a message that holds every one
// of `parts` (the file and line, the key, the hint). Returns the message.
inline std::string expect_load_error(const std::string& path, const std::string& yaml,
                                     const std::vector<std::string>& parts,
                                     const std::vector<std::string>& overrides = {}) {
  write_text(path, yaml);
  const std::string e = load_error(path, overrides);
  for (const std::string& part : parts) EXPECT_NE(e.find(part), std::string::npos) << yaml << " -> " << e;
  return e;
}

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

// Runs `natsl ARGS` (the program built next to the tests) through the shell; `launcher` goes before the
// program (e.g. "setpriv --reuid=65534 ... ").
inline CommandResult run_natsl(const std::string& args, const std::string& launcher = "") {
  std::string cmd = launcher + std::string(NATSL_BINARY_DIR) + "/natsl " + args + " 2>&1";
  CommandResult r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// Bad input as the house wants it: exit code 2 and one line "natsl: error: ..." that mentions each of
// `mentions`.
inline void expect_one_line_input_error(const CommandResult& r, const std::vector<std::string>& mentions) {
  EXPECT_EQ(r.exit_code, 2) << r.output;
  for (const auto& m : mentions) EXPECT_NE(r.output.find(m), std::string::npos) << "missing '" << m << "' in:\n" << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  EXPECT_EQ(r.output.rfind("natsl: error: ", 0), 0u) << r.output;
}

inline pid_t spawn_natsl_env(const std::vector<std::string>& args, const std::string& log_path,
                             const std::vector<std::string>& extra_env);

// Starts `natsl ARGS...` in the background with stdout and stderr going to `log_path`; returns its pid.
inline pid_t spawn_natsl(const std::vector<std::string>& args, const std::string& log_path) {
  return spawn_natsl_env(args, log_path, {});
}

// The same with extra environment variables ("NAME=value"), e.g. a rank's RANK / WORLD_SIZE / MASTER_PORT.
inline pid_t spawn_natsl_env(const std::vector<std::string>& args, const std::string& log_path,
                             const std::vector<std::string>& extra_env) {
  std::string prog = std::string(NATSL_BINARY_DIR) + "/natsl";
  std::vector<char*> argv{const_cast<char*>(prog.c_str())};
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<std::string> env_store(extra_env);
  for (char** e = environ; *e; ++e) env_store.push_back(*e);
  std::vector<char*> envp;
  for (auto& e : env_store) envp.push_back(e.data());
  envp.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, prog.c_str(), &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  return rc == 0 ? pid : -1;
}

inline int wait_exit_code(pid_t pid) {
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

inline size_t count_lines(const std::string& path) {
  std::ifstream in(path);
  size_t n = 0;
  for (std::string line; std::getline(in, line);) ++n;
  return n;
}

}  // namespace natsl::testing
