#include "trainers/sync_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace natsl {

namespace {
[[noreturn]] void io_fail(const std::string& what, const std::string& path) {
  throw Error(what + " '" + path + "': " + std::strerror(errno));
}
}  // namespace

SyncedFile::SyncedFile(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) io_fail("cannot create", path);
}

SyncedFile::~SyncedFile() {
  if (fd_ >= 0) ::close(fd_);
}

void SyncedFile::write(const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      io_fail("cannot write", path_);
    }
    p += w;
    n -= size_t(w);
  }
}

void SyncedFile::close() {
  if (fd_ < 0) return;
  if (::fsync(fd_) != 0) io_fail("cannot fsync", path_);
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) io_fail("cannot close", path_);
}

void write_file_synced(const std::string& path, const std::string& contents) {
  SyncedFile f(path);
  f.write(contents.data(), contents.size());
  f.close();
}

void fsync_directory(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) io_fail("cannot open directory", dir);
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) io_fail("cannot fsync directory", dir);
}

}  // namespace natsl
