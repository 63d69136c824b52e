#include "trainers/sweep.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "core/error.h"
#include "trainers/io/checkpoint.h"
#include "trainers/config.h"
#include "trainers/stop_signal.h"
#include "data/sync_file.h"

extern char** environ;

namespace natsl {
namespace fs = std::filesystem;

namespace {

// One point of one axis: the (key, value) pairs it sets and the name it contributes.
struct AxisPoint {
  std::string name;  // explicit (a list entry's `name`), or empty: made from the pairs
  std::vector<std::pair<std::string, std::string>> pairs;
};

std::string at(const std::string& file, const YAML::Node& n) {
  return n.Mark().is_null() ? file : file + ":" + std::to_string(n.Mark().line + 1);
}

// A value as one line of YAML flow text (what a KEY=VALUE override parses back to the same value).
std::string flow(const YAML::Node& n) {
  YAML::Emitter e;
  e.SetMapFormat(YAML::Flow);
  e.SetSeqFormat(YAML::Flow);
  e << n;
  return e.c_str();
}

// The part of a run name a value gives: flow text without brackets and spaces, ',' -> '+', and only
// [A-Za-z0-9._+-] kept (anything else becomes '_').
std::string name_part(const std::string& key, const std::string& value) {
  std::string leaf = key.substr(key.rfind('.') == std::string::npos ? 0 : key.rfind('.') + 1), v;
  for (char c : value) {
    if (c == '[' || c == ']' || c == '{' || c == '}' || c == ' ' || c == '"' || c == '\'') continue;
    v += c == ',' ? '+' : (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '+') ? c : '_';
  }
  return leaf + "-" + v;
}

std::string point_name(const AxisPoint& p) {
  if (!p.name.empty()) return p.name;
  std::string n;
  for (const auto& [k, v] : p.pairs) n += (n.empty() ? "" : "_") + name_part(k, v);
  return n;
}

void require_map(const std::string& file, const YAML::Node& n, const std::string& what) {
  if (!n.IsMap() || n.size() == 0)
    throw InputError(at(file, n) + ": " + what + " must be a non-empty mapping of config keys to values");
}
void require_seq(const std::string& file, const YAML::Node& n, const std::string& what) {
  if (!n.IsSequence() || n.size() == 0) throw InputError(at(file, n) + ": " + what + " must be a non-empty list");
}

std::vector<AxisPoint> grid_axis(const std::string& file, const YAML::Node& g) {
  require_map(file, g, "grid");
  std::vector<AxisPoint> pts{AxisPoint{}};
  for (const auto& kv : g) {
    const std::string key = kv.first.as<std::string>();
    require_seq(file, kv.second, "grid." + key);
    std::vector<AxisPoint> next;
    for (const AxisPoint& p : pts)
      for (const auto& v : kv.second) {
        AxisPoint q = p;
        q.pairs.emplace_back(key, flow(v));
        next.push_back(q);
      }
    pts = std::move(next);
  }
  return pts;
}

std::vector<AxisPoint> zip_axis(const std::string& file, const YAML::Node& z) {
  require_map(file, z, "zip");
  size_t len = 0;
  std::string first;
  for (const auto& kv : z) {
    const std::string key = kv.first.as<std::string>();
    require_seq(file, kv.second, "zip." + key);
    if (first.empty()) first = key, len = kv.second.size();
    else if (kv.second.size() != len)
      throw InputError(at(file, kv.second) + ": zip." + key + " has " + std::to_string(kv.second.size()) +
                       " values but zip." + first + " has " + std::to_string(len) + "; zipped lists must be as long");
  }
  std::vector<AxisPoint> pts(len);
  for (const auto& kv : z)
    for (size_t i = 0; i < len; ++i) pts[i].pairs.emplace_back(kv.first.as<std::string>(), flow(kv.second[i]));
  return pts;
}

std::vector<AxisPoint> list_axis(const std::string& file, const YAML::Node& l) {
  require_seq(file, l, "list");
  std::vector<AxisPoint> pts;
  for (const auto& entry : l) {
    if (!entry.IsMap()) throw InputError(at(file, entry) + ": each list entry must be a mapping (name and config keys)");
    AxisPoint p;
    for (const auto& kv : entry) {
      const std::string key = kv.first.as<std::string>();
      if (key == "name") p.name = kv.second.as<std::string>();
      else p.pairs.emplace_back(key, flow(kv.second));
    }
    if (p.name.empty() && p.pairs.empty()) throw InputError(at(file, entry) + ": an empty list entry");
    pts.push_back(p);
  }
  return pts;
}

std::vector<AxisPoint> seeds_axis(const std::string& file, const YAML::Node& s) {
  require_seq(file, s, "seeds");
  std::vector<AxisPoint> pts;
  for (const auto& v : s) {
    if (!v.IsScalar()) throw InputError(at(file, v) + ": seeds must be integers");
    pts.push_back(AxisPoint{"", {{"train.seed", flow(v)}}});
  }
  return pts;
}

std::vector<AxisPoint> read_axis(const std::string& file, const YAML::Node& axis) {
  if (!axis.IsMap() || axis.size() != 1)
    throw InputError(at(file, axis) + ": each entry of axes is one of grid:, zip:, list: or seeds:");
  const std::string kind = axis.begin()->first.as<std::string>();
  const YAML::Node body = axis.begin()->second;  // a copy: the iterator yields a temporary
  if (kind == "grid") return grid_axis(file, body);
  if (kind == "zip") return zip_axis(file, body);
  if (kind == "list") return list_axis(file, body);
  if (kind == "seeds") return seeds_axis(file, body);
  throw InputError(at(file, axis) + ": unknown axis kind '" + kind + "' (grid, zip, list or seeds)");
}

std::vector<std::string> read_overrides(const std::string& file, const YAML::Node& n) {
  std::vector<std::string> out;
  if (!n.IsDefined() || n.IsNull()) return out;
  if (n.IsMap()) {
    for (const auto& kv : n) out.push_back(kv.first.as<std::string>() + "=" + flow(kv.second));
  } else if (n.IsSequence()) {
    for (const auto& v : n) out.push_back(v.as<std::string>());
  } else if (!n.IsNull()) {
    throw InputError(at(file, n) + ": overrides must be a mapping KEY: VALUE (or a list of KEY=VALUE)");
  }
  return out;
}

// The last complete line of metrics.jsonl as JSON rows (a cut last line, from a killed run, is skipped).
std::vector<nlohmann::json> metrics_rows(const std::string& run_dir) {
  std::vector<nlohmann::json> rows;
  std::ifstream in(fs::path(run_dir) / "metrics.jsonl");
  std::string text((std::istreambuf_iterator<char>(in)), {});
  size_t begin = 0;
  while (begin < text.size()) {
    const size_t end = text.find('\n', begin);
    if (end == std::string::npos) break;
    nlohmann::json j = nlohmann::json::parse(text.substr(begin, end - begin), nullptr, false);
    if (j.is_object() && j.contains("step") && j["step"].is_number_integer()) rows.push_back(std::move(j));
    begin = end + 1;
  }
  return rows;
}

std::string run_dir_of(const Sweep& s, const SweepRun& r) { return (fs::path(s.out_dir) / r.name).string(); }

std::vector<std::string> train_args(const Sweep& s, const SweepRun& r, const std::string& device) {
  std::vector<std::string> a = {"train", s.base};
  a.insert(a.end(), r.overrides.begin(), r.overrides.end());
  a.push_back("train.out_dir=" + run_dir_of(s, r));
  if (!device.empty()) a.push_back("train.device=" + device);
  a.push_back("resume=auto");
  return a;
}

}  // namespace

namespace {
Sweep parse_sweep(const std::string& path);
}

Sweep load_sweep(const std::string& path) {
  try {
    return parse_sweep(path);
  } catch (const YAML::Exception& e) {
    // A value of the wrong type (a list where a number goes, ...): yaml-cpp's message names the line.
    throw InputError("sweep file '" + path + "': " + e.what());
  }
}

namespace {
Sweep parse_sweep(const std::string& path) {
  Sweep s;
  s.path = path;
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    throw InputError("sweep file '" + path + "' cannot be read (does it exist?)");
  } catch (const YAML::Exception& e) {
    throw InputError("sweep file '" + path + "' is not valid YAML: " + e.what());
  }
  if (!root.IsMap()) throw InputError("sweep file '" + path + "' must be a mapping (base:, out_dir:, axes:, ...)");
  const std::set<std::string> known = {"base", "out_dir", "overrides", "devices", "parallel", "axes"};
  for (const auto& kv : root) {
    const std::string k = kv.first.as<std::string>();
    if (!known.count(k))
      throw InputError(at(path, kv.first) + ": unknown key '" + k +
                       "'; a sweep file has base, out_dir, overrides, devices, parallel and axes");
  }
  if (!root["base"] || !root["base"].IsScalar())
    throw InputError("sweep file '" + path + "' has no base: (the run config the sweep varies)");
  const fs::path dir = fs::path(path).parent_path();
  const fs::path base = root["base"].as<std::string>();
  s.base = (base.is_absolute() ? base : dir / base).lexically_normal().string();
  s.out_dir = root["out_dir"] ? root["out_dir"].as<std::string>()
                              : (fs::path("runs/sweeps") / fs::path(path).stem()).string();
  s.overrides = read_overrides(path, root["overrides"]);
  if (root["devices"]) {
    require_seq(path, root["devices"], "devices");
    for (const auto& d : root["devices"]) s.devices.push_back(d.as<std::string>());
  }
  if (root["parallel"]) {
    s.parallel = root["parallel"].as<int64_t>();
    if (s.parallel < 1) throw InputError(at(path, root["parallel"]) + ": parallel must be at least 1");
  }
  if (!s.devices.empty()) s.parallel = int64_t(s.devices.size());

