// Sweeps (trainers/sweep.h): expansion of grid / zip / list / seeds axes into named runs with their
// overrides, the errors of bad sweep files (each names the file and what to fix), and `natsl sweep` itself on
// a tiny CPU config: it trains every run, writes the summary, skips the runs that are done and resumes the
// ones that stopped.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include "core/error.h"
#include "trainers/config.h"
#include "trainers/sweep.h"
#include "trainer_test_util.h"

namespace natsl {
namespace {

using testing::kSmallConfig;
using testing::read_text;
using testing::run_natsl;
using testing::CommandResult;
using testing::TempDir;
using testing::write_text;

std::vector<std::string> names(const Sweep& s) {
  std::vector<std::string> n;
  for (const auto& r : s.runs) n.push_back(r.name);
  return n;
}

// The InputError message of load_sweep(path), or "" when it loads (load_config's twin is testing::load_error).
std::string sweep_load_error(const std::string& path) {
  return testing::error_of<InputError>([&] { load_sweep(path); });
}

TEST(Sweep, AxesExpandIntoNamedRunsInOrder) {
  TempDir dir;
  write_text(dir / "base.yaml", kSmallConfig);
  write_text(dir / "s.yaml", "base: base.yaml\nout_dir: " + dir / "out" + R"(
overrides: {train.steps: 3}
axes:
  - list: [{name: small}, {name: wide, model.hidden_size: 32}]
  - grid: {train.lr: [1.0e-3, 2.0e-3], model.num_layers: [1, 2]}
  - seeds: [0, 7]
)");
  // Names and override values keep the values' text as written in the sweep file.
  const Sweep s = load_sweep(dir / "s.yaml");
  ASSERT_EQ(s.runs.size(), 2u * 4u * 2u);
  EXPECT_EQ(s.base, dir / "base.yaml");
  EXPECT_EQ(s.runs[0].name, "small_lr-1.0e-3_num_layers-1_seed-0");
  EXPECT_EQ(s.runs[1].name, "small_lr-1.0e-3_num_layers-1_seed-7");
  EXPECT_EQ(s.runs[2].name, "small_lr-1.0e-3_num_layers-2_seed-0");
  EXPECT_EQ(s.runs.back().name, "wide_lr-2.0e-3_num_layers-2_seed-7");
  EXPECT_EQ(s.runs.back().overrides,
            (std::vector<std::string>{"train.steps=3", "model.hidden_size=32", "train.lr=2.0e-3", "model.num_layers=2",
                                      "train.seed=7"}));
  EXPECT_EQ(s.runs[0].steps, 3);
  EXPECT_EQ(s.swept_keys, (std::vector<std::string>{"model.hidden_size", "train.lr", "model.num_layers", "train.seed"}));

  // zip pairs the i-th values; list values may be lists themselves.
  write_text(dir / "z.yaml", R"(base: base.yaml
axes:
  - zip: {model.layers: [[attn], [gdn]], model.name: [tpp, gdn]}
)");
  const Sweep z = load_sweep(dir / "z.yaml");
  EXPECT_EQ(names(z), (std::vector<std::string>{"layers-attn_name-tpp", "layers-gdn_name-gdn"}));
  EXPECT_EQ(z.runs[1].overrides, (std::vector<std::string>{"model.layers=[gdn]", "model.name=gdn"}));
  EXPECT_EQ(z.out_dir, "runs/sweeps/z");
}

TEST(Sweep, BadSweepFilesAreOneClearError) {
  TempDir dir;
  write_text(dir / "base.yaml", kSmallConfig);
  const std::pair<std::string, std::string> cases[] = {
      {"base: base.yaml\naxez: []\n", "unknown key 'axez'"},
      {"out_dir: x\n", "has no base:"},
      {"base: nowhere.yaml\n", "nowhere.yaml"},
      {"base: base.yaml\naxes:\n  - zip: {train.lr: [1, 2], train.seed: [1]}\n", "zip.train.seed has 1 values"},
      {"base: base.yaml\naxes:\n  - grid: {train.lr: []}\n", "grid.train.lr must be a non-empty list"},
      {"base: base.yaml\naxes:\n  - sweep: {train.lr: [1]}\n", "unknown axis kind 'sweep'"},
      {"base: base.yaml\naxes:\n  - list: [{name: a}, {name: a, train.lr: 0.1}]\n", "two runs are named 'a'"},
      {"base: base.yaml\naxes:\n  - seeds: [1]\n  - grid: {train.seed: [2]}\n", "set by two axes"},
      {"base: base.yaml\naxes:\n  - grid: {train.lrr: [1]}\n", "train.lrr"},
      {"base: base.yaml\naxes:\n  - grid: {train.lr: [-1]}\n", "run 'lr--1'"},
      {"base: base.yaml\nparallel: many\n", "s.yaml"},
      {"base: [\n", "not valid YAML"},
  };
  for (const auto& [text, expect] : cases) {
    write_text(dir / "s.yaml", text);
    const std::string e = sweep_load_error(dir / "s.yaml");
    EXPECT_NE(e.find(expect), std::string::npos) << text << " -> " << e;
    EXPECT_NE(e.find("s.yaml"), std::string::npos) << text << " -> " << e;
  }
}

int csv_lines(const std::string& path) {
  const std::string t = read_text(path);
  return int(std::count(t.begin(), t.end(), '\n'));
}

// `natsl sweep` trains both runs and summarises them; run again it trains nothing; a sweep whose runs stopped
// early (train.stop_at_step) leaves them partial, and the full sweep then resumes them from their checkpoints.
TEST(Sweep, TrainsSkipsWhatIsDoneAndResumesWhatStopped) {
  TempDir dir;
  write_text(dir / "base.yaml", kSmallConfig);
  const std::string axes = "axes:\n  - seeds: [1, 2]\n";
  write_text(dir / "stop.yaml", "base: base.yaml\nout_dir: " + dir / "out" + "\noverrides: {train.stop_at_step: 2}\n" + axes);
  write_text(dir / "full.yaml", "base: base.yaml\nout_dir: " + dir / "out" + "\n" + axes);

  CommandResult r = run_natsl("sweep " + dir / "stop.yaml");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Sweep full = load_sweep(dir / "full.yaml");
  for (const auto& run : full.runs)
    EXPECT_EQ(sweep_run_state(dir / ("out/" + run.name), run.steps), SweepRunState::Partial) << run.name;

  r = run_natsl("sweep " + dir / "full.yaml" + " --dry-run");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("partial  seed-1"), std::string::npos) << r.output;

