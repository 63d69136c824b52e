#include "trainers/io/metrics_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace natsl {

namespace {
std::string read_whole_file(const std::string& path) {
  auto fail = [&] { return Error("cannot read the metrics log '" + path + "': " + std::strerror(errno)); };
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw fail();
  std::string text;
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      Error e = fail();
      ::close(fd);
      throw e;
    }
    if (n == 0) break;
    text.append(buf, size_t(n));
  }
  ::close(fd);
  return text;
}

// The lines of `text` a resumed run keeps: complete JSON objects with an integer step <= keep_through_step.
std::string kept_lines(const std::string& text, int64_t keep_through_step) {
  std::string kept;
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) break;  // no newline: the cut last write of a killed run
    std::string line = text.substr(begin, end - begin);
    begin = end + 1;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("step") && j["step"].is_number_integer() &&
        j["step"].get<int64_t>() <= keep_through_step)
      kept += line + "\n";
  }
  return kept;
}
}  // namespace

MetricsLog::MetricsLog(const std::string& path, int64_t keep_through_step) {
  // Only a regular file holds rows to filter; anything else (missing, a device, a fifo) is opened as it is.
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
    const std::string old = read_whole_file(path);
    const std::string kept = kept_lines(old, keep_through_step);
    if (kept != old) replace_file_atomically(path, kept);
  }
  out_ = std::make_unique<AppendOnlyFile>(path);
}

void MetricsLog::write(const nlohmann::json& row) { out_->append(row.dump() + "\n"); }

void MetricsLog::sync() { out_->sync(); }

}  // namespace natsl
