#pragma once
// OUT_DIR/metrics.jsonl: one JSON object per line, one line per optimizer step (plus eval results folded
// into the line of the step they ran after). Lines are flushed as written so a killed run keeps them.
#include <cstdint>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

namespace natsl {

class MetricsLog {
 public:
  // Opens `path` for appending. Existing lines whose "step" is above keep_through_step are dropped first:
  // a run resumed from step k replaces what an interrupted run logged after its checkpoint. A line that
  // does not parse (a torn last write) is dropped too.
  MetricsLog(const std::string& path, int64_t keep_through_step);
  void write(const nlohmann::json& row);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::ofstream out_;
};

}  // namespace natsl
