#include "data/sync_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace natsl {

namespace {
[[noreturn]] void io_fail(const std::string& what, const std::string& path) {
  throw Error(what + " '" + path + "': " + std::strerror(errno));
}

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      io_fail("cannot write", path);
    }
    p += w;
    n -= size_t(w);
  }
}

void fsync_and_close(int fd, const std::string& path) {
  if (::fsync(fd) != 0) {
    int err = errno;
    ::close(fd);
    errno = err;
    io_fail("cannot fsync", path);
  }
  if (::close(fd) != 0) io_fail("cannot close", path);
}
}  // namespace

SyncedFile::SyncedFile(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) io_fail("cannot create", path);
}

SyncedFile::~SyncedFile() {
  if (fd_ >= 0) ::close(fd_);
}

void SyncedFile::write(const void* data, size_t n) { write_all(fd_, data, n, path_); }

void SyncedFile::close() {
  if (fd_ < 0) return;
  int fd = fd_;
  fd_ = -1;
  fsync_and_close(fd, path_);
}

AppendOnlyFile::AppendOnlyFile(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) io_fail("cannot open for appending", path);
}

AppendOnlyFile::~AppendOnlyFile() {
  if (fd_ >= 0) ::close(fd_);
}

void AppendOnlyFile::append(const std::string& record) {
  if (fd_ < 0) throw Error("'" + path_ + "' was already closed");
  write_all(fd_, record.data(), record.size(), path_);
}

void AppendOnlyFile::sync() {
  if (fd_ >= 0 && ::fsync(fd_) != 0) io_fail("cannot fsync", path_);
}

void AppendOnlyFile::close() {
  if (fd_ < 0) return;
  int fd = fd_;
  fd_ = -1;
  fsync_and_close(fd, path_);
}

void write_file_synced(const std::string& path, const std::string& contents) {
  SyncedFile f(path);
  f.write(contents.data(), contents.size());
  f.close();
}

void replace_file_atomically(const std::string& path, const std::string& contents) {
  replace_file_atomically_with(path, [&](const std::string& tmp) { write_file_synced(tmp, contents); });
}

void replace_file_atomically_with(const std::string& path, const std::function<void(const std::string& tmp)>& write) {
  const std::string tmp = path + ".tmp";
  try {
    write(tmp);
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    errno = err;
    io_fail("cannot rename '" + tmp + "' to", path);
  }
  std::string dir = std::filesystem::path(path).parent_path().string();
  fsync_directory(dir.empty() ? "." : dir);
}

void fsync_directory(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) io_fail("cannot open directory", dir);
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  errno = err;
  if (rc != 0) io_fail("cannot fsync directory", dir);
}

}  // namespace natsl
