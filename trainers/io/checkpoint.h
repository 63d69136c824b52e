#pragma once
// Checkpoints: one directory per step under RUN_DIR/checkpoints/,
//   step_000123/
//     model.safetensors      the f32 master weights, one tensor per parameter (names: docs/checkpoints.md)
//     optimizer.safetensors  AdamW moments "exp_avg.NAME" and "exp_avg_sq.NAME"
//     state.json             {"format": "natsl-checkpoint", "format_version", "step", "natsl_version",
//                             "git_commit", "files": {FILE: {"bytes": N, "xxh3_64": HEX}}, "trainer": {...}}
// written as .tmp-step_000123/ (each file fsynced, state.json last), then renamed to step_000123 and the
// parent fsynced: a directory named step_* is complete. A checkpoint is valid when open's checks pass
// (state.json parses, every listed file has its recorded size, XXH3-64 and a valid header). Resume takes the
// newest valid step_*; a leftover .tmp-* or a damaged step_* is skipped with a warning. Format version 1
// (before checksums) is still read, with a warning that its bytes cannot be verified.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "trainers/io/safetensors.h"

namespace natsl {

inline constexpr const char* kCheckpointFormat = "natsl-checkpoint";
inline constexpr int kCheckpointFormatVersion = 2;  // 2: per-file XXH3-64 in "files"

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

struct CheckpointWrite {
  int64_t step = 0;
  NamedTensors model;      // written to model.safetensors
  NamedTensors optimizer;  // written to optimizer.safetensors
  nlohmann::json trainer;  // free-form trainer state (counters, RNG, data, config)
  // Test hook: runs after each tensor of model.safetensors is written (simulates a crash mid-write).
  std::function<void(size_t)> after_model_tensor;
};

std::string checkpoint_dir_name(int64_t step);  // "step_000123"

// Writes the checkpoint atomically under RUN_DIR/checkpoints and returns its final directory. Refuses (natsl::Error,
// before anything is written) when a floating-point tensor holds NaN or Inf. Then deletes the checkpoints
// older than the newest `keep_last` VALID ones (and stale temporary directories of older steps): a damaged
// checkpoint never counts, so it never pushes a valid one out.
std::string save_checkpoint(const std::string& run_dir, const CheckpointWrite& ck, int64_t keep_last);

// An opened, validated checkpoint directory (every tensor file's checksum verified). Throws InputError naming
// the file that is missing, truncated, corrupt or of another format.
class CheckpointReader {
 public:
  explicit CheckpointReader(const std::string& dir);
  const std::string& dir() const { return dir_; }
  // What the caller should print: a format-1 checkpoint has no checksums to verify.
  const std::vector<std::string>& warnings() const { return warnings_; }
  int64_t step() const { return step_; }
  const nlohmann::json& state() const { return state_; }  // the whole state.json
  const nlohmann::json& trainer() const { return state_.at("trainer"); }
  SafeTensorsReader& model() { return *model_; }
  SafeTensorsReader& optimizer() { return *optimizer_; }

 private:
  void open();
  std::string dir_;
  int64_t step_ = 0;
  nlohmann::json state_;
  std::vector<std::string> warnings_;
  std::optional<SafeTensorsReader> model_, optimizer_;
};

// The counters in state.json's "trainer" object that resume and `natsl inspect` read. state.json is untrusted:
// a field that is present but not an integer of the right range is an InputError naming the file and field.
// With `required`, optimizer_steps and skipped_steps must be present (resume needs them); absent fields are -1
// (nonfinite_streak: 0, as format version 1 wrote none).
struct TrainerCounters {
  int64_t optimizer_steps = -1, skipped_steps = -1, tokens_seen = -1, nonfinite_streak = 0;
};
TrainerCounters read_trainer_counters(const CheckpointReader& ck, bool required);

struct CheckpointScan {
  std::optional<std::string> latest;         // the newest complete, valid checkpoint directory
  std::shared_ptr<CheckpointReader> reader;  // it, opened and verified (null when there is none)
  std::vector<std::string> found;            // every step_* directory, newest first (valid or not)
  std::vector<std::string> damaged;          // why each skipped step_* is invalid, newest first
  std::vector<std::string> warnings;         // one line per skipped directory
};
// Looks at RUN_DIR/checkpoints (absent = no checkpoint).
CheckpointScan find_latest_checkpoint(const std::string& run_dir);

// Steps of the complete (step_*) checkpoint directories, ascending (no validation).
std::vector<int64_t> list_checkpoint_steps(const std::string& run_dir);

}  // namespace natsl
