#pragma once
// Checkpoints: one directory per step under RUN_DIR/checkpoints/,
//   step_000123/
//     model.safetensors      the f32 master weights, one tensor per parameter (names: docs/checkpoints.md)
//     optimizer.safetensors  AdamW moments "exp_avg.NAME" and "exp_avg_sq.NAME" (a gathered checkpoint), or
//     optimizer.rank00001-of-00004.safetensors ...   ZeRO-1: one file per rank, "exp_avg" and "exp_avg_sq"
//                            as 1-D f32 ranges of the flat parameter layout (format version 3)
//     state.json             {"format": "natsl-checkpoint", "format_version", "step", "natsl_version",
//                             "git_commit", "files": {FILE: {"bytes": N, "xxh3_64": HEX}}, "trainer": {...},
//                             "zero": {...} (version 3: the shard layout, ShardedOptimizerLayout)}
// written as .tmp-step_000123/ (each file fsynced, state.json last), then renamed to step_000123 and the
// parent fsynced: a directory named step_* is complete. With ZeRO-1 every rank writes its shard file into the
// same .tmp- directory; rank 0 writes state.json and renames only after every rank reported its file (the
// trainer's protocol: trainers/trainer_checkpoint.cpp). A checkpoint is valid when open's checks pass
// (state.json parses, every listed file has its recorded size, XXH3-64 and a valid header, the shard layout
// is consistent). Resume takes the newest valid step_*; a leftover .tmp-* or a damaged step_* is skipped with
// a warning. Versions 1 (before checksums) and 2 (gathered) are still read; a checkpoint without shards is
// still written as version 2, so an older natsl reads it.
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
// 2: per-file XXH3-64 in "files"; 3: ZeRO-1 optimizer shards ("zero"). The newest version this natsl reads.
inline constexpr int kCheckpointFormatVersion = 3;
inline constexpr int kGatheredCheckpointFormatVersion = 2;  // written for a checkpoint without shards

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

// ZeRO-1: the optimizer shards of a checkpoint, as state.json's "zero" records them. The moments are one flat
// f32 buffer over the parameters' flat layout (FlatLayout: each parameter at an aligned offset, zeros between
// them and in the padding at the end); shard r holds elements [begin, end) of it.
struct OptimizerShard {
  std::string file;  // optimizer_shard_file_name(r, world_size)
  int64_t begin = 0, end = 0;
};
struct FlatLayoutEntry {
  std::string name;
  int64_t offset = 0, numel = 0;  // elements
};
struct ShardedOptimizerLayout {
  int world_size = 0;
  int64_t flat_elements = 0;            // the padded flat buffer: the shards tile [0, flat_elements)
  std::vector<OptimizerShard> shards;   // rank order, contiguous
  std::vector<FlatLayoutEntry> entries; // where each parameter's moments are in the flat buffer
};
nlohmann::json to_json(const ShardedOptimizerLayout& z);
// Parses and checks state.json's "zero" (untrusted): InputError naming `where` and the field when a value is
// missing, of the wrong type or out of range, a shard's file is not its expected name, the shards do not tile
// [0, flat_elements), or an entry lies outside it.
ShardedOptimizerLayout sharded_optimizer_layout_from_json(const nlohmann::json& j, const std::string& where);
// "optimizer.rank00001-of-00004.safetensors"
std::string optimizer_shard_file_name(int rank, int world_size);
// The moments' tensor names in a shard file.
inline constexpr const char* kShardExpAvg = "exp_avg";
inline constexpr const char* kShardExpAvgSq = "exp_avg_sq";

// A part of [begin, end) of the flat buffer that one shard holds: `count` elements from element
// `shard_offset` of shard `shard`, going to element `range_offset` of the range. Elements that no shard
// holds (beyond flat_elements) are in no piece. Shards must be contiguous and ascending.
struct ShardPiece {
  size_t shard = 0;
  int64_t shard_offset = 0, range_offset = 0, count = 0;
};
std::vector<ShardPiece> shard_pieces(const std::vector<OptimizerShard>& shards, int64_t begin, int64_t end);

// The steps of a checkpoint write, for writers on several ranks (save_checkpoint does all of them in one
// process). The file's bytes and checksum go into state.json.
struct CheckpointFileRecord {
  std::string file;
  uint64_t bytes = 0, xxh3_64 = 0;
};
// RUN_DIR/checkpoints/.tmp-step_N, where every file of step N is written.
std::string checkpoint_tmp_dir(const std::string& run_dir, int64_t step);
// Rank 0, before any rank writes: creates the temporary directory, empty (a crashed write's leftover goes).
std::string begin_checkpoint(const std::string& run_dir, int64_t step);
// Rank 0, after a failed write of step N: removes its temporary directory (best effort; resume ignores it).
void remove_checkpoint_tmp_dir(const std::string& run_dir, int64_t step);
// Writes one tensor file into the temporary directory (fsynced), after refusing NaN/Inf (natsl::Error,
// before a byte is written).
CheckpointFileRecord write_checkpoint_file(const std::string& tmp_dir, const std::string& file,
                                           const NamedTensors& tensors, int64_t step,
                                           const std::function<void(size_t)>& after_tensor = {});
// Rank 0, once every file is written and fsynced: writes state.json (files, trainer state and, when sharded,
// the shard layout), renames the directory to step_N and prunes to the newest `keep_last` valid checkpoints.
std::string commit_checkpoint(const std::string& run_dir, int64_t step, const std::vector<CheckpointFileRecord>& files,
                              const nlohmann::json& trainer, const std::optional<ShardedOptimizerLayout>& zero,
                              int64_t keep_last);

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
  // A gathered checkpoint's optimizer.safetensors (not sharded()).
  SafeTensorsReader& optimizer();
  // ZeRO-1 shards (format version 3 with "zero"): there is no optimizer.safetensors; read ranges instead.
  bool sharded() const { return zero_.has_value(); }
  const ShardedOptimizerLayout& zero() const { return *zero_; }
  // Elements [begin, begin + dst.numel()) of the flat moments `tensor` (kShardExpAvg or kShardExpAvgSq) into
  // the 1-D f32 `dst`, read only from the shard files that hold them; elements beyond the saved buffer (the
  // padding of a larger world size) are zero.
  void read_optimizer_range(const std::string& tensor, int64_t begin, const Tensor& dst);

 private:
  void open();
  void open_shards(const std::string& state_path);
  // Checks a listed file's size and (has_checksums) XXH3-64 against state.json's "files".
  void verify_file(const std::string& file, bool has_checksums);
  std::string dir_;
  int64_t step_ = 0;
  nlohmann::json state_;
  std::vector<std::string> warnings_;
  std::optional<SafeTensorsReader> model_, optimizer_;
  std::optional<ShardedOptimizerLayout> zero_;
  std::vector<std::unique_ptr<SafeTensorsReader>> shards_;
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
