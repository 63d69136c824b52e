#pragma once
// Sweeps: one YAML file names a base config and axes; `natsl sweep FILE` expands it into named runs, trains
// them (one after another, or several at once: one per device slot), skips the runs that completed, resumes
// the ones that stopped, and writes OUT_DIR/summary.csv and summary.md. The file format and the summary's
// columns are in docs/training.md ("Sweeps").
//
//   base: ../natsl-tiny.yaml              the run config (relative to the sweep file)
//   out_dir: runs/sweeps/routing          run NAME trains in out_dir/NAME
//   overrides: {train.steps: 400}         for every run (KEY: VALUE, as on the command line)
//   devices: [cuda:0, cuda:1]             optional: one run at a time on each (sets train.device)
//   parallel: 1                           runs at once when no devices are listed
//   axes:                                 combined as a cartesian product, in order
//     - grid: {model.nats_frac_target: [[0.05], [0.25]], train.lr: [1e-3, 2e-3]}   every combination
//     - zip: {model.layers: [[attn, attn], [gdn, gdn]], model.name: [tpp, gdn]}     the i-th of each, together
//     - list: [{name: reference}, {name: hybrid, model.layers: [natsl, attn]}]     given runs (name optional)
//     - seeds: [0, 1, 2]                  = grid {train.seed: [0, 1, 2]}
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace natsl {

struct SweepRun {
  std::string name;                                        // its directory under out_dir
  std::vector<std::pair<std::string, std::string>> swept;  // (key, value as YAML flow text), axis order
  std::vector<std::string> overrides;                      // KEY=VALUE: the sweep's, then the swept ones
  int64_t steps = 0;                                       // its train.steps (from the loaded config)
  std::string task;                                        // its data.source
};

struct Sweep {
  std::string path;      // the sweep file
  std::string base;      // the base config, resolved against the sweep file's folder
  std::string out_dir;   // resolved like train.out_dir (relative to the working directory)
  std::vector<std::string> overrides;
  std::vector<std::string> devices;
  int64_t parallel = 1;
  std::vector<std::string> swept_keys;  // every swept key, in axis order (the summary's columns)
  std::vector<SweepRun> runs;
};

// Reads and expands a sweep file. Every error is an InputError naming the file (and line and key where one
// applies): unknown keys, empty or mismatched axes, run names that collide. Each run's config is then
// loaded and validated, so a bad combination is refused before anything trains.
Sweep load_sweep(const std::string& path);

// Where a run stands, from its directory: done (metrics.jsonl reached train.steps), partial (it started and
// can resume), new (nothing there).
enum class SweepRunState { New, Partial, Done };
SweepRunState sweep_run_state(const std::string& run_dir, int64_t steps);
const char* sweep_run_state_name(SweepRunState s);

struct SweepOptions {
  bool dry_run = false;             // list the runs and their state, train nothing
  std::string natsl_binary;         // the program that trains a run (`natsl train`)
  FILE* out = stdout;
};
// Trains the runs that are not done and writes the summary. Returns how many runs failed (their logs are
// OUT_DIR/NAME/train.log). SIGINT / SIGTERM are passed on to the running trainers (each checkpoints and
// stops) and no new run starts; the next `natsl sweep` resumes them.
int run_sweep(const Sweep& sweep, const SweepOptions& opts);

// OUT_DIR/summary.csv and OUT_DIR/summary.md (both replaced atomically) from the run directories.
void write_sweep_summary(const Sweep& sweep);

}  // namespace natsl
