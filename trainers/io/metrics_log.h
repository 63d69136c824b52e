#pragma once
// OUT_DIR/metrics.jsonl: one JSON object per line, one line per optimizer step (plus eval results folded
// into the line of the step they ran after). The file is only ever appended to, each line in one write(2),
// so a killed run keeps every line but at most a cut last one; sync() before each checkpoint makes every
// line up to the checkpoint's step as durable as the checkpoint. Failed writes throw natsl::Error.
#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "data/sync_file.h"

namespace natsl {

class MetricsLog {
 public:
  // Opens `path` for appending. Existing lines whose "step" is above keep_through_step are dropped first:
  // a run resumed from step k replaces what an interrupted run logged after its checkpoint. A line that
  // does not parse (a cut last write) is dropped too. The kept lines replace the file atomically (a
  // temporary file renamed over it), so a crash during the rewrite leaves the old file or the new one.
  MetricsLog(const std::string& path, int64_t keep_through_step);
  void write(const nlohmann::json& row);
  void sync();
  const std::string& path() const { return out_->path(); }

 private:
  std::unique_ptr<AppendOnlyFile> out_;
};

}  // namespace natsl
