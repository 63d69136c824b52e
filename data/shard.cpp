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

void write_shard(const std::string& path, std::span<const uint32_t> tokens, uint32_t token_bytes,
                 uint32_t vocab_size) {
  NATSL_CHECK(token_bytes == 2 || token_bytes == 4, "token_bytes must be 2 or 4, got ", token_bytes);
  std::vector<unsigned char> body(tokens.size() * token_bytes);
  const uint64_t limit = token_bytes == 2 ? 65536 : (uint64_t(1) << 32);
  for (size_t i = 0; i < tokens.size(); ++i) {
    uint32_t t = tokens[i];
    NATSL_CHECK(t < limit && (vocab_size == 0 || t < vocab_size), "token ", t, " at index ", i,
                " does not fit the shard (token_bytes ", token_bytes, ", vocab_size ", vocab_size, ")");
    if (token_bytes == 2) {
      uint16_t v = uint16_t(t);
      std::memcpy(&body[i * 2], &v, 2);
    } else {
      std::memcpy(&body[i * 4], &t, 4);
    }
  }
  unsigned char header[kShardHeaderBytes] = {};
  std::memcpy(header, kShardMagic, 8);
  put_u32(header + 8, kShardVersion);
  put_u32(header + 12, token_bytes);
  put_u64(header + 16, tokens.size());
  put_u32(header + 24, crc32_update(0, body.data(), body.size()));
  put_u32(header + 28, vocab_size);

  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw InputError("cannot create shard file '" + tmp + "': " + std::strerror(errno) +
                             " (check that the output directory exists and is writable)");
    f.write(reinterpret_cast<const char*>(header), sizeof header);
    f.write(reinterpret_cast<const char*>(body.data()), std::streamsize(body.size()));
    f.flush();
    if (!f) throw InputError("writing shard file '" + tmp + "' failed (disk full?)");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw InputError("cannot rename '" + tmp + "' to '" + path + "': " + ec.message());
}

struct Shard::Mapping {
  std::string path;
  ShardHeader header;
  const unsigned char* base = nullptr;  // the whole file
  size_t file_bytes = 0;
  const unsigned char* tokens() const { return base + kShardHeaderBytes; }
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
  if (m->file_bytes < kShardHeaderBytes)
    throw InputError("shard file '" + path + "' is truncated: " + std::to_string(m->file_bytes) +
                     " bytes, shorter than the " + std::to_string(kShardHeaderBytes) + "-byte header." + redo);
  ShardHeader& h = m->header;
  h.version = get_u32(m->base + 8);
  h.token_bytes = get_u32(m->base + 12);
  h.token_count = get_u64(m->base + 16);
  h.crc32 = get_u32(m->base + 24);
  h.vocab_size = get_u32(m->base + 28);
  if (h.version != kShardVersion)
    throw InputError("shard file '" + path + "' has format version " + std::to_string(h.version) +
                     "; this natsl reads version " + std::to_string(kShardVersion) + "." + redo);
  if (h.token_bytes != 2 && h.token_bytes != 4)
    throw InputError("shard file '" + path + "' has token_bytes " + std::to_string(h.token_bytes) +
                     " in its header; only 2 (u16) and 4 (u32) are valid." + redo);
  const uint64_t payload = m->file_bytes - kShardHeaderBytes;
  if (h.token_count > payload / h.token_bytes || h.token_count * h.token_bytes != payload) {
    const bool shorter = h.token_count > payload / h.token_bytes;
    throw InputError("shard file '" + path + "' is " + (shorter ? "truncated" : "malformed") + ": its header says " +
                     std::to_string(h.token_count) + " tokens of " + std::to_string(h.token_bytes) +
                     " bytes, but the file holds " + std::to_string(payload) + " bytes after the header." + redo);
  }
  if (verify_checksum) {
    uint32_t crc = crc32_update(0, m->tokens(), payload);
    if (crc != h.crc32)
      throw InputError("shard file '" + path + "' is corrupt: the CRC-32 of its tokens is " + hex32(crc) +
                       " but its header records " + hex32(h.crc32) + "." + redo);
  }
  Shard s;
  s.map_ = std::move(m);
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
  NATSL_CHECK(start >= 0 && n >= 0 && start + n <= size(), "window [", start, ", ", start + n,
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

uint32_t Shard::max_token() const {
  uint32_t mx = 0;
  for (int64_t i = 0; i < size(); ++i) mx = std::max(mx, token(i));
  return mx;
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
     << "  crc32 " << hex32(h.crc32) << " (verified)\n"
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