  // Both partial runs resume side by side (--parallel overrides the file's parallel: 1).
  r = run_natsl("sweep " + dir / "full.yaml" + " --parallel 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const auto& run : full.runs) {
    EXPECT_EQ(sweep_run_state(dir / ("out/" + run.name), run.steps), SweepRunState::Done) << run.name;
    const std::string log = read_text(dir / ("out/" + run.name + "/train.log"));
    EXPECT_NE(log.find("resumed from"), std::string::npos) << log;
  }
  EXPECT_EQ(csv_lines(dir / "out/summary.csv"), 3);
  const std::string csv = read_text(dir / "out/summary.csv");
  EXPECT_EQ(csv.rfind("run,task,train.seed,state,steps,train_loss,eval_loss,eval_accuracy", 0), 0u) << csv;
  EXPECT_NE(csv.find("seed-2,mqar,2,done,4,"), std::string::npos) << csv;
  EXPECT_NE(read_text(dir / "out/summary.md").find("| seed-1 | mqar | 1 | done | 4 |"), std::string::npos);

  r = run_natsl("sweep " + dir / "full.yaml");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("every run is done"), std::string::npos) << r.output;
}

// SIGTERM while runs are still waiting for a slot: the running one checkpoints and stops, the waiting ones are
// not started, and the sweep writes its summary and exits 0 at once (it used to wait for the unstarted runs
// forever: the device call's timeout killed it, and the summary was never written). The signal goes out once
// the first run has logged a step (its stop handler is in place), whatever the machine's load.
TEST(Sweep, StopsPromptlyWithRunsNotYetStarted) {
  TempDir dir;
  write_text(dir / "base.yaml", kSmallConfig);
  write_text(dir / "long.yaml", "base: base.yaml\nout_dir: " + dir / "out" +
                                    "\noverrides: {train.steps: 100000000, train.ckpt_every: 0}\n" +
                                    "axes:\n  - list: [{name: a}, {name: b}, {name: c}]\n");
  // The sweep in the background (its pid and, once it ends, its exit code in files); SIGTERM once run a has
  // written a metrics row (or the sweep ended; at most 60 s, else NO_METRICS); then 30 s for it to end, else
  // HUNG, and SIGKILL to the sweep and to its trainers' process groups. $1 = the folder, $2 = natsl.
  write_text(dir / "stop.sh",
             "d=$1\n"
             "(\"$2\" sweep \"$d/long.yaml\" > \"$d/sweep.out\" 2>&1 & echo $! > \"$d/pid\"; wait $!; echo $? > \"$d/rc\") &\n"
             "i=0; while [ ! -s \"$d/out/a/metrics.jsonl\" ] && [ ! -s \"$d/rc\" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\n"
             "[ $i -lt 1200 ] || echo NO_METRICS\n"
             "i=0; while [ ! -s \"$d/pid\" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\n"
             "p=$(cat \"$d/pid\")\n"
             "kill -TERM \"$p\"\n"
             "i=0; while [ ! -s \"$d/rc\" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done\n"
             "if [ ! -s \"$d/rc\" ]; then\n"
             "  echo HUNG\n"
             "  for c in $(ps -o pid= --ppid \"$p\"); do kill -KILL -- \"-$c\" 2>/dev/null; done\n"
             "  kill -KILL \"$p\"\n"
             "fi\n");
  const std::string cmd = "sh '" + dir / "stop.sh" + "' '" + dir / "" + "' '" + std::string(NATSL_BINARY_DIR) +
                          "/natsl' > '" + dir / "stop.out" + "' 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  const std::string stop = read_text(dir / "stop.out");
  EXPECT_EQ(stop.find("NO_METRICS"), std::string::npos) << "run a logged no step within 60 s";
  const std::string out = read_text(dir / "sweep.out");
  EXPECT_EQ(stop.find("HUNG"), std::string::npos) << out;
  EXPECT_EQ(read_text(dir / "rc"), "0\n") << out;
  EXPECT_NE(out.find("stopping: the running trainers checkpoint and stop"), std::string::npos) << out;
  EXPECT_NE(out.find("stopped: 2 run(s) not started"), std::string::npos) << out;
  EXPECT_EQ(out.find("[2/3] b: started"), std::string::npos) << out;
  const Sweep sw = load_sweep(dir / "long.yaml");
  EXPECT_EQ(sweep_run_state(dir / "out/a", sw.runs[0].steps), SweepRunState::Partial) << out;
  EXPECT_EQ(sweep_run_state(dir / "out/b", sw.runs[1].steps), SweepRunState::New);
  EXPECT_NE(out.find("a: partial after"), std::string::npos) << out;
  EXPECT_NE(out.find(" s: step "), std::string::npos) << "the finished run's line carries its last step: " << out;
  const std::string md = read_text(dir / "out/summary.md");
  EXPECT_NE(md.find("| a |"), std::string::npos) << md;
}

