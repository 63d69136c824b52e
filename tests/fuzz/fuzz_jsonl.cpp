// Fuzzes the inputs of `natsl tokenize` (data/text_input.h): JSONL lines and gzip / zstd streams. Byte 0
// steers the run, the rest is the file:
//   byte 0 % 3: 0 = the bytes are JSONL; 1 = they are a .gz file; 2 = a .zst file (of JSONL, decompressed first)
//   byte 0 / 3 % 2: the JSONL field is "text" or "t"
// Properties: a reader rejects bytes only with InputError; a line read as a document holds valid UTF-8 (the
// tokenizers may rely on it); the decompressors never return more than asked.
#include <string>
#include <string_view>

#include "core/error.h"
#include "data/text_input.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace natsl;
  if (size == 0) return 0;
  const int mode = data[0] % 3;
  const std::string field = (data[0] / 3) % 2 ? "t" : "text";
  std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  if (mode != 0) {
    static fuzz::MemFile file;
    InputFile in;
    in.path = file.set(text);
    in.format = InputFormat::Jsonl;
    in.compression = mode == 1 ? Compression::Gzip : Compression::Zstd;
    text.clear();
    try {
      std::unique_ptr<InputStream> s = InputStream::open(in);
      char buf[4096];
      // A decompression bomb is cut at 1 MiB: the reader streams, so more says nothing new.
      while (text.size() < (size_t(1) << 20)) {
        const size_t want = 1 + text.size() % sizeof buf;
        const size_t got = s->read(buf, want);
        if (got > want) fuzz::broken("a stream returned more bytes than asked");
        if (got == 0) break;
        text.append(buf, got);
      }
    } catch (const InputError&) {
      return 0;
    }
  }
  std::string_view rest(text);
  while (!rest.empty()) {
    const size_t nl = rest.find('\n');
    const JsonlLine l = parse_jsonl_line(rest.substr(0, nl), field);
    if (l.kind == JsonlLineKind::Document && find_invalid_utf8(l.text) != std::string_view::npos)
      fuzz::broken("a document is not valid UTF-8");
    if (l.kind != JsonlLineKind::Document && l.kind != JsonlLineKind::Blank && l.reason.empty())
      fuzz::broken("a bad line has no reason");
    rest.remove_prefix(nl == std::string_view::npos ? rest.size() : nl + 1);
  }
  return 0;
}