  std::vector<AxisPoint> runs{AxisPoint{}};
  std::vector<std::string> run_names{""};
  if (root["axes"]) {
    require_seq(path, root["axes"], "axes");
    for (const auto& axis : root["axes"]) {
      const std::vector<AxisPoint> pts = read_axis(path, axis);
      for (const AxisPoint& p : pts)
        for (const auto& pair : p.pairs)
          if (std::find(s.swept_keys.begin(), s.swept_keys.end(), pair.first) == s.swept_keys.end())
            s.swept_keys.push_back(pair.first);
      std::vector<AxisPoint> next;
      std::vector<std::string> names;
      for (size_t i = 0; i < runs.size(); ++i)
        for (const AxisPoint& p : pts) {
          AxisPoint q = runs[i];
          for (const auto& pair : p.pairs) {
            for (const auto& have : q.pairs)
              if (have.first == pair.first)
                throw InputError(at(path, axis) + ": '" + pair.first + "' is set by two axes; each key may be swept once");
            q.pairs.push_back(pair);
          }
          next.push_back(q);
          const std::string part = point_name(p);
          names.push_back(run_names[i].empty() ? part : part.empty() ? run_names[i] : run_names[i] + "_" + part);
        }
      runs = std::move(next);
      run_names = std::move(names);
    }
  }
  std::set<std::string> seen;
  for (size_t i = 0; i < runs.size(); ++i) {
    SweepRun r;
    r.name = run_names[i].empty() ? "run" : run_names[i];
    if (!seen.insert(r.name).second)
      throw InputError("sweep file '" + path + "': two runs are named '" + r.name +
                       "'; give the list entries distinct name: values");
    r.swept = runs[i].pairs;
    r.overrides = s.overrides;
    for (const auto& [k, v] : r.swept) r.overrides.push_back(k + "=" + v);
    std::vector<std::string> check = r.overrides;
    check.push_back("train.out_dir=" + run_dir_of(s, r));
    try {
      const RunConfig cfg = load_config(s.base, check);
      r.steps = cfg.train.steps;
      r.task = cfg.data.source;
    } catch (const InputError& e) {
      throw InputError("sweep file '" + path + "', run '" + r.name + "': " + e.what());
    }
    s.runs.push_back(std::move(r));
  }
  return s;
}
}  // namespace

