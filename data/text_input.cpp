#include "data/text_input.h"

#include <fcntl.h>
#include <glob.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#ifdef NATSL_WITH_ZLIB
#include <zlib.h>
#endif
#ifdef NATSL_WITH_ZSTD
#include <zstd.h>
#endif

#include "core/error.h"
#include "data/file_checksum.h"

namespace fs = std::filesystem;

namespace natsl {

const char* input_format_name(InputFormat f) { return f == InputFormat::Jsonl ? "jsonl" : "text"; }

const char* compression_name(Compression c) {
  switch (c) {
    case Compression::Gzip: return "gzip";
    case Compression::Zstd: return "zstd";
    default: return "none";
  }
}

namespace {

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Compression and format from a file name; `known` says whether a directory search takes it.
struct NameKind {
  InputFormat format = InputFormat::Text;
  Compression compression = Compression::None;
  bool known = false;
};

NameKind kind_of_name(std::string name) {
  NameKind k;
  for (const auto& [suffix, c] : {std::pair<const char*, Compression>{".gz", Compression::Gzip},
                                  {".zst", Compression::Zstd}, {".zstd", Compression::Zstd}})
    if (ends_with(name, suffix)) {
      k.compression = c;
      name.resize(name.size() - std::strlen(suffix));
      break;
    }
  if (ends_with(name, ".jsonl") || ends_with(name, ".ndjson")) {
    k.format = InputFormat::Jsonl;
    k.known = true;
  } else {
    k.known = ends_with(name, ".txt") || ends_with(name, ".md");
  }
  return k;
}

}  // namespace

InputFile describe_input(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
    throw InputError("input '" + path + "' does not exist or is not a regular file; give text files (.txt, .md), " +
                     "JSONL files (.jsonl, optionally .gz or .zst), directories of them, or a glob.");
  const NameKind k = kind_of_name(fs::path(path).filename().string());
  InputFile f;
  f.path = path;
  f.format = k.format;
  f.compression = k.compression;
  f.bytes = uint64_t(st.st_size);
  f.mtime_ns = int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  return f;
}

std::vector<InputFile> discover_inputs(const std::vector<std::string>& specs) {
  std::vector<InputFile> out;
  for (const std::string& spec : specs) {
    std::error_code ec;
    std::vector<std::string> found;
    if (fs::is_directory(spec, ec)) {
      for (auto it = fs::recursive_directory_iterator(spec, ec); !ec && it != fs::recursive_directory_iterator();
           it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (!name.empty() && name[0] == '.') {
          if (it->is_directory()) it.disable_recursion_pending();
          continue;
        }
        // *.progress.jsonl is `natsl tokenize`'s own progress file: an output inside an input directory.
        if (it->is_regular_file() && kind_of_name(name).known && !ends_with(name, ".progress.jsonl"))
          found.push_back(it->path().string());
      }
      if (ec) throw InputError("cannot list input directory '" + spec + "': " + ec.message());
      if (found.empty())
        throw InputError("input directory '" + spec + "' holds no .txt, .md, .jsonl or .ndjson files (optionally " +
                         ".gz or .zst); name the files themselves to take other names.");
    } else if (!fs::exists(spec, ec) && spec.find_first_of("*?[") != std::string::npos) {
      glob_t g{};
      if (::glob(spec.c_str(), 0, nullptr, &g) == 0)
        for (size_t i = 0; i < g.gl_pathc; ++i)
          if (fs::is_regular_file(g.gl_pathv[i], ec)) found.emplace_back(g.gl_pathv[i]);
      globfree(&g);
      if (found.empty()) throw InputError("input glob '" + spec + "' matches no file.");
    } else {
      out.push_back(describe_input(spec));
      continue;
    }
    std::sort(found.begin(), found.end());
    for (const std::string& p : found) out.push_back(describe_input(p));
  }
  return out;
}

// ---- streams ---------------------------------------------------------------------------------------------

struct InputStream::Hash {
  Xxh3Stream h;
};

InputStream::InputStream(const std::string& path) : path_(path), hash_(std::make_unique<Hash>()) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw InputError("cannot open input '" + path + "': " + std::strerror(errno));
}

InputStream::~InputStream() {
  if (fd_ >= 0) ::close(fd_);
}

uint64_t InputStream::raw_xxh3() const { return hash_->h.digest(); }

