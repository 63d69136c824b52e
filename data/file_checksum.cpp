#include "data/file_checksum.h"

#include <cerrno>
#include <cstring>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>

// Inline (header-only) use: no library to link, so a machine with only the header (NATSL_DEPS_DIR) builds it.
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "core/error.h"

namespace natsl {

struct Xxh3Stream::State {
  XXH3_state_t* s = nullptr;
};

Xxh3Stream::Xxh3Stream() : state_(std::make_unique<State>()) {
  state_->s = XXH3_createState();
  NATSL_CHECK(state_->s != nullptr, "out of memory for an XXH3 state");
  XXH3_64bits_reset(state_->s);
}

Xxh3Stream::~Xxh3Stream() { XXH3_freeState(state_->s); }

void Xxh3Stream::update(const void* data, size_t nbytes) { XXH3_64bits_update(state_->s, data, nbytes); }

uint64_t Xxh3Stream::digest() const { return XXH3_64bits_digest(state_->s); }

std::string checksum_hex(uint64_t h) { return fmt::format("{:016x}", h); }

uint64_t file_xxh3_64(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw InputError("cannot read '" + path + "': " + std::strerror(errno));
  Xxh3Stream h;
  std::vector<char> buf(size_t(4) << 20);
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      throw InputError("cannot read '" + path + "': " + std::strerror(err));
    }
    h.update(buf.data(), size_t(n));
  }
  ::close(fd);
  return h.digest();
}

}  // namespace natsl
