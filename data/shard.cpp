#include "data/shard.h"

#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "data/crc32.h"

static_assert(std::endian::native == std::endian::little, "token shards are read by mapping little-endian bytes");

namespace natsl {
namespace {

constexpr const char* kFormatDoc = "docs/data-format.md";

void put_u32(unsigned char* p, uint32_t v) { std::memcpy(p, &v, 4); }
void put_u64(unsigned char* p, uint64_t v) { std::memcpy(p, &v, 8); }
uint32_t get_u32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
uint64_t get_u64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

bool write_all(int fd, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= size_t(w);
  }
  return true;
}

// So the rename survives a crash; a directory that cannot be opened or synced is an error too.
void fsync_parent_directory(const std::string& path) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  const std::string dir = parent.empty() ? std::string(".") : parent.string();
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0 || ::fsync(fd) != 0) {
    const int err = errno;
    if (fd >= 0) ::close(fd);
    throw InputError("cannot sync directory '" + dir + "' after writing '" + path + "': " + std::strerror(err));
  }
  ::close(fd);
}

template <class T>
uint32_t max_of(const unsigned char* p, size_t n) {
  uint32_t mx = 0;
  for (size_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, p + i * sizeof(T), sizeof(T));
    mx = std::max<uint32_t>(mx, v);
  }
  return mx;
}

// One pass over the token bytes in cache-sized blocks: the CRC (when asked) and the largest id.
struct TokenScan {
  uint32_t crc = 0, max_token = 0;
};
TokenScan scan_tokens(const unsigned char* p, uint64_t nbytes, uint32_t token_bytes, bool with_crc) {
  constexpr size_t kBlock = size_t(1) << 16;  // a multiple of both widths
  TokenScan r;
  for (uint64_t off = 0; off < nbytes; off += kBlock) {
    const size_t n = size_t(std::min<uint64_t>(kBlock, nbytes - off));
    if (with_crc) r.crc = crc32_update(r.crc, p + off, n);
    const uint32_t mx = token_bytes == 2 ? max_of<uint16_t>(p + off, n / 2) : max_of<uint32_t>(p + off, n / 4);
    r.max_token = std::max(r.max_token, mx);
  }
  return r;
}

std::string printable(const unsigned char* p, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    if (p[i] >= 32 && p[i] < 127) s += char(p[i]);
    else s += "\\x" + hex32(p[i]).substr(8);
  }
  return s;
}

}  // namespace

uint32_t token_bytes_for_vocab(uint64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

ShardHeader write_shard(const std::string& path, std::span<const uint32_t> tokens, uint32_t token_bytes,
                        uint32_t vocab_size) {
  const std::span<const uint32_t> one[1] = {tokens};
  return write_shard(path, std::span<const std::span<const uint32_t>>(one), token_bytes, vocab_size);
}

ShardHeader write_shard(const std::string& path, std::span<const std::span<const uint32_t>> pieces,
                        uint32_t token_bytes, uint32_t vocab_size) {
  NATSL_CHECK(token_bytes == 2 || token_bytes == 4, "token_bytes must be 2 or 4, got ", token_bytes);
  const uint64_t limit = token_bytes == 2 ? 65536 : (uint64_t(1) << 32);
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    throw InputError("cannot create shard file '" + tmp + "': " + std::strerror(errno) +
                     " (check that the output directory exists and is writable)");
  auto fail = [&](const char* what) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    return InputError(std::string(what) + " shard file '" + tmp + "' failed: " + std::strerror(err) +
                      " (disk full? nothing was written to '" + path + "')");
  };
  // The tokens stream out in blocks, converted to their width; the header, which holds their CRC and largest
  // id, goes in front at the end.
  unsigned char header[kShardHeaderBytes] = {};
  if (!write_all(fd, header, sizeof header)) throw fail("writing");
  constexpr size_t kBlockTokens = size_t(1) << 16;
  std::vector<unsigned char> block(kBlockTokens * token_bytes);
  uint32_t crc = 0, max_token = 0;
  uint64_t count = 0;
  for (const std::span<const uint32_t>& piece : pieces) {
    for (size_t at = 0; at < piece.size(); at += kBlockTokens) {
      const size_t n = std::min(kBlockTokens, piece.size() - at);
      for (size_t i = 0; i < n; ++i) {
        const uint32_t t = piece[at + i];
        if (!(t < limit && (vocab_size == 0 || t < vocab_size))) {
          ::close(fd);
          ::unlink(tmp.c_str());
          NATSL_CHECK(false, "token ", t, " at index ", count + at + i, " does not fit the shard (token_bytes ",
                      token_bytes, ", vocab_size ", vocab_size, ")");
        }
        max_token = std::max(max_token, t);
        if (token_bytes == 2) {
          const uint16_t v = uint16_t(t);
          std::memcpy(&block[i * 2], &v, 2);
        } else {
          std::memcpy(&block[i * 4], &t, 4);
        }
      }
      crc = crc32_update(crc, block.data(), n * token_bytes);
      if (!write_all(fd, block.data(), n * token_bytes)) throw fail("writing");
    }
    count += piece.size();
  }
  std::memcpy(header, kShardMagic, 8);
  put_u32(header + 8, kShardVersion);
  put_u32(header + 12, token_bytes);
  put_u64(header + 16, count);
  put_u32(header + 24, crc);
  put_u32(header + 28, vocab_size);
  put_u32(header + 32, max_token);
  put_u32(header + 36, crc32_update(0, header, 36));
  if (::pwrite(fd, header, sizeof header, 0) != ssize_t(sizeof header)) throw fail("writing the header of");
  if (::fsync(fd) != 0) throw fail("syncing");
  if (::close(fd) != 0) {
    ::unlink(tmp.c_str());
    throw InputError("closing shard file '" + tmp + "' failed: " + std::strerror(errno));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw InputError("cannot rename '" + tmp + "' to '" + path + "': " + std::strerror(err));
  }
  fsync_parent_directory(path);
  ShardHeader h;
  h.token_bytes = token_bytes;
  h.token_count = count;
  h.crc32 = crc;
  h.vocab_size = vocab_size;
  h.max_token = max_token;
  return h;
}