size_t InputStream::read_raw(char* buf, size_t n) {
  for (;;) {
    const ssize_t got = ::read(fd_, buf, n);
    if (got >= 0) {
      hash_->h.update(buf, size_t(got));
      raw_bytes_ += uint64_t(got);
      return size_t(got);
    }
    if (errno != EINTR) throw InputError("cannot read input '" + path_ + "': " + std::strerror(errno));
  }
}

namespace {

constexpr size_t kRawChunk = size_t(1) << 20;

class PlainStream final : public InputStream {
 public:
  explicit PlainStream(const std::string& path) : InputStream(path) {}
  size_t read(char* buf, size_t n) override { return read_raw(buf, n); }
};

#ifdef NATSL_WITH_ZLIB
class GzipStream final : public InputStream {
 public:
  explicit GzipStream(const std::string& path) : InputStream(path), in_(kRawChunk) {
    // 16 + 15: gzip framing only, the largest window.
    if (inflateInit2(&zs_, 16 + 15) != Z_OK) throw Error("zlib: inflateInit2 failed for '" + path + "'");
  }
  ~GzipStream() override { inflateEnd(&zs_); }
  size_t read(char* buf, size_t n) override {
    zs_.next_out = reinterpret_cast<Bytef*>(buf);
    zs_.avail_out = uInt(std::min<size_t>(n, size_t(1) << 30));
    const uInt want = zs_.avail_out;
    for (;;) {
      if (zs_.avail_in == 0 && !eof_) {
        const size_t got = read_raw(in_.data(), in_.size());
        eof_ = got == 0;
        zs_.next_in = reinterpret_cast<Bytef*>(in_.data());
        zs_.avail_in = uInt(got);
      }
      if (member_done_) {  // between gzip members (or before the first): the end, or another member
        if (zs_.avail_in == 0) {
          if (eof_) return 0;
          continue;
        }
        inflateReset(&zs_);
        member_done_ = false;
      }
      const int rc = inflate(&zs_, Z_NO_FLUSH);
      if (rc == Z_STREAM_END) {
        member_done_ = true;
      } else if (rc == Z_BUF_ERROR) {
        if (eof_ && zs_.avail_in == 0 && zs_.avail_out == want)
          throw InputError("gzip input '" + path() + "' is truncated (it ends inside a compressed stream); " +
                           "download or compress it again.");
      } else if (rc != Z_OK) {
        throw InputError("gzip input '" + path() + "' is corrupt or not gzip data (zlib: " +
                         (zs_.msg ? zs_.msg : "error " + std::to_string(rc)) + ").");
      }
      if (zs_.avail_out != want) return size_t(want - zs_.avail_out);
    }
  }

 private:
  z_stream zs_{};
  std::vector<char> in_;
  bool eof_ = false;
  bool member_done_ = true;  // an empty file is an empty input
};
#endif

#ifdef NATSL_WITH_ZSTD
class ZstdStream final : public InputStream {
 public:
  explicit ZstdStream(const std::string& path) : InputStream(path), in_(ZSTD_DStreamInSize()) {
    ds_ = ZSTD_createDStream();
    if (!ds_) throw Error("zstd: cannot create a decompression stream for '" + path + "'");
    ZSTD_initDStream(ds_);
  }
  ~ZstdStream() override { ZSTD_freeDStream(ds_); }
  size_t read(char* buf, size_t n) override {
    ZSTD_outBuffer out{buf, n, 0};
    for (;;) {
      if (input_.pos == input_.size && !eof_) {
        const size_t got = read_raw(in_.data(), in_.size());
        eof_ = got == 0;
        input_ = ZSTD_inBuffer{in_.data(), got, 0};
      }
      if (eof_ && input_.pos == input_.size && frame_done_) return out.pos;
      const size_t rc = ZSTD_decompressStream(ds_, &out, &input_);
      if (ZSTD_isError(rc))
        throw InputError("zstd input '" + path() + "' is corrupt or not zstd data (zstd: " + ZSTD_getErrorName(rc) +
                         ").");
      frame_done_ = rc == 0;
      if (out.pos > 0) return out.pos;
      if (eof_ && input_.pos == input_.size && !frame_done_)
        throw InputError("zstd input '" + path() + "' is truncated (it ends inside a frame); download or compress " +
                         "it again.");
    }
  }

