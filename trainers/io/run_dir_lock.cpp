#include "trainers/io/run_dir_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace fs = std::filesystem;

namespace natsl {

namespace {
InputError bad_out_dir(const std::string& dir, const std::string& why) {
  return InputError("train.out_dir '" + dir + "' " + why + "; give a writable directory as train.out_dir");
}
}  // namespace

RunDirLock::RunDirLock(const std::string& out_dir) {
  fs::path dir = fs::path(out_dir).lexically_normal();
  if (dir.filename().empty() && dir.has_parent_path()) dir = dir.parent_path();  // "runs/a/" -> "runs/a"
  dir_ = dir.string();
  lock_path_ = (dir / kFileName).string();
  std::error_code ec;
  if (fs::exists(dir, ec) && !fs::is_directory(dir, ec)) throw bad_out_dir(out_dir, "is a file, not a directory");
  // Remember the outermost directory created here, to remove it if setup fails.
  for (fs::path p = dir; !p.empty() && !fs::exists(p, ec); p = p.parent_path()) {
    first_created_ = p.string();
    if (p == p.parent_path()) break;
  }
  fs::create_directories(dir, ec);
  if (ec) {
    first_created_.clear();
    throw bad_out_dir(out_dir, "cannot be created (" + ec.message() + ")");
  }
  // access() and not only the open below: an existing lock file stays writable in a directory made read-only.
  if (::access(out_dir.c_str(), W_OK | X_OK) != 0) throw bad_out_dir(out_dir, std::string("is not writable (") + std::strerror(errno) + ")");
  fd_ = ::open(lock_path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw bad_out_dir(out_dir, "is not writable (cannot create " + lock_path_ + ": " + std::strerror(errno) + ")");
  while (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EINTR) continue;
    if (errno != EWOULDBLOCK)
      throw bad_out_dir(out_dir, "cannot be locked (flock on " + lock_path_ + ": " + std::strerror(errno) + ")");
    // Another run holds it. Its pid is in the file (absent if it is just starting).
    char buf[32] = {};
    ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
    std::string pid = n > 0 ? std::string(buf, size_t(n)) : "";
    while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
    const bool numeric = !pid.empty() && pid.find_first_not_of("0123456789") == std::string::npos;
    ::close(fd_);
    fd_ = -1;
    first_created_.clear();  // it is the other run's directory now
    throw InputError("train.out_dir '" + out_dir + "' is in use by another natsl run" +
                     (numeric ? " (pid " + pid + ")" : "") + " holding " + lock_path_ +
                     "; wait for it to end or give another train.out_dir");
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) != ssize_t(pid.size())) {
    const std::string why = std::strerror(errno);
    ::close(fd_);
    fd_ = -1;
    throw bad_out_dir(out_dir, "cannot be written (" + lock_path_ + ": " + why + ")");
  }
}

RunDirLock::~RunDirLock() {
  if (!keep_ && !first_created_.empty() && fd_ >= 0) {
    // Unlinked while still held, so a run starting now either sees our lock or finds no directory.
    ::unlink(lock_path_.c_str());
    for (fs::path p(dir_);; p = p.parent_path()) {
      if (::rmdir(p.c_str()) != 0 || p.string() == first_created_ || p == p.parent_path()) break;
    }
  }
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace natsl
