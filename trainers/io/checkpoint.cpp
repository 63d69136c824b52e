#include "trainers/io/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "core/error.h"
#include "core/json_read.h"
#include "data/file_checksum.h"
#include "data/sync_file.h"
#include "trainers/io/version.h"

namespace fs = std::filesystem;

namespace natsl {

namespace {

constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kStateFile = "state.json";
constexpr const char* kTmpPrefix = ".tmp-";

// "step_000123" -> 123; nullopt for any other name.
std::optional<int64_t> parse_step_name(const std::string& name) {
  const std::string p = "step_";
  if (name.rfind(p, 0) != 0 || name.size() == p.size()) return std::nullopt;
  int64_t v = 0;
  for (size_t i = p.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9' || v > (int64_t(1) << 56)) return std::nullopt;
    v = v * 10 + (name[i] - '0');
  }
  return v;
}

void remove_tree(const fs::path& p) {
  std::error_code ec;
  fs::remove_all(p, ec);
}

// Whether every element of a floating-point tensor (any device) is finite; integer tensors always are.
// Exponent bits all ones = Inf or NaN, in every IEEE format.
bool all_finite(const Tensor& t) {
  if (t.dtype() != DType::f32 && t.dtype() != DType::f64 && t.dtype() != DType::bf16) return true;
  if (t.dtype() == DType::f64) {
    Tensor h = t.contiguous().to(kCPU);
    const auto* p = static_cast<const uint64_t*>(h.data_ptr());
    bool bad = false;
    for (int64_t i = 0; i < h.numel(); ++i) bad |= (p[i] & 0x7FF0000000000000ull) == 0x7FF0000000000000ull;
    return !bad;
  }
  Tensor h = t.contiguous().to(kCPU).to(DType::f32);  // bf16 -> f32 keeps Inf and NaN
  const auto* p = static_cast<const uint32_t*>(h.data_ptr());
  bool bad = false;
  for (int64_t i = 0; i < h.numel(); ++i) bad |= (p[i] & 0x7F800000u) == 0x7F800000u;
  return !bad;
}

// A checkpoint holding NaN or Inf would be resumed from as if it were good, and keep-last would then prune
// the good ones: refuse it before anything is written.
void refuse_nonfinite(int64_t step, const NamedTensors& tensors, const std::string& file) {
  for (const auto& [name, t] : tensors)
    if (!all_finite(t))
      throw Error(fmt::format("refusing to write checkpoint {}: '{}' ({}) holds NaN or Inf, so the run has "
                              "diverged; nothing was written and older checkpoints are kept (resume from the "
                              "newest with a lower train.lr)",
                              checkpoint_dir_name(step), name, file));
}

bool is_valid_checkpoint(const fs::path& dir) {
  try {
    CheckpointReader r(dir.string());
    return true;
  } catch (const Error&) {
    return false;
  }
}

}  // namespace

std::string checkpoint_dir_name(int64_t step) { return fmt::format("step_{:06d}", step); }

std::vector<int64_t> list_checkpoint_steps(const std::string& run_dir) {
  std::vector<int64_t> steps;
  fs::path root = fs::path(run_dir) / "checkpoints";
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return steps;
  for (const auto& e : fs::directory_iterator(root, ec))
    if (e.is_directory())
      if (auto s = parse_step_name(e.path().filename().string())) steps.push_back(*s);
  std::sort(steps.begin(), steps.end());
  return steps;
}

std::string checkpoint_tmp_dir(const std::string& run_dir, int64_t step) {
  return (fs::path(run_dir) / "checkpoints" / (kTmpPrefix + checkpoint_dir_name(step))).string();
}

std::string begin_checkpoint(const std::string& run_dir, int64_t step) {
  fs::create_directories(fs::path(run_dir) / "checkpoints");
  const fs::path tmp = checkpoint_tmp_dir(run_dir, step);
  remove_tree(tmp);  // a leftover of a crashed write of the same step
  fs::create_directory(tmp);
  return tmp.string();
}

void remove_checkpoint_tmp_dir(const std::string& run_dir, int64_t step) { remove_tree(checkpoint_tmp_dir(run_dir, step)); }

CheckpointFileRecord write_checkpoint_file(const std::string& tmp_dir, const std::string& file,
                                           const NamedTensors& tensors, int64_t step,
                                           const std::function<void(size_t)>& after_tensor) {
  refuse_nonfinite(step, tensors, file);
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"producer", "natsl"},
                                                   {"step", std::to_string(step)}};
  const fs::path path = fs::path(tmp_dir) / file;
  CheckpointFileRecord rec;
  rec.file = file;
  rec.xxh3_64 = write_safetensors(path.string(), tensors, meta, after_tensor);
  rec.bytes = fs::file_size(path);
  return rec;
}

