#pragma once
// Benchmark result rows as BENCHMARKS.md keeps them: one JSON object per line with name, shape, ours_ms, peer,
// peer_ms, ratio (ours / peer), gpu, commit, date. A row without a peer (peer_ms <= 0) carries null for peer,
// peer_ms and ratio. Every benchmark program writes its rows through result_row, adding its own fields.
// "timing" names the timing method of bench_timing.h ("flush" or "sync"); rows written before it existed were
// timed by "sync".
#include <cstdio>
#include <ctime>
#include <exception>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "experiments/bench/bench_timing.h"

namespace natsl::bench {

// Today's date (UTC) as YYYY-MM-DD.
inline std::string utc_date() {
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%d", std::gmtime(&now));
  return date;
}

// The peer's anchors file as peers.py writes it ({"rows": [...]}); empty path: no peer. A missing or unreadable
// file gives a warning and an empty object (the peer columns stay empty: peers.py may have failed).
inline nlohmann::json read_peer_file(const std::string& path) {
  if (path.empty()) return nlohmann::json::object();
  std::ifstream f(path);
  if (!f) {
    std::fprintf(stderr, "warning: cannot open peer file %s: no peer figures\n", path.c_str());
    return nlohmann::json::object();
  }
  try {
    nlohmann::json j = nlohmann::json::parse(f);
    if (j.is_object()) return j;
    std::fprintf(stderr, "warning: peer file %s is not a JSON object: no peer figures\n", path.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "warning: peer file %s is not JSON (%s): no peer figures\n", path.c_str(), e.what());
  }
  return nlohmann::json::object();
}

inline nlohmann::json result_row(const std::string& name, const std::string& shape, double ours_ms,
                                 const std::string& peer, double peer_ms, const std::string& gpu,
                                 const std::string& commit, const std::string& date) {
  nlohmann::json row = {{"name", name},   {"shape", shape},   {"ours_ms", ours_ms}, {"peer", nullptr},
                        {"peer_ms", nullptr}, {"ratio", nullptr}, {"gpu", gpu},         {"commit", commit},
                        {"date", date}, {"timing", timing_method()}};
  if (peer_ms > 0) {
    row["peer"] = peer;
    row["peer_ms"] = peer_ms;
    row["ratio"] = ours_ms / peer_ms;
  }
  return row;
}

}  // namespace natsl::bench