SweepRunState sweep_run_state(const std::string& run_dir, int64_t steps) {
  std::error_code ec;
  if (!fs::exists(fs::path(run_dir) / "metrics.jsonl", ec) && list_checkpoint_steps(run_dir).empty())
    return SweepRunState::New;
  const std::vector<nlohmann::json> rows = metrics_rows(run_dir);
  if (!rows.empty() && rows.back()["step"].get<int64_t>() >= steps) return SweepRunState::Done;
  return SweepRunState::Partial;
}

const char* sweep_run_state_name(SweepRunState s) {
  return s == SweepRunState::Done ? "done" : s == SweepRunState::Partial ? "partial" : "new";
}

namespace {
std::string run_brief(const std::string& run_dir);
}  // namespace

int run_sweep(const Sweep& sweep, const SweepOptions& opts) {
  FILE* out = opts.out;
  std::vector<size_t> todo;
  fmt::print(out, "sweep {}: {} runs of {} in {}\n", sweep.path, sweep.runs.size(), sweep.base, sweep.out_dir);
  for (size_t i = 0; i < sweep.runs.size(); ++i) {
    const SweepRun& r = sweep.runs[i];
    const SweepRunState st = sweep_run_state(run_dir_of(sweep, r), r.steps);
    std::string swept;
    for (const auto& [k, v] : r.swept) swept += " " + k + "=" + v;
    fmt::print(out, "  {:<8} {}{}\n", sweep_run_state_name(st), r.name, swept);
    if (st != SweepRunState::Done) todo.push_back(i);
  }
  if (opts.dry_run) return 0;
  if (todo.empty()) {
    fmt::print(out, "every run is done\n");
    write_sweep_summary(sweep);
    return 0;
  }

  // Slots: the listed devices, or `parallel` runs on the configs' own device. Side by side on the CPU, each
  // run gets an equal share of the cores (unless OMP_NUM_THREADS is set).
  std::vector<std::string> slots = sweep.devices;
  if (slots.empty()) slots.assign(size_t(sweep.parallel), "");
  std::vector<std::string> env_strings;
  for (char** e = environ; *e; ++e) env_strings.emplace_back(*e);
  if (sweep.devices.empty() && sweep.parallel > 1 && !std::getenv("OMP_NUM_THREADS"))
    env_strings.push_back("OMP_NUM_THREADS=" +
                          std::to_string(std::max<int64_t>(1, int64_t(std::thread::hardware_concurrency()) / sweep.parallel)));
  std::vector<char*> envp;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);

  struct Running {
    pid_t pid;
    size_t run, slot;
    std::chrono::steady_clock::time_point start;
  };
  std::vector<Running> running;
  std::vector<bool> busy(slots.size(), false);
  size_t next = 0;
  int failed = 0;
  bool forwarded = false;
  StopSignalGuard signals;
  // Once a stop is asked for, the runs not yet started stay new (the next invocation starts them): the loop
  // then waits only for the running ones.
  while (!running.empty() || (!signals.requested() && next < todo.size())) {
    while (!signals.requested() && next < todo.size()) {
      const auto free = std::find(busy.begin(), busy.end(), false);
      if (free == busy.end()) break;
      const size_t slot = size_t(free - busy.begin());
      const SweepRun& r = sweep.runs[todo[next]];
      const std::string dir = run_dir_of(sweep, r);
      std::error_code ec;
      fs::create_directories(dir, ec);
      if (ec || !fs::is_directory(dir)) {
        ++failed;
        fmt::print(out, "[{}/{}] {}: FAILED: cannot create its directory {} ({})\n", next + 1, todo.size(), r.name,
                   dir, ec ? ec.message() : "a file is in the way");
        ++next;
        continue;
      }
      std::vector<std::string> args = train_args(sweep, r, slots[slot]);
      std::vector<char*> argv{const_cast<char*>(opts.natsl_binary.c_str())};
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      // The log is appended to, so a resumed run keeps its earlier lines; the trainer gets its own process
      // group, so a terminal's Ctrl-C reaches only the sweep, which passes one SIGTERM on.
      const std::string log = (fs::path(dir) / "train.log").string();
      posix_spawn_file_actions_t fa;
      posix_spawn_file_actions_init(&fa);
      posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      posix_spawn_file_actions_adddup2(&fa, 1, 2);
      posix_spawnattr_t attr;
      posix_spawnattr_init(&attr);
      posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
      posix_spawnattr_setpgroup(&attr, 0);
      pid_t pid = -1;
      const int rc = posix_spawn(&pid, opts.natsl_binary.c_str(), &fa, &attr, argv.data(), envp.data());
      posix_spawn_file_actions_destroy(&fa);
      posix_spawnattr_destroy(&attr);
      if (rc != 0) throw Error("cannot start '" + opts.natsl_binary + "': " + std::strerror(rc));
      busy[slot] = true;
      running.push_back({pid, todo[next], slot, std::chrono::steady_clock::now()});
      fmt::print(out, "[{}/{}] {}: started{} (log {})\n", next + 1, todo.size(), r.name,
                 slots[slot].empty() ? "" : " on " + slots[slot], log);
      std::fflush(out);
      ++next;
    }
    if (signals.requested() && !forwarded) {
      fmt::print(out, "stopping: the running trainers checkpoint and stop; run the sweep again to resume\n");
      for (const Running& r : running) ::kill(r.pid, SIGTERM);
      forwarded = true;
    }
    int status = 0;
    const pid_t done = ::waitpid(-1, &status, WNOHANG);
    if (done < 0 && errno == ECHILD) {
      // No child left to wait for, yet some are listed as running (reaped elsewhere): they cannot be waited on.
      for (const Running& lost : running) {
        ++failed;
        fmt::print(out, "{}: FAILED: its trainer can no longer be waited for; see {}/train.log\n",
                   sweep.runs[lost.run].name, run_dir_of(sweep, sweep.runs[lost.run]));
      }
      running.clear();
      continue;
    }
    if (done <= 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    const auto it = std::find_if(running.begin(), running.end(), [&](const Running& r) { return r.pid == done; });
    if (it == running.end()) continue;
    const SweepRun& r = sweep.runs[it->run];
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - it->start).count();
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (forwarded && code == 128 + SIGTERM) {
      // The forwarded SIGTERM reached the trainer before its own handler was installed (it was starting up):
      // stopped, not failed; it resumes from its last checkpoint, or starts afresh, next time.
      fmt::print(out, "{}: stopped while starting, after {:.0f} s ({})\n", r.name, secs,
                 sweep_run_state_name(sweep_run_state(run_dir_of(sweep, r), r.steps)));
    } else if (code == 0) {
      fmt::print(out, "{}: {} after {:.0f} s{}\n", r.name,
                 sweep_run_state_name(sweep_run_state(run_dir_of(sweep, r), r.steps)), secs,
                 run_brief(run_dir_of(sweep, r)));
    } else {
      ++failed;
      fmt::print(out, "{}: FAILED (exit {}) after {:.0f} s; see {}/train.log\n", r.name, code, secs,
                 run_dir_of(sweep, r));
    }
    std::fflush(out);
    busy[it->slot] = false;
    running.erase(it);
    // The summary as it stands after every run that ends, so a sweep killed later still leaves one. A failed
    // write here is a warning (the trainers still running must be waited for); the final one below is an error.
    try {
      write_sweep_summary(sweep);
    } catch (const std::exception& e) {
      fmt::print(out, "warning: the summary could not be written now ({}); trying again when the next run ends\n",
                 e.what());
    }
  }
  if (next < todo.size())
    fmt::print(out, "stopped: {} run(s) not started; run the sweep again to start them\n", todo.size() - next);
  write_sweep_summary(sweep);
  fmt::print(out, "summary: {}/summary.csv, {}/summary.md{}\n", sweep.out_dir, sweep.out_dir,
             failed ? fmt::format(" ({} runs failed)", failed) : "");
  return failed;
}

