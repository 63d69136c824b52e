#pragma once
// Shared by the fuzzers: inputs become files (the readers take paths), and what counts as a finding.
// A reader may reject bytes only with natsl::InputError (the CLI's "bad input", exit 2); any other
// exception escapes LLVMFuzzerTestOneInput and libFuzzer reports it as a crash, like a sanitizer error.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

namespace natsl::fuzz {

// An in-memory file (memfd) reachable by a path, rewritten for every input: no disk traffic.
class MemFile {
 public:
  MemFile() : fd_(memfd_create("natsl-fuzz", MFD_CLOEXEC)) {
    if (fd_ < 0) std::abort();
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  const std::string& set(const uint8_t* data, size_t size) {
    if (ftruncate(fd_, 0) != 0) std::abort();
    for (size_t done = 0; done < size;) {
      ssize_t w = pwrite(fd_, data + done, size - done, off_t(done));
      if (w <= 0) std::abort();
      done += size_t(w);
    }
    return path_;
  }
  const std::string& set(std::string_view s) { return set(reinterpret_cast<const uint8_t*>(s.data()), s.size()); }

 private:
  int fd_;
  std::string path_;
};

// A private directory for the process, removed at exit. The name is never destroyed: the exit handler
// that removes the directory runs after static destructors registered later.
inline const std::string& fuzz_dir() {
  static const std::string* dir = [] {
    std::string tmpl = (std::filesystem::temp_directory_path() / "natsl_fuzz_XXXXXX").string();
    if (!mkdtemp(tmpl.data())) std::abort();
    auto* d = new std::string(tmpl);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(fuzz_dir(), ec);
    });
    return d;
  }();
  return *dir;
}

// Writes a regular file under fuzz_dir() (for readers that take a directory or resolve relative paths).
inline std::string put_file(const std::string& name, std::string_view bytes) {
  std::string path = fuzz_dir() + "/" + name;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size() || std::fclose(f) != 0) std::abort();
  return path;
}

// A property the reader promises failed: report it as a crash with a message.
[[noreturn]] inline void broken(const char* what) {
  std::fprintf(stderr, "natsl fuzz: property violated: %s\n", what);
  std::abort();
}

}  // namespace natsl::fuzz
