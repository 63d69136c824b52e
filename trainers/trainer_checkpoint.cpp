// Trainer: checkpoints (write, resume, initial weights, the rescue after a failed write) and the checks that
// a checkpoint fits this run (tokenizer, model). The step loop is in trainer.cpp, the ranks in trainer_dist.cpp.
#include "trainers/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <csignal>
#include <filesystem>
#include <set>

#include <unistd.h>

#include <fmt/format.h>

#include "autograd/ops.h"
#include "core/allocator.h"
#include "core/error.h"
#include "core/json_read.h"
#include "core/stream.h"
#include "data/mixture.h"
#include "data/synthetic.h"
#include "kernels/determinism.h"
#include "kernels/reduce.h"
#include "layers/model/model_size.h"
#include "layers/natsl_attention.h"
#include "trainers/io/checkpoint.h"
#include "trainers/dist/tcp_store.h"
#include "trainers/io/metrics_log.h"
#include "trainers/mfu.h"
#include "trainers/io/run_dir_lock.h"
#include "trainers/io/hf_interchange.h"
#include "trainers/io/safetensors.h"
#include "trainers/stop_signal.h"
#include "data/sync_file.h"
#include "trainers/io/version.h"

namespace fs = std::filesystem;

namespace natsl {
namespace {

// The first key under which two config JSON objects differ, as "model.hidden_size".
std::string first_difference(const nlohmann::json& a, const nlohmann::json& b, const std::string& prefix) {
  for (auto it = b.begin(); it != b.end(); ++it) {
    std::string key = prefix.empty() ? it.key() : prefix + "." + it.key();
    if (!a.contains(it.key())) return key;
    if (it->is_object() && a[it.key()].is_object()) {
      std::string d = first_difference(a[it.key()], *it, key);
      if (!d.empty()) return d;
    } else if (a[it.key()] != *it) {
      return key;
    }
  }
  return "";
}

// A sharded checkpoint's moments are addressed by offsets into the flat layout it recorded: every parameter
// must sit where this model puts it (a natsl with another alignment would otherwise read the wrong elements).
void check_checkpoint_layout(const CheckpointReader& ck, const FlatLayout& layout) {
  const std::vector<FlatLayoutEntry>& saved = ck.zero().entries;
  const auto& mine = layout.entries();
  const std::string state_path = (fs::path(ck.dir()) / "state.json").string();
  if (saved.size() != mine.size())
    throw InputError(fmt::format("'{}': zero.entries lists {} parameters but the model has {}; resume with the model "
                                 "the checkpoint was trained with", state_path, saved.size(), mine.size()));
  for (size_t i = 0; i < mine.size(); ++i)
    if (saved[i].name != mine[i].name || saved[i].offset != mine[i].offset || saved[i].numel != mine[i].numel())
      throw InputError(fmt::format("'{}': zero.entries[{}] is '{}' at flat offset {} ({} elements) but this model has "
                                   "'{}' at {} ({} elements); the checkpoint's optimizer shards do not fit this model "
                                   "(written by another natsl version or model)",
                                   state_path, i, saved[i].name, saved[i].offset, saved[i].numel, mine[i].name,
                                   mine[i].offset, mine[i].numel()));
}

}  // namespace

// A run continues with the tokenizer it started with: the same kind, vocabulary and model file bytes. A
// checkpoint written before tokenizers were recorded was trained on byte tokens.
void check_checkpoint_tokenizer(const CheckpointReader& ck, const nlohmann::json& mine) {
  const std::string state_path = (fs::path(ck.dir()) / "state.json").string();
  nlohmann::json saved = nlohmann::json{{"kind", "byte"}, {"vocab_size", ByteTokenizer::kVocabSize}};
  if (ck.trainer().contains("tokenizer")) saved = ck.trainer().at("tokenizer");
  if (saved.is_null()) return;  // a run on a synthetic task: no tokenizer
  if (!saved.is_object())
    throw InputError("'" + state_path + "': trainer.tokenizer is not an object (a damaged or foreign state.json)");
  auto describe = [](const nlohmann::json& id) {
    std::string s;
    for (const char* key : {"kind", "vocab_size", "xxh3_64"})
      if (id.contains(key)) s += fmt::format("{}{} {}", s.empty() ? "" : ", ", key, id.at(key).dump());
    return "{" + s + "}";
  };
  for (const char* key : {"kind", "vocab_size", "xxh3_64"})
    if (saved.value(key, nlohmann::json()) != mine.value(key, nlohmann::json()))
      throw InputError("checkpoint '" + ck.dir() + "' was trained with the tokenizer " + describe(saved) +
                       " but the config's tokenizer is " + describe(mine) + " (" + key +
                       " differs); resume with the tokenizer the run started with (tokenizer.kind, tokenizer.model)");
}

void check_checkpoint_model(const CheckpointReader& ck, const RunConfig& cfg, const std::string& advice) {
  const std::string state_path = (fs::path(ck.dir()) / "state.json").string();
  try {
    nlohmann::json saved = config_to_json(config_from_json(ck.trainer().at("config"), state_path));
    nlohmann::json mine = config_to_json(cfg);
    std::string diff = first_difference(saved["model"], mine["model"], "model");
    if (!diff.empty()) {
      nlohmann::json::json_pointer p("/" + diff.substr(0, diff.find('.')) + "/" + diff.substr(diff.find('.') + 1));
      throw InputError("checkpoint '" + ck.dir() + "' was trained with " + diff + " = " + saved[p].dump() +
                       " but the config says " + mine[p].dump() + "; " + advice);
    }
  } catch (const nlohmann::json::exception& e) {
    throw InputError("'" + state_path + "' lacks a field this natsl needs (" + e.what() + ")");
  }
}

void Trainer::load_initial_weights(const std::string& path) {
  SafeTensorsReader r(path);
  const auto& entries = store_->layout().entries();
  std::set<std::string> names;
  for (size_t i = 0; i < entries.size(); ++i) {
    const std::string& name = entries[i].name;
    names.insert(name);
    const SafeTensorEntry* e = r.find(name);
    if (!e) throw InputError("train.init_from: '" + path + "' has no tensor '" + name + "', a parameter of this model");
    if (!fits_parameter(name, e->shape, entries[i].shape))  // natsl's shape, or an HF folder's (export-hf)
      throw InputError("train.init_from: '" + path + "': tensor '" + name + "' has shape " + shape_str(e->shape) +
                       " but this model's is " + shape_str(entries[i].shape));
    store_->set_parameter(int(i), r.read(name).view(entries[i].shape));  // any stored dtype (an HF export may be bf16)
  }
  for (const auto& e : r.entries())
    if (!names.count(e.name))
      throw InputError("train.init_from: '" + path + "' holds '" + e.name + "', which this model has no parameter for");
  log("initial weights from " + path);
}

void Trainer::resume_from(CheckpointReader& ck) {
  const std::string& dir = ck.dir();
  for (const auto& w : ck.warnings()) log("warning: " + w);
  const std::string state_path = (fs::path(dir) / "state.json").string();
  try {
    const nlohmann::json& tr = ck.trainer();
    // The model must be the one the checkpoint was trained with.
    check_checkpoint_model(ck, cfg_, "resume with the same model");
    nlohmann::json saved = config_to_json(config_from_json(tr.at("config"), state_path));
    nlohmann::json mine = config_to_json(cfg_);
    if (tr.contains("global_batch") && tr.at("global_batch").is_number_integer() &&
        tr.at("global_batch").get<int64_t>() != global_batch())
      log(fmt::format("warning: the global batch changed since the checkpoint ({} -> {} sequences per step: world size "
                      "{}); set train.global_batch_size to keep it on any number of ranks",
                      tr.at("global_batch").get<int64_t>(), global_batch(), launch_.world_size));
    for (const char* key : {"batch_size", "seq_len", "grad_accum", "seed", "lr", "schedule"})
      if (saved["train"][key] != mine["train"][key])
        log(fmt::format("warning: train.{} changed since the checkpoint ({} -> {}); the run will not match an "
                        "uninterrupted one", key, saved["train"][key].dump(), mine["train"][key].dump()));

    const auto& entries = store_->layout().entries();
    if (ck.model().entries().size() != entries.size())
      throw InputError("'" + ck.model().path() + "' holds " + std::to_string(ck.model().entries().size()) +
                       " tensors but the model has " + std::to_string(entries.size()) + " parameters");
    // The weights: model.safetensors holds the whole f32 master whatever wrote it.
    for (size_t i = 0; i < entries.size(); ++i) {
      if (store_->sharded()) {
        // ZeRO-1: the whole weights pass through; the store keeps its master shard and the compute copy.
        Tensor w = Tensor::empty(entries[i].shape, DType::f32, device_);
        ck.model().read_into(entries[i].name, w);
        store_->set_parameter(int(i), w);
      } else {
        ck.model().read_into(entries[i].name, store_->master().view(int(i)));
      }
    }
    if (ck.sharded()) {
      // ZeRO-1 shards of any world size: this rank reads the part of the flat moments it keeps (all of them
      // without ZeRO-1), from the shard files that overlap it, by offset.
      check_checkpoint_layout(ck, store_->layout());
      const int64_t begin = optimizer_->sharded() ? store_->shard_begin() : 0;
      const Tensor m = optimizer_->sharded() ? optimizer_->exp_avg_shard() : optimizer_->exp_avg().flat(DType::f32);
      const Tensor v = optimizer_->sharded() ? optimizer_->exp_avg_sq_shard() : optimizer_->exp_avg_sq().flat(DType::f32);
      ck.read_optimizer_range(kShardExpAvg, begin, m);
      ck.read_optimizer_range(kShardExpAvgSq, begin, v);
    } else {
      // A gathered checkpoint holds the whole moments (whatever world size wrote it); ZeRO-1 keeps its shard.
      FlatBuffer m_full = optimizer_->sharded() ? FlatBuffer(store_->layout(), device_) : optimizer_->exp_avg();
      FlatBuffer v_full = optimizer_->sharded() ? FlatBuffer(store_->layout(), device_) : optimizer_->exp_avg_sq();
      for (size_t i = 0; i < entries.size(); ++i) {
        ck.optimizer().read_into("exp_avg." + entries[i].name, m_full.view(int(i)));
        ck.optimizer().read_into("exp_avg_sq." + entries[i].name, v_full.view(int(i)));
      }
      if (optimizer_->sharded()) {
        optimizer_->exp_avg_shard().copy_(own_range(m_full.flat(DType::f32)));
        optimizer_->exp_avg_sq_shard().copy_(own_range(v_full.flat(DType::f32)));
      }
    }
    store_->sync_compute_from_master();
    const TrainerCounters counters = read_trainer_counters(ck, /*required=*/true);
    optimizer_->set_step_count(counters.optimizer_steps);
    skipped_steps_ = counters.skipped_steps;
    nonfinite_streak_ = counters.nonfinite_streak;
    const std::string field = "'" + state_path + "': trainer.";
    // The routers' Gumbel noise continues where the checkpoint left it (saved since format version 2).
    const nlohmann::json* noise = tr.contains("rng") && tr.at("rng").contains("router_noise")
                                      ? &tr.at("rng").at("router_noise") : nullptr;
    for (auto& [name, layer] : natsl_layers(*model_)) {
      if (noise && noise->contains(name))
        layer->set_noise_generator(
            Generator(json_integer<uint64_t>(noise->at(name).at("seed"), field + "rng.router_noise.seed"),
                      json_integer<uint64_t>(noise->at(name).at("offset"), field + "rng.router_noise.offset")));
      else if (cfg_.model.nats_sample == "gumbel")
        log("warning: '" + state_path + "' holds no Gumbel noise state for " + name +
            " (an older natsl wrote it): the noise will not match an uninterrupted run");
    }
    data_.train->load_state(tr.at("data"));
    step_ = ck.step();
  } catch (const nlohmann::json::exception& e) {
    throw InputError("'" + state_path + "' lacks a field this natsl needs (" + e.what() + ")");
  }
  log(fmt::format("resumed from {} at step {}", dir, step_));
}

nlohmann::json Trainer::checkpoint_trainer_state() {
  const TrainConfig& t = cfg_.train;
  // Parameters are initialised from Philox(seed); batches are a pure function of (data seed, index); the only
  // draws during training are the NAtS-L routers' Gumbel noise, one Philox stream per layer whose offset
  // advances with each training forward. These are all the RNG state there is.
  nlohmann::json router_noise = nlohmann::json::object();
  for (const auto& [name, layer] : natsl_layers(*model_))
    router_noise[name] = {{"generator", "philox4x32-10"},
                          {"seed", layer->noise_generator().seed},
                          {"offset", layer->noise_generator().offset}};
  return {
      {"optimizer_steps", optimizer_->step_count()},
      {"skipped_steps", skipped_steps_},
      {"nonfinite_streak", nonfinite_streak_},
      {"tokens_seen", step_ * global_batch() * t.seq_len},
      {"world_size", launch_.world_size},
      {"global_batch", global_batch()},
      {"rng",
       {{"param_init", {{"generator", "philox4x32-10"}, {"seed", t.seed}}},
        {"data_seed", t.seed},
        {"router_noise", router_noise}}},
      {"data", data_.train->state()},
      {"config", config_to_json(cfg_)},
      {"tokenizer", data_.tokenizer ? data_.tokenizer->identity() : nlohmann::json()},
  };
}

std::string Trainer::write_checkpoint() {
  if (!writes_checkpoints_) return "";
  if (store_->sharded()) return write_sharded_checkpoint();
  // One rank, or plain data parallel: every rank holds the whole state, rank 0 writes it.
  if (!opts_.write_run_dir) return "";
  CheckpointWrite ck;
  ck.step = step_;
  const FlatBuffer& w = store_->master();
  const FlatBuffer& m = optimizer_->exp_avg();
  const FlatBuffer& v = optimizer_->exp_avg_sq();
  const auto& entries = store_->layout().entries();
  for (size_t i = 0; i < entries.size(); ++i) ck.model.emplace_back(entries[i].name, w.view(int(i)));
  for (size_t i = 0; i < entries.size(); ++i) ck.optimizer.emplace_back("exp_avg." + entries[i].name, m.view(int(i)));
  for (size_t i = 0; i < entries.size(); ++i) ck.optimizer.emplace_back("exp_avg_sq." + entries[i].name, v.view(int(i)));
  ck.trainer = checkpoint_trainer_state();
  synchronize(device_);
  last_checkpoint_ = save_checkpoint(cfg_.train.out_dir, ck, cfg_.train.keep_last);
  return last_checkpoint_;
}

std::vector<int64_t> Trainer::exchange_over_ranks(const std::vector<int64_t>& mine) {
  const size_t k = mine.size();
  std::vector<int64_t> all(k * size_t(launch_.world_size), 0);
  std::copy(mine.begin(), mine.end(), all.begin() + std::ptrdiff_t(k * size_t(launch_.rank)));
  // Every slot but this rank's is zero here, so the sum is each rank's values side by side, exactly.
  Tensor t = Tensor::from_vector(all, {int64_t(all.size())}, DType::i64, device_);
  comm_->all_reduce(t, dist::ReduceOp::sum);
  comm_->synchronize();
  return t.to_vector<int64_t>();
}

// ZeRO-1: each rank writes its shard of the AdamW moments; rank 0 writes the whole weights and, last,
// state.json. Three agreements (small all-reduces, bounded by train.dist_timeout_s) order it:
//   1. rank 0 has made the empty .tmp-step_N (no rank writes before it exists);
//   2. every rank has written and fsynced its file, and reports its size and XXH3-64 (rank 0 lists them);
//   3. rank 0 has written state.json and renamed the directory to step_N.
// A failure anywhere is known to every rank at the next agreement, and every rank then stops with an
// error: no step_N appears unless every rank's file is in it.
std::string Trainer::write_sharded_checkpoint() {
  const TrainConfig& t = cfg_.train;
  const int rank = launch_.rank, world = launch_.world_size;
  const std::string name = checkpoint_dir_name(step_);
  const auto& entries = store_->layout().entries();
  // model.safetensors is the whole f32 master, written once by rank 0. In f32 the compute weights, all-gathered
  // after every step from the master shards, are the master bit for bit; in bf16 the master shards are
  // all-gathered now (4 bytes per parameter for the write; the moments, 8, never leave their rank).
  FlatBuffer whole = store_->compute();
  if (store_->precision() != Precision::f32) {
    whole = FlatBuffer(store_->layout(), device_);
    comm_->all_gather(store_->master_shard(), whole.flat(DType::f32));
    comm_->synchronize();
  }
  synchronize(device_);
  auto failed_ranks = [&](const std::vector<int64_t>& all, size_t stride) {
    std::string s;
    for (int r = 0; r < world; ++r)
      if (all[size_t(r) * stride] != 0) s += (s.empty() ? "" : ", ") + std::to_string(r);
    return s;
  };
  auto fail = [&](const std::string& own_error, const std::string& others) {
    if (rank == 0) remove_checkpoint_tmp_dir(t.out_dir, step_);
    throw Error(own_error.empty() ? others : own_error);
  };

  std::string error;
  const std::string tmp = checkpoint_tmp_dir(t.out_dir, step_);
  if (rank == 0) {
    try {
      begin_checkpoint(t.out_dir, step_);
    } catch (const std::exception& e) {
      error = fmt::format("cannot create '{}': {}", tmp, e.what());
    }
  }
  if (exchange_over_ranks({error.empty() ? 0 : 1})[0] != 0)
    fail(error, fmt::format("rank 0 could not create '{}' (its error comes first); no {} was written", tmp, name));

  CheckpointFileRecord shard;
  const std::string shard_file = optimizer_shard_file_name(rank, world);
  std::optional<CheckpointFileRecord> model_file;
  try {
    if (rank == 0) {
      NamedTensors model;
      for (size_t i = 0; i < entries.size(); ++i) model.emplace_back(entries[i].name, whole.view(int(i)));
      model_file = write_checkpoint_file(tmp, "model.safetensors", model, step_);
    }
    shard = write_checkpoint_file(tmp, shard_file,
                                  {{kShardExpAvg, optimizer_->exp_avg_shard()},
                                   {kShardExpAvgSq, optimizer_->exp_avg_sq_shard()}},
                                  step_);
  } catch (const std::exception& e) {
    error = fmt::format("rank {} cannot write its part of checkpoint {}: {}", rank, name, e.what());
  }
  const std::vector<int64_t> reports =
      exchange_over_ranks({error.empty() ? 0 : 1, int64_t(shard.bytes), int64_t(shard.xxh3_64)});
  if (const std::string bad = failed_ranks(reports, 3); !bad.empty())
    fail(error, fmt::format("rank(s) {} could not write their part of checkpoint {} (their error is in their output); "
                            "no {} was written", bad, name, name));

  std::string dir;
  if (rank == 0) {
    try {
      ShardedOptimizerLayout z;
      z.world_size = world;
      z.flat_elements = store_->layout().total(DType::f32);
      for (int r = 0; r < world; ++r) {
        const dist::ShardRange range = dist::shard_of(z.flat_elements, world, r);
        z.shards.push_back({optimizer_shard_file_name(r, world), range.begin, range.end});
      }
      for (const FlatEntry& e : entries) z.entries.push_back({e.name, e.offset, e.numel()});
      std::vector<CheckpointFileRecord> files = {*model_file};
      for (int r = 0; r < world; ++r)
        files.push_back({optimizer_shard_file_name(r, world), uint64_t(reports[size_t(r) * 3 + 1]),
                         uint64_t(reports[size_t(r) * 3 + 2])});
      dir = commit_checkpoint(t.out_dir, step_, files, checkpoint_trainer_state(), z, t.keep_last);
    } catch (const std::exception& e) {
      error = fmt::format("cannot finish checkpoint {}: {}", name, e.what());
    }
  }
  if (exchange_over_ranks({error.empty() ? 0 : 1})[0] != 0)
    fail(error, fmt::format("rank 0 could not finish checkpoint {} (its error comes first); no {} was written", name, name));
  last_checkpoint_ = (fs::path(t.out_dir) / "checkpoints" / name).string();
  return rank == 0 ? dir : "";
}

void Trainer::stop_after_failed_write(const std::string& failure, bool save_checkpoint) {
  std::string saved;
  if (save_checkpoint && optimizer_->sharded()) {
    // ZeRO-1: every rank writes its shard of a checkpoint, in collectives the others (who did not fail) are
    // not in. The newest checkpoint on disk is the last whole state.
    save_checkpoint = false;
    saved = "; no checkpoint was written (with train.zero=1 every rank takes part in one)";
  }
  if (save_checkpoint) {
    // The metrics row is lost, the weights need not be: the checkpoint lives in another file (maybe on another
    // disk, or the failure was a one-off).
    try {
      saved = "; saved the checkpoint " + write_checkpoint() + " (metrics.jsonl lacks step " + std::to_string(step_) +
              "); resume=auto continues from it";
    } catch (const std::exception& e) {
      saved = fmt::format("; the checkpoint of step {} could not be written either ({})", step_, e.what());
    }
  } else if (metrics_ && saved.empty()) {
    saved = fmt::format("; metrics.jsonl holds steps 1..{}", step_);
  }
  if (saved.find("resume=auto") == std::string::npos)
    saved += last_checkpoint_.empty() ? "; no checkpoint of this run exists"
                                      : "; resume=auto continues from " + last_checkpoint_;
  throw Error("stopping: " + failure + saved);
}

}  // namespace natsl