struct Shard::Mapping {
  std::string path;
  ShardHeader header;
  const unsigned char* base = nullptr;  // the whole file
  size_t file_bytes = 0;
  const unsigned char* tokens() const { return base + header.header_bytes(); }
  ~Mapping() {
    if (base && file_bytes) munmap(const_cast<unsigned char*>(base), file_bytes);
  }
};

Shard Shard::open(const std::string& path, bool verify_checksum) {
  const std::string redo = " Re-create it with `natsl tokenize` (or your own writer, see " + std::string(kFormatDoc) +
                           ") or copy it again.";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT)
      throw InputError("shard file '" + path + "' does not exist. Check the data path in the config, or create " +
                       "shards with `natsl tokenize IN... OUT_PREFIX`.");
    throw InputError("cannot open shard file '" + path + "': " + std::strerror(errno));
  }
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw InputError("shard path '" + path + "' is not a regular file; give the path of a .bin shard.");
  }
  auto m = std::make_shared<Mapping>();
  m->path = path;
  m->file_bytes = size_t(st.st_size);
  if (m->file_bytes > 0) {
    void* p = mmap(nullptr, m->file_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      throw InputError("cannot map shard file '" + path + "': " + std::strerror(err));
    }
    m->base = static_cast<const unsigned char*>(p);
    madvise(p, m->file_bytes, MADV_RANDOM);
  }
  ::close(fd);

  if (m->file_bytes < 8 || std::memcmp(m->base, kShardMagic, 8) != 0) {
    std::string found = "an empty file";
    if (m->file_bytes > 0) found = printable(m->base, std::min<size_t>(8, m->file_bytes)).insert(0, 1, '\'').append(1, '\'');
    throw InputError("'" + path + "' is not a natsl token shard: it starts with " + found +
                     " instead of the magic 'NATSLTOK'. Give a shard written by `natsl tokenize` (format: " +
                     kFormatDoc + ").");
  }
  auto truncated_header = [&](size_t need) {
    return InputError("shard file '" + path + "' is truncated: " + std::to_string(m->file_bytes) +
                      " bytes, shorter than the " + std::to_string(need) + "-byte header." + redo);
  };
  if (m->file_bytes < kShardHeaderBytesV1) throw truncated_header(kShardHeaderBytesV1);
  ShardHeader& h = m->header;
  h.version = get_u32(m->base + 8);
  h.token_bytes = get_u32(m->base + 12);
  h.token_count = get_u64(m->base + 16);
  h.crc32 = get_u32(m->base + 24);
  h.vocab_size = get_u32(m->base + 28);
  if (h.version != 1 && h.version != kShardVersion)
    throw InputError("shard file '" + path + "' has format version " + std::to_string(h.version) +
                     "; this natsl reads versions 1 and " + std::to_string(kShardVersion) + "." + redo);
  if (h.version >= 2) {
    if (m->file_bytes < kShardHeaderBytes) throw truncated_header(kShardHeaderBytes);
    h.max_token = get_u32(m->base + 32);
    const uint32_t stored = get_u32(m->base + 36), actual = crc32_update(0, m->base, 36);
    if (stored != actual)
      throw InputError("shard file '" + path + "' has a corrupt header: its CRC-32 is " + hex32(actual) +
                       " but the header records " + hex32(stored) + "." + redo);
  }
  if (h.token_bytes != 2 && h.token_bytes != 4)
    throw InputError("shard file '" + path + "' has token_bytes " + std::to_string(h.token_bytes) +
                     " in its header; only 2 (u16) and 4 (u32) are valid." + redo);
  const uint64_t payload = m->file_bytes - h.header_bytes();
  uint64_t claimed = 0;
  if (__builtin_mul_overflow(h.token_count, uint64_t(h.token_bytes), &claimed) || claimed != payload) {
    const bool shorter = h.token_count > payload / h.token_bytes;
    throw InputError("shard file '" + path + "' is " + (shorter ? "truncated" : "malformed") + ": its header says " +
                     std::to_string(h.token_count) + " tokens of " + std::to_string(h.token_bytes) +
                     " bytes, but the file holds " + std::to_string(payload) + " bytes after the header." + redo);
  }
  // Version 1 records no max id, so it is found here; version 2's is checked whenever the tokens are read.
  if (verify_checksum || h.version == 1) {
    const TokenScan scan = scan_tokens(m->tokens(), payload, h.token_bytes, verify_checksum);
    if (verify_checksum && scan.crc != h.crc32)
      throw InputError("shard file '" + path + "' is corrupt: the CRC-32 of its tokens is " + hex32(scan.crc) +
                       " but its header records " + hex32(h.crc32) + "." + redo);
    if (h.version >= 2 && scan.max_token != h.max_token)
      throw InputError("shard file '" + path + "' is corrupt: its largest token id is " +
                       std::to_string(scan.max_token) + " but its header records max_token " +
                       std::to_string(h.max_token) + " (a faulty writer?)." + redo);
    h.max_token = scan.max_token;
  }
  Shard s;
  s.map_ = std::move(m);
  const ShardHeader& sh = s.header();
  if (sh.vocab_size != 0 && sh.token_count > 0 && sh.max_token >= sh.vocab_size)
    throw InputError("shard file '" + path + "' is inconsistent: it holds token id " + std::to_string(sh.max_token) +
                     " (first at index " + std::to_string(s.first_token_at_least(sh.vocab_size)) +
                     ") but its header says vocab_size " + std::to_string(sh.vocab_size) +
                     ", so every id must be below that." + redo);
  return s;
}