namespace {

std::string num(double v, int digits = 4) { return std::isfinite(v) ? fmt::format("{:.{}f}", v, digits) : ""; }

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

// Mean of the stats whose key ends in ".<name>" (a per-layer statistic) in row, and the per-layer values
// in layer order joined by '/'.
std::pair<double, std::string> layer_stat(const nlohmann::json& row, const std::string& name) {
  if (!row.contains("stats")) return {NAN, ""};
  std::map<int64_t, double> by_layer;
  for (const auto& [k, v] : row["stats"].items()) {
    if (!v.is_number() || k.size() <= name.size() + 1 || k.compare(k.size() - name.size() - 1, std::string::npos, "." + name) != 0)
      continue;
    if (k.rfind("layers.", 0) != 0) continue;
    by_layer[std::atoll(k.c_str() + 7)] = v.get<double>();
  }
  if (by_layer.empty()) return {NAN, ""};
  double sum = 0;
  std::string per;
  for (const auto& [l, v] : by_layer) {
    sum += v;
    per += (per.empty() ? "" : "/") + num(v, 3);
  }
  return {sum / double(by_layer.size()), per};
}

// ": step S, eval loss L, eval accuracy A, eval bpb B, routed_frac F" from a run's metrics (its last evaluation
// and the last row's mean routed fraction, as far as logged), so the sweep's own log keeps each run's result.
std::string run_brief(const std::string& run_dir) {
  const std::vector<nlohmann::json> m = metrics_rows(run_dir);
  if (m.empty()) return "";
  std::string s = fmt::format(": step {}", m.back()["step"].get<int64_t>());
  for (auto it = m.rbegin(); it != m.rend(); ++it) {
    if (!it->contains("eval") || !(*it)["eval"].is_object()) continue;
    const nlohmann::json& ev = (*it)["eval"];
    for (const char* k : {"loss", "accuracy", "bpb"})
      if (ev.contains(k) && ev[k].is_number()) s += fmt::format(", eval {} {}", k, num(ev[k].get<double>()));
    break;
  }
  const double rf = layer_stat(m.back(), "routed_frac").first;
  if (std::isfinite(rf)) s += fmt::format(", routed_frac {}", num(rf, 3));
  return s;
}

}  // namespace

