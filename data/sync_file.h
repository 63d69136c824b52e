#pragma once
// Files that are on disk when we say so: a write-only file whose close() flushes and fsyncs, a file that is
// only ever appended to, a whole-file replacement that a crash cannot leave half-written, and an fsync of a
// directory (so a rename or a new entry in it survives a crash). Every call goes straight to the system
// calls and checks them; failures throw natsl::Error with the path and the errno text.
#include <cstddef>
#include <functional>
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

// Opened with O_APPEND: a record handed to append() goes to the end in one write(2) where the kernel takes it
// whole, so a killed process leaves at most its last record cut, never an earlier one.
class AppendOnlyFile {
 public:
  explicit AppendOnlyFile(const std::string& path);  // creates if missing, keeps what is there
  ~AppendOnlyFile();
  AppendOnlyFile(const AppendOnlyFile&) = delete;
  AppendOnlyFile& operator=(const AppendOnlyFile&) = delete;
  void append(const std::string& record);
  void sync();   // fsync: everything appended so far survives a crash of the machine
  void close();  // sync + close; the destructor closes without the check
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

void write_file_synced(const std::string& path, const std::string& contents);
// Replaces `path` with `contents` so that a crash at any moment leaves either the old file or the new one:
// written to PATH.tmp, fsynced, renamed over PATH, then the directory fsynced.
void replace_file_atomically(const std::string& path, const std::string& contents);
// The same for a file another writer makes: write(tmp) writes and fsyncs PATH.tmp (e.g. write_safetensors),
// which is then renamed over PATH and the directory fsynced; if write throws, PATH.tmp is removed and PATH
// stays as it was.
void replace_file_atomically_with(const std::string& path, const std::function<void(const std::string& tmp)>& write);
void fsync_directory(const std::string& dir);

}  // namespace natsl