// experiments/sweeps/pack_sweep.py packs a real sweep's output small (summary, configs, thinned metrics that keep
// the last row, log tails; no checkpoints), and read_sweep.py prints its table per task from the unpacked copy.
TEST(Sweep, PackAndReadScriptsWorkOnASweepsOutput) {
  if (std::system("python3 -c 'import lzma, tarfile' >/dev/null 2>&1") != 0) GTEST_SKIP() << "no python3 here";
  TempDir dir;
  write_text(dir / "base.yaml", kSmallConfig);
  write_text(dir / "s.yaml", "base: base.yaml\nout_dir: " + dir / "out" +
                                 "\noverrides: {train.steps: 7, train.eval_every: 3}\naxes:\n  - list: [{name: m_mqar}]\n");
  ASSERT_EQ(run_natsl("sweep " + dir / "s.yaml").exit_code, 0);
  const std::string scripts = std::string(NATSL_SOURCE_DIR) + "/experiments/sweeps/";
  ASSERT_EQ(std::system(("python3 " + scripts + "pack_sweep.py " + dir / "out" + " " + dir / "p.tar.xz" + " --every 5 > " +
                         dir / "pack.out 2>&1")
                            .c_str()),
            0)
      << read_text(dir / "pack.out");
  std::filesystem::create_directories(dir / "un");
  ASSERT_EQ(std::system(("tar -C " + dir / "un" + " -xJf " + dir / "p.tar.xz").c_str()), 0);
  EXPECT_TRUE(std::filesystem::exists(dir / "un/out/summary.md"));
  EXPECT_TRUE(std::filesystem::exists(dir / "un/out/m_mqar/config.yaml"));
  EXPECT_FALSE(std::filesystem::exists(dir / "un/out/m_mqar/checkpoints"));
  // Steps 1 (first), 3 and 6 (evaluations), 5 (--every 5) and 7 (the last row).
  const std::string thin = read_text(dir / "un/out/m_mqar/metrics.jsonl");
  EXPECT_EQ(std::count(thin.begin(), thin.end(), '\n'), 5) << thin;
  EXPECT_NE(thin.find("\"step\":7"), std::string::npos) << thin;
  ASSERT_EQ(std::system(("python3 " + scripts + "read_sweep.py " + dir / "un/out" + " > " + dir / "read.out 2>&1").c_str()), 0)
      << read_text(dir / "read.out");
  const std::string table = read_text(dir / "read.out");
  EXPECT_NE(table.find("### mqar: eval accuracy by step"), std::string::npos) << table;
  EXPECT_NE(table.find("| m_mqar | 7 |"), std::string::npos) << table;
}