void write_sweep_summary(const Sweep& sweep) {
  std::vector<std::string> header = {"run", "task"};
  header.insert(header.end(), sweep.swept_keys.begin(), sweep.swept_keys.end());
  for (const char* c : {"state", "steps", "train_loss", "eval_loss", "eval_accuracy", "eval_bpb", "best_eval_step",
                        "best_eval_loss", "best_eval_accuracy", "best_eval_bpb", "attn_frac", "routed_frac",
                        "attn_frac_per_layer", "tokens_per_s", "peak_mem_gib", "train_s"})
    header.push_back(c);
  std::vector<std::vector<std::string>> rows;
  for (const SweepRun& r : sweep.runs) {
    const std::string dir = run_dir_of(sweep, r);
    const std::vector<nlohmann::json> m = metrics_rows(dir);
    std::vector<std::string> row = {r.name, r.task};
    for (const auto& key : sweep.swept_keys) {
      std::string v;
      for (const auto& [k, val] : r.swept)
        if (k == key) v = val;
      row.push_back(v);
    }
    row.push_back(sweep_run_state_name(sweep_run_state(dir, r.steps)));
    auto field = [](const nlohmann::json& j, const char* k) {
      return j.contains(k) && j[k].is_number() ? j[k].get<double>() : NAN;
    };
    // The last evaluation, and the best one (lowest eval loss; the earliest of equals): a run that overfits
    // its corpus is best read at its best evaluation, not its last.
    nlohmann::json last = m.empty() ? nlohmann::json::object() : m.back(), ev = nlohmann::json::object();
    nlohmann::json best = nlohmann::json::object();
    int64_t best_step = -1;
    for (const auto& x : m) {
      if (!x.contains("eval") || !x["eval"].is_object()) continue;
      ev = x["eval"];
      const double loss = field(ev, "loss");
      if (std::isfinite(loss) && (best_step < 0 || loss < field(best, "loss"))) {
        best = ev;
        best_step = x["step"].get<int64_t>();
      }
    }
    row.push_back(m.empty() ? "" : std::to_string(last["step"].get<int64_t>()));
    row.push_back(num(field(last, "loss")));
    auto push_eval = [&](const nlohmann::json& e) {
      for (const char* k : {"loss", "accuracy", "bpb"}) row.push_back(num(field(e, k)));
    };
    push_eval(ev);
    row.push_back(best_step < 0 ? "" : std::to_string(best_step));
    push_eval(best);
    const auto [attn, per_layer] = layer_stat(last, "attn_frac");
    row.push_back(num(attn, 3));
    row.push_back(num(layer_stat(last, "routed_frac").first, 3));
    row.push_back(per_layer);
    std::vector<double> tps;
    double peak = NAN, train_s = 0;
    for (size_t i = 0; i < m.size(); ++i) {
      if (i > 0 && std::isfinite(field(m[i], "tokens_per_s"))) tps.push_back(field(m[i], "tokens_per_s"));
      const double p = field(m[i], "peak_mem_bytes");
      if (std::isfinite(p)) peak = std::isfinite(peak) ? std::max(peak, p) : p;
      if (std::isfinite(field(m[i], "step_time_s"))) train_s += field(m[i], "step_time_s");
    }
    std::sort(tps.begin(), tps.end());
    row.push_back(tps.empty() ? "" : num(tps[tps.size() / 2], 0));  // the median step's speed
    row.push_back(num(peak / double(1 << 30), 3));
    row.push_back(m.empty() ? "" : num(train_s, 1));
    rows.push_back(std::move(row));
  }
  std::ostringstream csv, md;
  auto line = [&](std::ostringstream& o, const std::vector<std::string>& cells, bool markdown) {
    for (size_t i = 0; i < cells.size(); ++i)
      o << (markdown ? "| " : (i ? "," : "")) << (markdown ? cells[i] + " " : csv_field(cells[i]));
    o << (markdown ? "|\n" : "\n");
  };
  line(csv, header, false);
  for (const auto& r : rows) line(csv, r, false);
  md << "# Sweep " << sweep.path << "\n\nBase config: `" << sweep.base << "`. Columns: docs/training.md, \"Sweeps\".\n\n";
  line(md, header, true);
  line(md, std::vector<std::string>(header.size(), "---"), true);
  for (const auto& r : rows) line(md, r, true);
  fs::create_directories(sweep.out_dir);
  replace_file_atomically((fs::path(sweep.out_dir) / "summary.csv").string(), csv.str());
  replace_file_atomically((fs::path(sweep.out_dir) / "summary.md").string(), md.str());
}

}  // namespace natsl
