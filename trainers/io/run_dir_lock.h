#pragma once
// The lock a training run holds on its train.out_dir for its whole life: flock(LOCK_EX) on OUT_DIR/.lock,
// which records the holder's pid. A second run into the same directory fails at once (InputError, exit 2)
// instead of interleaving its metrics and checkpoints with the first. The kernel drops a flock when its
// holder dies, so a killed run never leaves a stale lock behind.
#include <string>

namespace natsl {

class RunDirLock {
 public:
  // Creates out_dir if missing and takes the lock. A directory that cannot be created or written, or that
  // another run holds, is an InputError naming train.out_dir and the reason.
  explicit RunDirLock(const std::string& out_dir);
  // Releases the lock. A directory this lock created is removed again (if still empty but for the lock
  // file) unless keep_directory() was called: a run refused during setup leaves nothing behind.
  ~RunDirLock();
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;

  void keep_directory() { keep_ = true; }
  static constexpr const char* kFileName = ".lock";

 private:
  std::string dir_, lock_path_;
  std::string first_created_;  // the outermost directory this lock created ("" if out_dir existed)
  int fd_ = -1;
  bool keep_ = false;
};

}  // namespace natsl
