#include "core/error.h"

#include <cstring>

namespace natsl::detail {

void check_failed(const char* cond, const char* file, int line, const std::string& msg) {
  const char* base = std::strrchr(file, '/');
  std::ostringstream os;
  os << msg;
  if (cond) os << (msg.empty() ? "" : " ") << "[check `" << cond << "` failed";
  else os << " [";
  os << " at " << (base ? base + 1 : file) << ":" << line << "]";
  throw Error(ErrorKind::Internal, os.str());
}

}  // namespace natsl::detail
