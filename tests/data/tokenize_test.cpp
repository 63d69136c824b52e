// `natsl tokenize`'s engine (data/tokenize.h, data/text_input.h): inputs found by name, JSONL and compressed
// inputs, bad lines reported by file:line or counted, the same bytes for any thread count, token widths and
// document markers, and what an output prefix that already holds output gets. The interrupted-and-resumed
// case, with real kills, is tests/trainers/tokenize_cli_test.cpp.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#ifdef NATSL_WITH_ZLIB
#include <zlib.h>
#endif
#ifdef NATSL_WITH_ZSTD
#include <zstd.h>
#endif

#include "data/file_checksum.h"
#include "data/shard.h"
#include "data/text_input.h"
#include "data/tokenize.h"
#include "tests/data/data_test_util.h"

namespace natsl {
namespace {

namespace fs = std::filesystem;
using testing::expect_input_error;
using testing::read_bytes;
using testing::shared_data;
using testing::TempDir;
using testing::write_bytes;

std::vector<uint32_t> all_tokens(const std::vector<std::string>& shards) {
  std::vector<uint32_t> out;
  for (const std::string& p : shards) {
    auto v = Shard::open(p).read_all();
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

std::vector<uint32_t> wrap(const std::string& doc) { return ByteTokenizer::encode(doc, true, true); }

void append(std::vector<uint32_t>& a, const std::vector<uint32_t>& b) { a.insert(a.end(), b.begin(), b.end()); }

std::string jsonl_of(const std::vector<std::string>& docs) {
  std::string s;
  for (const auto& d : docs) s += nlohmann::json{{"id", s.size()}, {"text", d}}.dump() + "\n";
  return s;
}

// Every file of a directory: name -> bytes.
std::map<std::string, std::string> dir_bytes(const std::string& dir) {
  std::map<std::string, std::string> m;
  for (const auto& e : fs::directory_iterator(dir)) m[e.path().filename().string()] = read_bytes(e.path().string());
  return m;
}

#ifdef NATSL_WITH_ZLIB
std::string gzip_of(const std::string& data) {
  z_stream zs{};
  EXPECT_EQ(deflateInit2(&zs, 6, Z_DEFLATED, 16 + 15, 8, Z_DEFAULT_STRATEGY), Z_OK);
  std::string out(deflateBound(&zs, uLong(data.size())) + 64, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  zs.avail_in = uInt(data.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = uInt(out.size());
  EXPECT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}
#endif
#ifdef NATSL_WITH_ZSTD
std::string zstd_of(const std::string& data) {
  std::string out(ZSTD_compressBound(data.size()), '\0');
  const size_t n = ZSTD_compress(out.data(), out.size(), data.data(), data.size(), 3);
  EXPECT_FALSE(ZSTD_isError(n));
  out.resize(n);
  return out;
}
#endif

TEST(TextInput, FindsInvalidUtf8) {
  EXPECT_EQ(find_invalid_utf8("plain ascii, long enough for the 8-byte path"), std::string_view::npos);
  EXPECT_EQ(find_invalid_utf8("\xC3\xA9t\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"), std::string_view::npos);
  EXPECT_EQ(find_invalid_utf8("abcdefgh\xFFxyz"), 8u);        // never valid
  EXPECT_EQ(find_invalid_utf8("ab\xC0\xAF"), 2u);             // overlong '/'
  EXPECT_EQ(find_invalid_utf8("ab\xED\xA0\x80"), 2u);         // a surrogate
  EXPECT_EQ(find_invalid_utf8("ab\xF4\x90\x80\x80"), 2u);     // above U+10FFFF
  EXPECT_EQ(find_invalid_utf8("abc\xE2\x82"), 3u);            // cut short
  EXPECT_EQ(find_invalid_utf8("\x80"), 0u);                   // a lone continuation byte
}

TEST(TextInput, JsonlLines) {
  EXPECT_EQ(parse_jsonl_line("  \t\r", "text").kind, JsonlLineKind::Blank);
  JsonlLine l = parse_jsonl_line(R"({"text": "h\u00e9llo\n", "n": 1})" "\r", "text");
  EXPECT_EQ(l.kind, JsonlLineKind::Document);
  EXPECT_EQ(l.text, "h\xC3\xA9llo\n");
  EXPECT_EQ(parse_jsonl_line(R"({"text": "x")", "text").kind, JsonlLineKind::InvalidJson);
  EXPECT_EQ(parse_jsonl_line(R"({"body": "x"})", "text").kind, JsonlLineKind::MissingField);
  l = parse_jsonl_line(R"({"text": 3})", "text");
  EXPECT_EQ(l.kind, JsonlLineKind::MissingField);
  EXPECT_NE(l.reason.find("number, not a string"), std::string::npos) << l.reason;
  EXPECT_EQ(parse_jsonl_line(R"(["text"])", "text").kind, JsonlLineKind::MissingField);
  EXPECT_EQ(parse_jsonl_line("{\"text\": \"\xFF\"}", "text").kind, JsonlLineKind::NotUtf8);
  EXPECT_EQ(parse_jsonl_line(R"({"body": "x"})", "body").kind, JsonlLineKind::Document);
}

TEST(TextInput, DiscoversDirectoriesSortedAndGlobs) {
  TempDir dir;
  fs::create_directories(dir.file("d/sub"));
  fs::create_directories(dir.file("d/.hidden"));
  for (const char* f : {"d/b.txt", "d/a.jsonl", "d/sub/c.md", "d/sub/z.jsonl.gz", "d/notes.csv", "d/.x.txt", "d/.hidden/h.txt",
                        "d/out.progress.jsonl"})
    write_bytes(dir.file(f), "x");
  std::vector<InputFile> in = discover_inputs({dir.file("d")});
  std::vector<std::string> names;
  for (const auto& f : in) names.push_back(f.path.substr(dir.path().size() + 1));
  EXPECT_EQ(names, (std::vector<std::string>{"d/a.jsonl", "d/b.txt", "d/sub/c.md", "d/sub/z.jsonl.gz"}));
  EXPECT_EQ(in[0].format, InputFormat::Jsonl);
  EXPECT_EQ(in[1].format, InputFormat::Text);
  EXPECT_EQ(in[3].format, InputFormat::Jsonl);
  EXPECT_EQ(in[3].compression, Compression::Gzip);
  // A file named explicitly is taken whatever its name; a glob expands sorted.
  EXPECT_EQ(discover_inputs({dir.file("d/notes.csv")}).at(0).format, InputFormat::Text);
  EXPECT_EQ(discover_inputs({dir.file("d/*.txt"), dir.file("d/a.jsonl")}).size(), 2u);
  fs::create_directories(dir.file("empty"));
  expect_input_error([&] { discover_inputs({dir.file("empty")}); }, {"empty", "holds no .txt"});
  expect_input_error([&] { discover_inputs({dir.file("d/*.parquet")}); }, {"*.parquet", "matches no file"});
  expect_input_error([&] { discover_inputs({dir.file("nope.txt")}); }, {"nope.txt", "does not exist"});
}

TEST(Tokenize, JsonlDocumentsAreWrappedInOrder) {
  TempDir dir;
  const std::vector<std::string> docs = {"first doc", "", "third \xC3\xA9", "fourth\nwith a newline"};
  write_bytes(dir.file("a.jsonl"), jsonl_of(docs) + "\n  \n");  // blank lines are not documents
  write_bytes(dir.file("b.txt"), "plain");
  TokenizeOptions o;
  o.max_tokens_per_shard = 16;
  TokenizeReport r = tokenize_files({dir.file("a.jsonl"), dir.file("b.txt")}, dir.file("out"), o);
  std::vector<uint32_t> want;
  for (const auto& d : docs) append(want, wrap(d));
  append(want, wrap("plain"));
  EXPECT_EQ(all_tokens(r.train_shards), want);
  EXPECT_EQ(r.documents, 5);
  EXPECT_EQ(r.train_tokens, int64_t(want.size()));
  EXPECT_EQ(r.train_shards.size(), (want.size() + 15) / 16);

  const nlohmann::json m = nlohmann::json::parse(read_bytes(dir.file("out.manifest.json")));
  EXPECT_EQ(m["inputs"][0]["documents"], 4);
  EXPECT_EQ(m["inputs"][0]["format"], "jsonl");
  EXPECT_EQ(m["inputs"][0]["xxh3_64"], checksum_hex(file_xxh3_64(dir.file("a.jsonl"))));
  EXPECT_EQ(m["inputs"][1]["tokens"], 7);
  EXPECT_EQ(m["totals"]["train_tokens"], want.size());
  EXPECT_EQ(m["shards"]["train"].size(), r.train_shards.size());
  const Shard first = Shard::open(r.train_shards[0]);
  EXPECT_EQ(m["shards"]["train"][0]["crc32"], fmt::format("{:08x}", first.header().crc32));
  EXPECT_EQ(m["shards"]["train"][0]["file"], "out.train.000000.bin");
  EXPECT_FALSE(fs::exists(dir.file("out.progress.jsonl")));
}

TEST(Tokenize, JsonlValidationTakesWholeDocumentsByHash) {
  TempDir dir;
  std::vector<std::string> docs;
  for (int i = 0; i < 200; ++i) docs.push_back("document number " + std::to_string(i));
  write_bytes(dir.file("a.jsonl"), jsonl_of(docs));
  TokenizeOptions o;
  o.val_fraction = 0.25;
  TokenizeReport r = tokenize_files({dir.file("a.jsonl")}, dir.file("out"), o);
  std::vector<uint32_t> train, val;
  int nval = 0;
  for (const auto& d : docs) {
    const bool is_val = double(xxh3_64(d.data(), d.size()) >> 11) * 0x1.0p-53 < 0.25;
    append(is_val ? val : train, wrap(d));
    nval += is_val;
  }
  EXPECT_GT(nval, 25);  // about 50 of 200
  EXPECT_LT(nval, 80);
  EXPECT_EQ(all_tokens(r.train_shards), train);
  EXPECT_EQ(all_tokens(r.val_shards), val);
}

// Each kind of bad line, with --bad-lines error (the default): one error naming file:line and the way out.
TEST(Tokenize, BadJsonlLinesAreErrorsNamingFileAndLine) {
  TempDir dir;
  const std::pair<std::string, std::string> cases[] = {
      {R"({"text": "unterminated)", "not valid JSON"},
      {R"({"body": "no text field"})", "no \"text\" field"},
      {R"({"text": ["not", "a", "string"]})", "array, not a string"},
      {"{\"text\": \"caf\xE9\"}", "not valid UTF-8"},
  };
  for (const auto& [line, says] : cases) {
    write_bytes(dir.file("bad.jsonl"), jsonl_of({"ok 1", "ok 2"}) + line + "\n" + jsonl_of({"ok 4"}));
    TokenizeOptions o;
    o.overwrite = true;
    o.block_bytes = 8;  // every line its own block: the error still names its line
    expect_input_error([&] { tokenize_files({dir.file("bad.jsonl")}, dir.file("out"), o); },
                       {dir.file("bad.jsonl") + ":3:", says, "--bad-lines skip"});
  }
}

TEST(Tokenize, SkippedBadLinesAreCountedPerFile) {
  TempDir dir;
  std::string text = jsonl_of({"a"}) + "not json\n" + R"({"title": "x"})" "\n" + jsonl_of({"b"}) +
                     "{\"text\": \"\xC3\x28\"}\n" + R"({"text": null})" "\n" + jsonl_of({"c"});
  write_bytes(dir.file("bad.jsonl"), text);
  write_bytes(dir.file("good.jsonl"), jsonl_of({"d"}));
  TokenizeOptions o;
  o.bad_lines = BadLines::Skip;
  TokenizeReport r = tokenize_files({dir.file("bad.jsonl"), dir.file("good.jsonl")}, dir.file("out"), o);
  EXPECT_EQ(r.documents, 4);
  EXPECT_EQ(r.skipped_lines, 4);
  std::vector<uint32_t> want;
  for (const char* d : {"a", "b", "c", "d"}) append(want, wrap(d));
  EXPECT_EQ(all_tokens(r.train_shards), want);
  const nlohmann::json m = nlohmann::json::parse(read_bytes(dir.file("out.manifest.json")));
  EXPECT_EQ(m["inputs"][0]["skipped_lines"],
            (nlohmann::json{{"invalid_json", 1}, {"missing_field", 2}, {"not_utf8", 1}}));
  EXPECT_EQ(m["inputs"][1]["skipped_lines"]["invalid_json"], 0);
  EXPECT_EQ(m["totals"]["skipped_lines"], 4);
  EXPECT_EQ(m["request"]["options"]["bad_lines"], "skip");
}

// Shards and manifest are the same bytes for 1 and several threads, with blocks small enough that every
// thread gets many, over text, JSONL and compressed inputs with a validation split.
TEST(Tokenize, ParallelAndSerialGiveIdenticalBytes) {
  TempDir dir;
  const std::string shakes = read_bytes(shared_data("tinyshakespeare.txt")).substr(0, 200000);
  std::vector<std::string> docs;
  for (size_t at = 0; at < shakes.size(); at += 700) docs.push_back(shakes.substr(at, 300 + at % 400));
  fs::create_directories(dir.file("in/more"));
  write_bytes(dir.file("in/a.jsonl"), jsonl_of(docs));
  write_bytes(dir.file("in/b.txt"), shakes.substr(0, 30000));
  write_bytes(dir.file("in/more/c.txt"), "\xEF\xBB\xBF" "short one");
#ifdef NATSL_WITH_ZLIB
  write_bytes(dir.file("in/more/d.jsonl.gz"), gzip_of(jsonl_of({docs.begin(), docs.begin() + 40})));
#endif
#ifdef NATSL_WITH_ZSTD
  write_bytes(dir.file("in/more/e.jsonl.zst"), zstd_of(jsonl_of({docs.begin() + 40, docs.begin() + 90})));
#endif
  std::map<std::string, std::string> first;
  for (int threads : {1, 2, 5}) {
    const std::string out = dir.file("out" + std::to_string(threads));
    fs::create_directories(out);
    TokenizeOptions o;
    o.threads = threads;
    o.block_bytes = 2000;
    o.val_fraction = 0.1;
    o.max_tokens_per_shard = 7919;
    TokenizeReport r = tokenize_files({dir.file("in")}, out + "/x", o);
    EXPECT_GT(r.train_shards.size(), 10u);
    EXPECT_GT(r.val_shards.size(), 1u);
    const auto bytes = dir_bytes(out);
    if (threads == 1) first = bytes;
    else EXPECT_TRUE(bytes == first) << "threads " << threads << " wrote other bytes than threads 1";
  }
  EXPECT_EQ(first.count("x.manifest.json"), 1u);
}

TEST(Tokenize, CompressedInputsGiveTheSameTokensAsPlainOnes) {
#if !defined(NATSL_WITH_ZLIB) || !defined(NATSL_WITH_ZSTD)
  GTEST_SKIP() << "this build has no zlib or no libzstd";
#else
  TempDir dir;
  std::vector<std::string> docs;
  for (int i = 0; i < 3000; ++i) docs.push_back("line " + std::to_string(i * 7919 % 1000) + " of many");
  const std::string text = jsonl_of(docs);
  write_bytes(dir.file("p.jsonl"), text);
  // Two gzip members and two zstd frames, as concatenating compressed files makes them.
  const size_t half = text.find('\n', text.size() / 2) + 1;
  write_bytes(dir.file("g.jsonl.gz"), gzip_of(text.substr(0, half)) + gzip_of(text.substr(half)));
  write_bytes(dir.file("z.jsonl.zst"), zstd_of(text.substr(0, half)) + zstd_of(text.substr(half)));
  const auto plain = all_tokens(tokenize_files({dir.file("p.jsonl")}, dir.file("p"), {}).train_shards);
  EXPECT_EQ(all_tokens(tokenize_files({dir.file("g.jsonl.gz")}, dir.file("g"), {}).train_shards), plain);
  EXPECT_EQ(all_tokens(tokenize_files({dir.file("z.jsonl.zst")}, dir.file("z"), {}).train_shards), plain);

  const std::string gz = read_bytes(dir.file("g.jsonl.gz")), zst = read_bytes(dir.file("z.jsonl.zst"));
  write_bytes(dir.file("cut.jsonl.gz"), gz.substr(0, gz.size() / 2));
  expect_input_error([&] { tokenize_files({dir.file("cut.jsonl.gz")}, dir.file("c1"), {}); }, {"cut.jsonl.gz", "truncated"});
  write_bytes(dir.file("cut.jsonl.zst"), zst.substr(0, zst.size() / 2));
  expect_input_error([&] { tokenize_files({dir.file("cut.jsonl.zst")}, dir.file("c2"), {}); }, {"cut.jsonl.zst", "truncated"});
  write_bytes(dir.file("fake.txt.gz"), "this is not gzip data at all");
  expect_input_error([&] { tokenize_files({dir.file("fake.txt.gz")}, dir.file("c3"), {}); }, {"fake.txt.gz", "not gzip"});
  write_bytes(dir.file("fake.txt.zst"), "this is not zstd data at all");
  expect_input_error([&] { tokenize_files({dir.file("fake.txt.zst")}, dir.file("c4"), {}); }, {"fake.txt.zst", "not zstd"});
#endif
}

// A tokenizer with a large vocabulary and no document markers: u32 shards, no BOS/EOS unless asked (refused).
class WideTokenizer final : public Tokenizer {
 public:
  std::string kind() const override { return "wide-test"; }
  int64_t vocab_size() const override { return 70000; }
  std::optional<uint32_t> bos_id() const override { return std::nullopt; }
  std::optional<uint32_t> eos_id() const override { return 69999; }
  void encode(std::string_view text, std::vector<uint32_t>& out) const override {
    for (unsigned char c : text) out.push_back(60000u + c);
  }
  std::string decode(std::span<const uint32_t>) const override { return {}; }
  nlohmann::json identity() const override { return {{"kind", kind()}, {"vocab_size", vocab_size()}}; }
};

TEST(Tokenize, WideVocabulariesGetU32ShardsAndMarkersAsConfigured) {
  TempDir dir;
  write_bytes(dir.file("a.txt"), "ab");
  write_bytes(dir.file("bad.txt"), "ok\nnot \xFF utf-8");
  WideTokenizer tok;
  TokenizeReport r = tokenize({dir.file("a.txt")}, dir.file("w"), tok, {});
  const Shard s = Shard::open(r.train_shards.at(0));
  EXPECT_EQ(s.header().token_bytes, 4u);
  EXPECT_EQ(s.header().vocab_size, 70000u);
  EXPECT_EQ(s.read_all(), (std::vector<uint32_t>{60097, 60098, 69999}));
  TokenizeOptions o;
  o.eos = false;
  EXPECT_EQ(all_tokens(tokenize({dir.file("a.txt")}, dir.file("w2"), tok, o).train_shards),
            (std::vector<uint32_t>{60097, 60098}));
  o.bos = true;
  expect_input_error([&] { tokenize({dir.file("a.txt")}, dir.file("w3"), tok, o); }, {"--bos", "has no bos id"});
  // A tokenizer other than the byte one wants UTF-8: a text file that is not is refused, naming its line.
  expect_input_error([&] { tokenize({dir.file("bad.txt")}, dir.file("w4"), tok, {}); },
                     {dir.file("bad.txt") + ":2", "not valid UTF-8", "iconv"});
  // The byte tokenizer takes any bytes.
  EXPECT_EQ(tokenize_files({dir.file("bad.txt")}, dir.file("w5"), {}).documents, 1);
}

// A run stopped by a bad line leaves its finished shards and progress file; the same command resumes from them
// (here after the line was repaired in place, same size and time, so the request still matches) and writes
// the bytes of a run never stopped. Changed inputs are refused. Real kills: tests/trainers/tokenize_cli_test.cpp.
TEST(Tokenize, StoppedRunResumesKeepingItsShards) {
  TempDir dir;
  std::vector<std::string> docs;
  for (int i = 0; i < 300; ++i) docs.push_back("document " + std::to_string(i) + " with some words in it");
  const std::string good = jsonl_of(docs);
  const std::string bad_line = R"({"text": "broken)";
  std::string text = good;
  const size_t at = text.find(R"({"id")", text.size() * 5 / 6);
  const size_t len = text.find('\n', at) - at;
  text.replace(at, len, bad_line + std::string(len - bad_line.size(), ' '));
  write_bytes(dir.file("in.jsonl"), text);
  const auto mtime = fs::last_write_time(dir.file("in.jsonl"));
  fs::create_directories(dir.file("a"));
  TokenizeOptions o;
  o.block_bytes = 512;
  o.max_tokens_per_shard = 701;
  o.val_fraction = 0.2;
  o.threads = 3;
  for (int attempt = 0; attempt < 2; ++attempt)  // the second attempt resumes, and stops at the same line
    expect_input_error([&] { tokenize_files({dir.file("in.jsonl")}, dir.file("a/x"), o); }, {"in.jsonl:", "not valid JSON"});
  EXPECT_TRUE(fs::exists(dir.file("a/x.progress.jsonl")));
  EXPECT_TRUE(fs::exists(dir.file("a/x.train.000005.bin")));

  // Repaired in place: same size, same time.
  text.replace(at, len, good.substr(at, len));
  write_bytes(dir.file("in.jsonl"), text);
  fs::last_write_time(dir.file("in.jsonl"), mtime);
  TokenizeReport r = tokenize_files({dir.file("in.jsonl")}, dir.file("a/x"), o);
  EXPECT_TRUE(r.resumed);
  EXPECT_GT(r.kept_shards, 5);
  fs::create_directories(dir.file("b"));
  o.threads = 1;
  tokenize_files({dir.file("in.jsonl")}, dir.file("b/x"), o);
  EXPECT_TRUE(dir_bytes(dir.file("a")) == dir_bytes(dir.file("b")));

  // An interrupted run over inputs that changed since is refused, naming the progress file.
  text.replace(at, len, bad_line + std::string(len - bad_line.size(), ' '));
  write_bytes(dir.file("in.jsonl"), text);
  fs::create_directories(dir.file("c"));
  expect_input_error([&] { tokenize_files({dir.file("in.jsonl")}, dir.file("c/x"), o); }, {"not valid JSON"});
  write_bytes(dir.file("in.jsonl"), good);
  expect_input_error([&] { tokenize_files({dir.file("in.jsonl")}, dir.file("c/x"), o); },
                     {"c/x.progress.jsonl", "other inputs or options", "--overwrite"});
  o.overwrite = true;
  EXPECT_FALSE(tokenize_files({dir.file("in.jsonl")}, dir.file("c/x"), o).resumed);
}

TEST(Tokenize, ExistingOutputIsUpToDateRefusedOrOverwritten) {
  TempDir dir;
  write_bytes(dir.file("a.txt"), "some text");
  TokenizeOptions o;
  o.max_tokens_per_shard = 4;
  TokenizeReport r = tokenize_files({dir.file("a.txt")}, dir.file("o"), o);
  EXPECT_EQ(r.train_shards.size(), 3u);
  const auto before = dir_bytes(dir.path());
  // The same request: up to date, nothing written.
  r = tokenize_files({dir.file("a.txt")}, dir.file("o"), o);
  EXPECT_TRUE(r.up_to_date);
  EXPECT_EQ(r.train_shards.size(), 3u);
  EXPECT_EQ(r.train_tokens, 11);
  EXPECT_TRUE(dir_bytes(dir.path()) == before);
  // Other options or another input: refused, naming what differs.
  TokenizeOptions other = o;
  other.max_tokens_per_shard = 5;
  expect_input_error([&] { tokenize_files({dir.file("a.txt")}, dir.file("o"), other); }, {"options", "--overwrite"});
  write_bytes(dir.file("a.txt"), "some other text");
  expect_input_error([&] { tokenize_files({dir.file("a.txt")}, dir.file("o"), o); }, {"inputs", "--overwrite"});
  // --overwrite: the old shards go, the new ones come.
  other.overwrite = true;
  other.max_tokens_per_shard = 100;
  r = tokenize_files({dir.file("a.txt")}, dir.file("o"), other);
  EXPECT_EQ(r.train_shards.size(), 1u);
  EXPECT_FALSE(fs::exists(dir.file("o.train.000001.bin")));
  // Shards without a manifest (an older natsl's output) are not silently mixed with new ones.
  write_bytes(dir.file("old.train.000000.bin"), read_bytes(dir.file("o.train.000000.bin")));
  expect_input_error([&] { tokenize_files({dir.file("a.txt")}, dir.file("old"), {}); },
                     {"old.train.000000.bin", "already exists", "--overwrite"});
}

}  // namespace
}  // namespace natsl