// --parallel sets how many runs share the configs' device; with a devices list (one run per device) it is
// refused, naming the file, and nothing trains.
// The summary reports the last evaluation and the best one (lowest eval loss), with the step it came from: a
// run that overfits is read at its best evaluation. Rows without an eval, or with a non-finite loss, are not
// candidates; an unparsable last line (a killed run's write) is skipped.
TEST(Sweep, SummaryReportsTheLastAndTheBestEvaluation) {
  TempDir dir;
  write_text(dir / "base.yaml", kSmallConfig);
  write_text(dir / "s.yaml", "base: base.yaml\nout_dir: " + dir / "out" + "\noverrides: {train.steps: 5}\n" +
                                 "axes:\n  - list: [{name: a}]\n");
  std::filesystem::create_directories(dir / "out/a");
  write_text(dir / "out/a/metrics.jsonl", R"({"step": 1, "loss": 3.0}
{"step": 2, "loss": 2.5, "eval": {"loss": 2.0, "bpb": 3.0}}
{"step": 3, "loss": 2.0, "eval": {"loss": 1.5, "bpb": 2.25}}
{"step": 4, "loss": 1.5, "eval": {"loss": null, "bpb": 1.0}}
{"step": 5, "loss": 1.0, "eval": {"loss": 1.75, "bpb": 2.5}}
{"step": 6, "lo)");
  write_sweep_summary(load_sweep(dir / "s.yaml"));
  const std::string csv = read_text(dir / "out/summary.csv");
  EXPECT_NE(csv.find("train_loss,eval_loss,eval_accuracy,eval_bpb,best_eval_step,best_eval_loss,best_eval_accuracy,"
                     "best_eval_bpb,attn_frac"),
            std::string::npos)
      << csv;
  EXPECT_NE(csv.find("a,mqar,done,5,1.0000,1.7500,,2.5000,3,1.5000,,2.2500,"), std::string::npos) << csv;
}

TEST(Sweep, ParallelOptionIsRefusedBesideADevicesList) {
  TempDir dir;
  write_text(dir / "base.yaml", kSmallConfig);
  write_text(dir / "dev.yaml", "base: base.yaml\nout_dir: " + dir / "out" + "\ndevices: [cpu]\naxes:\n  - seeds: [1]\n");
  CommandResult r = run_natsl("sweep " + dir / "dev.yaml" + " --parallel 2");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("dev.yaml: --parallel 2 with a devices list"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir / "out/seed-1/metrics.jsonl"));
  r = run_natsl("sweep " + dir / "dev.yaml" + " --parallel 0");
  EXPECT_NE(r.exit_code, 0) << r.output;
}