std::string commit_checkpoint(const std::string& run_dir, int64_t step, const std::vector<CheckpointFileRecord>& files,
                              const nlohmann::json& trainer, const std::optional<ShardedOptimizerLayout>& zero,
                              int64_t keep_last) {
  fs::path root = fs::path(run_dir) / "checkpoints";
  const std::string name = checkpoint_dir_name(step);
  fs::path tmp = checkpoint_tmp_dir(run_dir, step);
  fs::path final_dir = root / name;
  nlohmann::json state = {{"format", kCheckpointFormat},
                          {"format_version", zero ? kCheckpointFormatVersion : kGatheredCheckpointFormatVersion},
                          {"step", step},
                          {"natsl_version", natsl_version()},
                          {"git_commit", natsl_git_commit()},
                          {"trainer", trainer}};
  for (const CheckpointFileRecord& f : files)
    state["files"][f.file] = {{"bytes", f.bytes}, {"xxh3_64", checksum_hex(f.xxh3_64)}};
  if (zero) state["zero"] = to_json(*zero);
  write_file_synced((tmp / kStateFile).string(), state.dump(2) + "\n");
  // After every writer fsynced its file: the directory's entries of all of them.
  fsync_directory(tmp.string());

  // Re-saving a step that already exists (e.g. the final step after a stop_at_step resume) replaces it.
  if (fs::exists(final_dir)) remove_tree(final_dir);
  fs::rename(tmp, final_dir);
  fsync_directory(root.string());

  // Retention: walking down from the newest, everything stays until keep_last valid checkpoints are counted
  // (the one just written is valid); what is older than the last of them goes. A damaged checkpoint does not
  // count, so it never pushes a valid one out, and nothing newer than a kept valid checkpoint is deleted.
  // Counting verifies the checksums of up to keep_last - 1 older checkpoints (one read of each).
  std::vector<int64_t> steps = list_checkpoint_steps(run_dir);
  int64_t valid = 0;
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    const fs::path d = root / checkpoint_dir_name(*it);
    if (valid >= keep_last) remove_tree(d);
    else if (*it == step || is_valid_checkpoint(d)) ++valid;
  }
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    std::string n = e.path().filename().string();
    if (n.rfind(kTmpPrefix, 0) == 0)
      if (auto s = parse_step_name(n.substr(std::string(kTmpPrefix).size())); s && *s < step) remove_tree(e.path());
  }
  return final_dir.string();
}

std::string save_checkpoint(const std::string& run_dir, const CheckpointWrite& ck, int64_t keep_last) {
  refuse_nonfinite(ck.step, ck.model, kModelFile);
  refuse_nonfinite(ck.step, ck.optimizer, kOptimizerFile);
  const std::string tmp = begin_checkpoint(run_dir, ck.step);
  std::vector<CheckpointFileRecord> files;
  files.push_back(write_checkpoint_file(tmp, kModelFile, ck.model, ck.step, ck.after_model_tensor));
  files.push_back(write_checkpoint_file(tmp, kOptimizerFile, ck.optimizer, ck.step));
  return commit_checkpoint(run_dir, ck.step, files, ck.trainer, std::nullopt, keep_last);
}

CheckpointReader::CheckpointReader(const std::string& dir) : dir_(dir) {
  try {
    open();
  } catch (const nlohmann::json::exception& e) {
    throw InputError("'" + (fs::path(dir) / kStateFile).string() + "' has a malformed field (" + e.what() + ")");
  }
}

void CheckpointReader::open() {
  const std::string& dir = dir_;
  fs::path d(dir);
  std::error_code ec;
  if (!fs::is_directory(d, ec)) throw InputError("checkpoint '" + dir + "' is not a directory");
  fs::path state_path = d / kStateFile;
  std::ifstream in(state_path);
  if (!in) throw InputError("checkpoint '" + dir + "' has no " + kStateFile + " (incomplete or not a checkpoint)");
  try {
    state_ = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw InputError("'" + state_path.string() + "' is not valid JSON (" + e.what() + "); the checkpoint is corrupt");
  }
  auto bad = [&](const std::string& what) { return InputError("'" + state_path.string() + "': " + what); };
  if (!state_.is_object() || state_.value("format", "") != kCheckpointFormat)
    throw bad("not a natsl checkpoint state (format is not \"" + std::string(kCheckpointFormat) + "\")");
  const auto version = state_.value("format_version", nlohmann::json(nullptr));
  if (version != 1 && version != 2 && version != kCheckpointFormatVersion)
    throw bad("checkpoint format version " + version.dump() + " is not supported (this natsl reads versions 1 to " +
              std::to_string(kCheckpointFormatVersion) + ")");
  const bool has_checksums = version != 1;
  if (!has_checksums)
    warnings_.push_back("checkpoint '" + dir + "' was written by an older natsl (format version 1, no checksums): "
                        "its tensor bytes cannot be verified");
  if (!state_.contains("step") || !state_["step"].is_number_integer()) throw bad("no integer \"step\"");
  if (!state_.contains("trainer") || !state_["trainer"].is_object()) throw bad("no \"trainer\" state");
  step_ = state_["step"].get<int64_t>();
  const bool sharded = state_.contains("zero");
  if (sharded && version != kCheckpointFormatVersion)
    throw bad("\"zero\" (optimizer shards) needs format version " + std::to_string(kCheckpointFormatVersion) +
              ", not " + version.dump() + " (the file is corrupt or was edited)");
  verify_file(kModelFile, has_checksums);
  model_.emplace((d / kModelFile).string());
  if (sharded) {
    open_shards(state_path.string());
  } else {
    verify_file(kOptimizerFile, has_checksums);
    optimizer_.emplace((d / kOptimizerFile).string());
  }
}

