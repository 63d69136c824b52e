#pragma once
// The inputs of `natsl tokenize`: which files a command line names, what each holds, and their bytes as they
// stream out of a decompressor. docs/data-format.md ("natsl tokenize") is the user-facing description.
//
//   format       by the name, after a compression suffix (.gz, .zst, .zstd) is taken off:
//                .jsonl / .ndjson -> one document per line, the string of a named top-level field;
//                anything else (.txt, .md, ...) -> the whole file is one document.
//   directories  searched recursively; only .txt, .md, .jsonl, .ndjson files (optionally compressed) are
//                taken, hidden ones (a name starting with '.') and tokenize's own *.progress.jsonl are not; in
//                sorted order of their paths.
//   globs        a spec with *, ? or [ is expanded (sorted); each match is taken as if named.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace natsl {

enum class InputFormat { Text, Jsonl };
enum class Compression { None, Gzip, Zstd };

const char* input_format_name(InputFormat f);   // "text" | "jsonl"
const char* compression_name(Compression c);    // "none" | "gzip" | "zstd"

struct InputFile {
  std::string path;
  InputFormat format = InputFormat::Text;
  Compression compression = Compression::None;
  uint64_t bytes = 0;        // size on disk (compressed size for .gz/.zst)
  int64_t mtime_ns = 0;      // modification time; resume refuses inputs changed since the interrupted run
};

// Format and compression from the name; size and time from the file. InputError when it is not a regular file.
InputFile describe_input(const std::string& path);

// The files that input specs name (files, directories, globs; see above), in order: specs in the order given,
// a directory's or glob's files sorted. InputError naming the spec when one names nothing.
std::vector<InputFile> discover_inputs(const std::vector<std::string>& specs);

// One input's bytes, decompressed as they are read (gzip: zlib, concatenated members too; zstd: libzstd,
// concatenated frames too). Every error (unreadable, corrupt or truncated stream, a build without the
// library) is an InputError naming the file.
class InputStream {
 public:
  static std::unique_ptr<InputStream> open(const InputFile& file);
  virtual ~InputStream();
  // Reads up to n decompressed bytes; 0 only at the end of the input.
  virtual size_t read(char* buf, size_t n) = 0;
  uint64_t raw_bytes() const { return raw_bytes_; }  // bytes read from the file so far
  uint64_t raw_xxh3() const;                         // XXH3-64 of those bytes (the whole file once read() returned 0)
  const std::string& path() const { return path_; }

 protected:
  explicit InputStream(const std::string& path);
  size_t read_raw(char* buf, size_t n);  // from the file, hashed and counted

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t raw_bytes_ = 0;
  struct Hash;
  std::unique_ptr<Hash> hash_;
};

// Offset of the first byte that is not part of well-formed UTF-8 (no overlong forms, surrogates or code
// points above U+10FFFF), or npos when all of `s` is.
size_t find_invalid_utf8(std::string_view s);

// One line of a JSONL file.
enum class JsonlLineKind { Document, Blank, InvalidJson, MissingField, NotUtf8 };
const char* jsonl_line_kind_name(JsonlLineKind k);  // "document", "blank", "invalid_json", "missing_field", "not_utf8"

struct JsonlLine {
  JsonlLineKind kind = JsonlLineKind::Blank;
  std::string text;    // the document (kind Document)
  std::string reason;  // why the line is bad, to follow "the line ": "is not valid JSON (...)", ...
};

// Reads `line` (without its '\n'; a trailing '\r' is ignored): a line of only spaces/tabs is Blank; else it must
// be UTF-8, parse as one JSON object, and hold `field` as a string.
JsonlLine parse_jsonl_line(std::string_view line, const std::string& field);

}  // namespace natsl
