#pragma once
// Files that are on disk when we say so: a write-only file whose close() flushes and fsyncs, and an fsync of
// a directory (so a rename or a new entry in it survives a crash). Failures throw natsl::Error with the path
// and errno text.
#include <cstddef>
#include <string>

namespace natsl {

class SyncedFile {
 public:
  explicit SyncedFile(const std::string& path);  // creates or truncates
  ~SyncedFile();
  SyncedFile(const SyncedFile&) = delete;
  SyncedFile& operator=(const SyncedFile&) = delete;
  void write(const void* data, size_t n);
  void close();  // fsync + close; the destructor closes without the check

 private:
  std::string path_;
  int fd_ = -1;
};

void write_file_synced(const std::string& path, const std::string& contents);
void fsync_directory(const std::string& dir);

}  // namespace natsl