const std::string& Shard::path() const { return map_->path; }
const ShardHeader& Shard::header() const { return map_->header; }

uint32_t Shard::token(int64_t i) const {
  NATSL_CHECK(i >= 0 && i < size(), "token index ", i, " out of range [0, ", size(), ") in ", path());
  const unsigned char* p = map_->tokens() + size_t(i) * header().token_bytes;
  if (header().token_bytes == 2) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
  }
  return get_u32(p);
}

void Shard::read(int64_t start, int64_t n, int32_t* out) const {
  NATSL_CHECK(start >= 0 && n >= 0 && n <= size() && start <= size() - n, "window [", start, ", +", n,
              ") outside shard ", path(), " of ", size(), " tokens");
  const unsigned char* p = map_->tokens() + size_t(start) * header().token_bytes;
  if (header().token_bytes == 2) {
    for (int64_t i = 0; i < n; ++i) {
      uint16_t v;
      std::memcpy(&v, p + 2 * i, 2);
      out[i] = int32_t(v);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = int32_t(get_u32(p + 4 * i));
  }
}

std::vector<uint32_t> Shard::read_all() const {
  std::vector<uint32_t> v(static_cast<size_t>(size()));
  for (int64_t i = 0; i < size(); ++i) v[size_t(i)] = token(i);
  return v;
}

int64_t Shard::first_token_at_least(uint64_t limit) const {
  for (int64_t i = 0; i < size(); ++i)
    if (token(i) >= limit) return i;
  return -1;
}

std::string describe_shard(const std::string& path) {
  Shard s = Shard::open(path, /*verify_checksum=*/true);
  const ShardHeader& h = s.header();
  std::ostringstream os;
  os << "token shard " << path << "\n"
     << "  format version " << h.version << ", tokens u" << 8 * h.token_bytes << ", " << h.token_count
     << " tokens\n"
     << "  vocab_size " << (h.vocab_size ? std::to_string(h.vocab_size) : std::string("(not recorded)"))
     << ", max token id " << s.max_token() << "\n"
     << "  crc32 " << hex32(h.crc32) << " (verified)" << (h.version >= 2 ? ", header crc32 verified" : "") << "\n"
     << "  first tokens:";
  for (int64_t i = 0; i < std::min<int64_t>(16, s.size()); ++i) os << " " << s.token(i);
  os << "\n";
  return os.str();
}

std::vector<std::string> resolve_shard_paths(const std::string& spec) {
  namespace fs = std::filesystem;
  std::vector<std::string> out;
  std::error_code ec;
  if (fs::is_regular_file(spec, ec)) return {spec};
  if (fs::is_directory(spec, ec)) {
    for (const auto& e : fs::directory_iterator(spec, ec))
      if (e.is_regular_file() && e.path().extension() == ".bin") out.push_back(e.path().string());
  } else if (spec.find_first_of("*?[") != std::string::npos) {
    glob_t g{};
    if (::glob(spec.c_str(), 0, nullptr, &g) == 0)
      for (size_t i = 0; i < g.gl_pathc; ++i) out.emplace_back(g.gl_pathv[i]);
    globfree(&g);
  }
  if (out.empty())
    throw InputError("no token shards found for '" + spec + "': give a shard file, a directory of .bin shards, or a " +
                     "glob such as 'data/name.train.*.bin' (create shards with `natsl tokenize IN... OUT_PREFIX`).");
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace natsl