void CheckpointReader::verify_file(const std::string& f, bool has_checksums) {
  const fs::path state_path = fs::path(dir_) / kStateFile;
  const fs::path p = fs::path(dir_) / f;
  std::error_code ec;
  if (!fs::exists(p, ec)) throw InputError("checkpoint file '" + p.string() + "' is missing");
  const nlohmann::json rec = state_.contains("files") && state_["files"].is_object() && state_["files"].contains(f)
                                 ? state_["files"][f]
                                 : nlohmann::json::object();
  const uint64_t rec_bytes = json_integer_or<uint64_t>(rec, "bytes", 0, "'" + state_path.string() + "': files." + f + ".");
  uint64_t size = fs::file_size(p, ec);
  if (ec) throw InputError("cannot read checkpoint file '" + p.string() + "': " + ec.message());
  if (rec_bytes != size)
    throw InputError("checkpoint file '" + p.string() + "' has " + std::to_string(size) + " bytes but " +
                     std::to_string(rec_bytes) + " were written (truncated or replaced)");
  if (!has_checksums) return;
  if (!rec.contains("xxh3_64") || !rec["xxh3_64"].is_string())
    throw InputError("'" + state_path.string() + "': no \"xxh3_64\" checksum recorded for " + f);
  const std::string want = rec["xxh3_64"].get<std::string>(), got = checksum_hex(file_xxh3_64(p.string()));
  if (got != want)
    throw InputError("checkpoint file '" + p.string() + "' fails its checksum (XXH3-64 " + got + ", " + want +
                     " when written): its bytes changed after the write (disk or copy corruption)");
}

SafeTensorsReader& CheckpointReader::optimizer() {
  NATSL_CHECK(optimizer_.has_value(), "checkpoint '", dir_, "' holds ZeRO-1 optimizer shards, not optimizer.safetensors");
  return *optimizer_;
}

TrainerCounters read_trainer_counters(const CheckpointReader& ck, bool required) {
  // Appended piece by piece: GCC 12's -Wrestrict misreads "'" + std::string&& (a false positive on insert at 0).
  std::string where = "'";
  where += (std::filesystem::path(ck.dir()) / kStateFile).string();
  where += "': trainer.";
  const nlohmann::json& tr = ck.trainer();
  if (required)
    for (const char* key : {"optimizer_steps", "skipped_steps"})
      if (!tr.contains(key)) throw InputError(where + key + " is missing; resume needs it");
  TrainerCounters c;
  c.optimizer_steps = json_integer_or<int64_t>(tr, "optimizer_steps", -1, where);
  c.skipped_steps = json_integer_or<int64_t>(tr, "skipped_steps", -1, where);
  c.tokens_seen = json_integer_or<int64_t>(tr, "tokens_seen", -1, where);
  c.nonfinite_streak = json_integer_or<int64_t>(tr, "nonfinite_streak", 0, where);
  return c;
}

CheckpointScan find_latest_checkpoint(const std::string& run_dir) {
  CheckpointScan scan;
  fs::path root = fs::path(run_dir) / "checkpoints";
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return scan;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    std::string n = e.path().filename().string();
    if (n.rfind(kTmpPrefix, 0) == 0)
      scan.warnings.push_back("ignoring the unfinished checkpoint '" + e.path().string() +
                              "' (a write was interrupted)");
  }
  std::vector<int64_t> steps = list_checkpoint_steps(run_dir);
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) scan.found.push_back((root / checkpoint_dir_name(*it)).string());
  for (const std::string& dir : scan.found) {
    try {
      scan.reader = std::make_shared<CheckpointReader>(dir);
      scan.latest = dir;
      break;
    } catch (const InputError& e) {
      scan.damaged.push_back(e.what());
      scan.warnings.push_back(std::string("ignoring a damaged checkpoint: ") + e.what());
    }
  }
  return scan;
}

}  // namespace natsl
