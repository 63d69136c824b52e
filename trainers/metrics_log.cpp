#include "trainers/metrics_log.h"

#include <filesystem>
#include <sstream>

#include "core/error.h"
#include "trainers/sync_file.h"

namespace natsl {

MetricsLog::MetricsLog(const std::string& path, int64_t keep_through_step) : path_(path) {
  std::error_code ec;
  if (std::filesystem::exists(path, ec)) {
    std::ifstream in(path);
    std::string kept, line;
    while (std::getline(in, line)) {
      nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.value("step", int64_t(-1)) <= keep_through_step) kept += line + "\n";
    }
    write_file_synced(path, kept);
  }
  out_.open(path, std::ios::app);
  if (!out_) throw Error("cannot open the metrics log '" + path + "' for writing");
}

void MetricsLog::write(const nlohmann::json& row) {
  out_ << row.dump() << "\n";
  out_.flush();
}

}  // namespace natsl