 private:
  ZSTD_DStream* ds_ = nullptr;
  std::vector<char> in_;
  ZSTD_inBuffer input_{nullptr, 0, 0};
  bool eof_ = false;
  bool frame_done_ = true;  // an empty file is an empty input
};
#endif

}  // namespace

namespace {
[[maybe_unused]] InputError built_without(const InputFile& file, const char* library, const char* decompress,
                                          const char* package) {
  return InputError("input '" + file.path + "' is " + compression_name(file.compression) +
                    "-compressed, but this natsl was built without " + library + "; decompress it first (" +
                    decompress + ") or build natsl with " + package + " installed.");
}
}  // namespace

std::unique_ptr<InputStream> InputStream::open(const InputFile& file) {
  switch (file.compression) {
    case Compression::Gzip:
#ifdef NATSL_WITH_ZLIB
      return std::make_unique<GzipStream>(file.path);
#else
      throw built_without(file, "zlib", "gunzip", "zlib1g-dev");
#endif
    case Compression::Zstd:
#ifdef NATSL_WITH_ZSTD
      return std::make_unique<ZstdStream>(file.path);
#else
      throw built_without(file, "libzstd", "zstd -d", "libzstd-dev");
#endif
    default:
      return std::make_unique<PlainStream>(file.path);
  }
}

// ---- UTF-8 and JSONL lines -------------------------------------------------------------------------------

size_t find_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    // Eight ASCII bytes at a time.
    if (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      if ((w & 0x8080808080808080ull) == 0) {
        i += 8;
        continue;
      }
    }
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;       // no overlong 3-byte forms
      if (c == 0xED) hi = 0x9F;       // no surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;       // no overlong 4-byte forms
      if (c == 0xF4) hi = 0x8F;       // nothing above U+10FFFF
    } else {
      return i;
    }
    if (n - i < len || p[i + 1] < lo || p[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k)
      if ((p[i + k] & 0xC0) != 0x80) return i;
    i += len;
  }
  return std::string_view::npos;
}

const char* jsonl_line_kind_name(JsonlLineKind k) {
  switch (k) {
    case JsonlLineKind::Document: return "document";
    case JsonlLineKind::Blank: return "blank";
    case JsonlLineKind::InvalidJson: return "invalid_json";
    case JsonlLineKind::MissingField: return "missing_field";
    default: return "not_utf8";
  }
}

JsonlLine parse_jsonl_line(std::string_view line, const std::string& field) {
  JsonlLine r;
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  if (line.find_first_not_of(" \t") == std::string_view::npos) return r;
  const size_t bad = find_invalid_utf8(line);
  if (bad != std::string_view::npos) {
    r.kind = JsonlLineKind::NotUtf8;
    r.reason = "is not valid UTF-8 (byte " + std::to_string(bad + 1) + " of the line)";
    return r;
  }
  nlohmann::json j = nlohmann::json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    r.kind = JsonlLineKind::InvalidJson;
    try {  // again, for the parser's description of what is wrong (bad lines are rare)
      const nlohmann::json again = nlohmann::json::parse(line.begin(), line.end());
      r.reason = "is not valid JSON (" + std::string(again.type_name()) + ")";
    } catch (const nlohmann::json::exception& e) {
      const std::string what = e.what();  // "[json.exception.parse_error.101] parse error at ..."
      const size_t at = what.find("] ");
      r.reason = "is not valid JSON (" + (at == std::string::npos ? what : what.substr(at + 2)) + ")";
    }
    return r;
  }
  if (!j.is_object()) {
    r.kind = JsonlLineKind::MissingField;
    r.reason = std::string("a JSON ") + j.type_name() + ", not an object with a \"" + field + "\" field";
    r.reason.insert(0, "is ");
    return r;
  }
  auto it = j.find(field);
  if (it == j.end() || !it->is_string()) {
    r.kind = JsonlLineKind::MissingField;
    r.reason = it == j.end() ? "has no \"" + field + "\" field (give the field that holds the text with --text-field)"
                             : "has a \"" + field + "\" field of type " + it->type_name() + ", not a string";
    return r;
  }
  r.kind = JsonlLineKind::Document;
  r.text = std::move(it->get_ref<std::string&>());
  return r;
}

}  // namespace natsl