TEST(Sweep, AFailedRunIsReportedAndTheOthersStillTrain) {
  TempDir dir;
  write_text(dir / "base.yaml", kSmallConfig);
  // A run that cannot start: a file stands where its directory goes.
  write_text(dir / "out/bad", "not a directory");
  write_text(dir / "s.yaml", "base: base.yaml\nout_dir: " + dir / "out" +
                                 "\naxes:\n  - list: [{name: bad}, {name: good}]\n");
  const CommandResult r = run_natsl("sweep " + dir / "s.yaml");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("1 runs failed"), std::string::npos) << r.output;
  EXPECT_NE(read_text(dir / "out/summary.csv").find("good,mqar,done,4,"), std::string::npos);
}

// Every config and sweep the repository ships loads (a sweep: every run's config validates). Sweep files are
// the YAML files under configs/sweeps/ with a base: key; the others there are their base configs.
TEST(ShippedConfigs, EveryConfigAndEverySweepLoads) {
  namespace fs = std::filesystem;
  const fs::path root = fs::path(NATSL_SOURCE_DIR) / "configs";
  int configs = 0, sweeps = 0;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    if (e.path().extension() != ".yaml") continue;
    SCOPED_TRACE(e.path().string());
    const std::string text = read_text(e.path().string());
    const bool is_sweep = text.rfind("base:", 0) == 0 || text.find("\nbase:") != std::string::npos;
    // Sweeps name paths relative to the repository root (out_dir, text files), as `natsl sweep` is run there.
    const fs::path cwd = fs::current_path();
    fs::current_path(NATSL_SOURCE_DIR);
    try {
      if (is_sweep) {
        EXPECT_FALSE(load_sweep(e.path().string()).runs.empty());
        ++sweeps;
      } else {
        RunConfig cfg;
        try {
          cfg = load_config(e.path().string());
        } catch (const InputError& ex) {
          // The text configs take their data on the command line, as their comments show.
          if (std::string(ex.what()).find("data.text.train names no file") == std::string::npos) throw;
          cfg = load_config(e.path().string(), {"data.text.train=[../shared/data/tinyshakespeare.txt]"});
        }
        // The paper's presets read Llama-2's SentencePiece tokens (the model file is the user's to give).
        if (e.path().filename().string().find("-340m") != std::string::npos) {
          EXPECT_EQ(cfg.tokenizer.kind, "sentencepiece");
          EXPECT_FALSE(cfg.tokenizer.model.empty());
        }
        ++configs;
      }
    } catch (const std::exception& ex) {
      ADD_FAILURE() << ex.what();
    }
    fs::current_path(cwd);
  }
  EXPECT_GE(configs, 8);
  EXPECT_GE(sweeps, 1);
}

}  // namespace
}  // namespace natsl
