#include "data/tokenize.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <exception>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "core/error.h"
#include "data/file_checksum.h"
#include "data/sentencepiece_tokenizer.h"
#include "data/shard.h"
#include "data/sync_file.h"
#include "data/tokenize_shards.h"

namespace fs = std::filesystem;

namespace natsl {
namespace {

using namespace tokenize_detail;

using Clock = std::chrono::steady_clock;

constexpr size_t kReadChunk = size_t(1) << 20;
constexpr size_t kMaxLineBytes = size_t(256) << 20;  // a longer "line" is not JSONL
constexpr int kWarningsPerInput = 5;                 // skipped lines shown per input; all are counted


// ---- work units ------------------------------------------------------------------------------------------

struct Block {
  int64_t index = 0;
  int input = 0;
  int64_t first_line = 1;
  std::string text;
  uint64_t raw_bytes = 0;   // input bytes read since the previous block (progress only)
  bool last = false;        // the input's final block: xxh3 is its checksum
  uint64_t xxh3 = 0;
  bool skip = false;        // before the resume point: counted from the progress file, not tokenized
  std::exception_ptr error; // reading failed here
};

struct Counts {
  int64_t documents = 0, invalid_json = 0, missing_field = 0, not_utf8 = 0;
};

struct Result {
  Block block;  // without its text
  std::vector<uint32_t> tokens[2];
  Counts counts;
  std::vector<std::string> warnings;
  std::exception_ptr error;
};

struct Encoder {
  const Tokenizer& tok;
  const TokenizeOptions& opts;
  std::optional<uint32_t> bos, eos;
  bool check_utf8;  // the byte tokenizer takes any bytes; the others want UTF-8

  // A bad line: under BadLines::Error it stops the run, else it is counted and (the first few) shown.
  void bad(Result& r, const std::string& where, JsonlLineKind kind, const std::string& reason) const {
    if (opts.bad_lines == BadLines::Error)
      throw InputError(where + ": " + reason + ". Fix or remove it, or pass --bad-lines skip to skip such lines " +
                       "(they are counted in the manifest).");
    (kind == JsonlLineKind::InvalidJson ? r.counts.invalid_json
     : kind == JsonlLineKind::MissingField ? r.counts.missing_field
                                           : r.counts.not_utf8)++;
    if (r.warnings.size() < size_t(kWarningsPerInput)) r.warnings.push_back(where + ": " + reason + " (skipped)");
  }

  void text_document(const InputFile& in, std::string_view doc, Result& r) const {
    if (opts.strip_utf8_bom && doc.substr(0, 3) == "\xEF\xBB\xBF") doc.remove_prefix(3);
    if (check_utf8) {
      const size_t badpos = find_invalid_utf8(doc);
      if (badpos != std::string_view::npos) {
        const int64_t line = 1 + std::count(doc.begin(), doc.begin() + ptrdiff_t(badpos), '\n');
        bad(r, in.path + ":" + std::to_string(line), JsonlLineKind::NotUtf8,
            "not valid UTF-8 (byte offset " + std::to_string(badpos) + "), which a " + tok.kind() +
                " tokenizer cannot take; convert the file to UTF-8 (iconv)");
        return;
      }
    }
    const size_t n = doc.size();
    size_t cut = opts.val_fraction > 0 ? size_t((1.0 - opts.val_fraction) * double(n)) : n;
    if (check_utf8)  // do not split a character between the streams
      while (cut > 0 && cut < n && (static_cast<unsigned char>(doc[cut]) & 0xC0) == 0x80) --cut;
    std::vector<uint32_t>& train = r.tokens[0];
    std::vector<uint32_t>& tail = opts.val_fraction > 0 ? r.tokens[1] : r.tokens[0];
    // At most a token per byte for every tokenizer natsl has (pages never written are never faulted in), so
    // the vectors do not grow, and copy, again and again.
    train.reserve(cut + 2);
    tail.reserve(tail.size() + n - cut + 2);
    if (bos) train.push_back(*bos);
    if (opts.val_fraction > 0) {
      tok.encode(doc.substr(0, cut), train);
      tok.encode(doc.substr(cut), tail);
    } else {
      tok.encode(doc, train);
    }
    if (eos) tail.push_back(*eos);
    ++r.counts.documents;
  }

  void jsonl_block(const InputFile& in, const Block& b, Result& r) const {
    std::string_view rest(b.text);
    r.tokens[0].reserve(b.text.size());  // see text_document
    if (opts.val_fraction > 0) r.tokens[1].reserve(size_t(double(b.text.size()) * opts.val_fraction * 2));
    if (b.first_line == 1 && opts.strip_utf8_bom && rest.substr(0, 3) == "\xEF\xBB\xBF") rest.remove_prefix(3);
    for (int64_t line = b.first_line; !rest.empty(); ++line) {
      const size_t nl = rest.find('\n');
      const std::string_view text = rest.substr(0, nl);
      rest.remove_prefix(nl == std::string_view::npos ? rest.size() : nl + 1);
      JsonlLine l = parse_jsonl_line(text, opts.text_field);
      if (l.kind == JsonlLineKind::Blank) continue;
      if (l.kind != JsonlLineKind::Document) {
        bad(r, in.path + ":" + std::to_string(line), l.kind, "the line " + l.reason);
        continue;
      }
      // Whole documents go to validation by a hash of their text: fixed by the content alone.
      const bool val = opts.val_fraction > 0 &&
                       double(xxh3_64(l.text.data(), l.text.size()) >> 11) * 0x1.0p-53 < opts.val_fraction;
      std::vector<uint32_t>& out = r.tokens[val ? 1 : 0];
      if (bos) out.push_back(*bos);
      tok.encode(l.text, out);
      if (eos) out.push_back(*eos);
      ++r.counts.documents;
    }
  }

  Result run(const std::vector<InputFile>& inputs, Block&& b) const {
    Result r;
    r.error = b.error;
    if (!b.error && !b.skip) {
      try {
        const InputFile& in = inputs[size_t(b.input)];
        if (in.format == InputFormat::Jsonl) jsonl_block(in, b, r);
        else if (b.last) text_document(in, b.text, r);
      } catch (...) {
        r.error = std::current_exception();
      }
    }
    b.text = std::string();
    r.block = std::move(b);
    return r;
  }
};

// ---- progress display -----------------------------------------------------------------------------------

class ProgressMeter {
 public:
  ProgressMeter(bool enabled, uint64_t total_bytes)
      : enabled_(enabled), tty_(::isatty(2) == 1), total_(total_bytes), start_(Clock::now()), last_(start_) {}
  void update(uint64_t bytes, int64_t tokens, bool final = false) {
    if (!enabled_) return;
    const auto now = Clock::now();
    if (!final && now - last_ < (tty_ ? std::chrono::milliseconds(500) : std::chrono::milliseconds(10000))) return;
    last_ = now;
    const double s = std::max(1e-9, std::chrono::duration<double>(now - start_).count());
    const double rate = double(bytes) / s;
    std::string eta = "--";
    if (rate > 0 && total_ >= bytes) {
      const int64_t left = int64_t(double(total_ - bytes) / rate);
      eta = fmt::format("{}:{:02d}:{:02d}", left / 3600, left / 60 % 60, left % 60);
    }
    const std::string line =
        fmt::format("tokenize: {:.1f}/{:.1f} MB ({:.1f}%), {:.1f} MB/s, {:.2f}M tokens/s, ETA {}", double(bytes) / 1e6,
                    double(total_) / 1e6, total_ ? 100.0 * double(bytes) / double(total_) : 100.0, rate / 1e6,
                    double(tokens) / s / 1e6, eta);
    if (tty_) fmt::print(stderr, "\r{}\033[K{}", line, final ? "\n" : "");
    else fmt::print(stderr, "{}\n", line);
    std::fflush(stderr);
  }

 private:
  bool enabled_, tty_;
  uint64_t total_;
  Clock::time_point start_, last_;
};

// ---- the pipeline: one reader, N tokenizing workers, the caller writing in block order -------------------

class Pipeline {
 public:
  Pipeline(const std::vector<InputFile>& inputs, const Encoder& enc, int threads, int64_t block_bytes,
           int64_t skip_blocks)
      : inputs_(inputs), enc_(enc), block_bytes_(size_t(block_bytes)), skip_blocks_(skip_blocks),
        max_in_flight_(2 * threads + 2) {
    reader_ = std::thread([this] { read_all(); });
    for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { work(); });
  }
  ~Pipeline() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    reader_.join();
    for (auto& w : workers_) w.join();
  }
  // The next block's result in order, or nothing after the last.
  std::optional<Result> next() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done_.count(next_) || (reader_done_ && next_ == produced_); });
    if (!done_.count(next_)) return std::nullopt;
    Result r = std::move(done_.at(next_));
    done_.erase(next_++);
    lock.unlock();
    cv_.notify_all();
    return r;
  }

 private:
  // Blocks until the block may enter the pipeline (bounded memory); false when stopping.
  bool emit(Block&& b) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return stop_ || produced_ - next_ < max_in_flight_; });
    if (stop_) return false;
    b.index = produced_++;
    if (b.index < skip_blocks_) b.skip = true;
    if (b.skip) b.text = std::string();
    queue_.push_back(std::move(b));
    lock.unlock();
    cv_.notify_all();
    return true;
  }

  bool read_input(int i) {
    const InputFile& in = inputs_[size_t(i)];
    std::unique_ptr<InputStream> s = InputStream::open(in);
    uint64_t reported = 0;
    auto make = [&](std::string text, int64_t first_line) {
      Block b;
      b.input = i;
      b.first_line = first_line;
      b.text = std::move(text);
      b.raw_bytes = s->raw_bytes() - reported;
      reported = s->raw_bytes();
      return b;
    };
    std::string pending;
    if (in.compression == Compression::None)  // + one chunk: the last (empty) read must not reallocate
      pending.reserve(size_t(std::min<uint64_t>(in.bytes, kMaxLineBytes)) + kReadChunk);
    int64_t line = 1;
    for (;;) {
      const size_t old = pending.size();
      pending.resize(old + kReadChunk);
      const size_t got = s->read(pending.data() + old, kReadChunk);
      pending.resize(old + got);
      if (got == 0) break;
      if (in.format != InputFormat::Jsonl) continue;
      // A block ends at the first line end at or after block_bytes: fixed by the content, not by read sizes.
      while (pending.size() >= block_bytes_) {
        const size_t nl = pending.find('\n', block_bytes_ - 1);
        if (nl == std::string::npos) {
          if (pending.size() - block_bytes_ > kMaxLineBytes)
            throw InputError(in.path + ":" + std::to_string(line + std::count(pending.begin(), pending.end(), '\n')) +
                             ": a line longer than 256 MiB; a JSONL file holds one JSON object per line.");
          break;
        }
        std::string rest = pending.substr(nl + 1);
        pending.resize(nl + 1);
        const int64_t lines = std::count(pending.begin(), pending.end(), '\n');
        if (!emit(make(std::move(pending), line))) return false;
        line += lines;
        pending = std::move(rest);
      }
    }
    Block b = make(std::move(pending), line);
    b.last = true;
    b.xxh3 = s->raw_xxh3();
    return emit(std::move(b));
  }

  void read_all() {
    for (int i = 0; i < int(inputs_.size()); ++i) {
      try {
        if (!read_input(i)) break;
      } catch (...) {
        Block b;
        b.input = i;
        b.error = std::current_exception();
        emit(std::move(b));
        break;
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    reader_done_ = true;
    cv_.notify_all();
  }

  void work() {
    for (;;) {
      Block b;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !queue_.empty() || reader_done_; });
        if (stop_ || queue_.empty()) return;
        b = std::move(queue_.front());
        queue_.pop_front();
      }
      const int64_t index = b.index;
      Result r = enc_.run(inputs_, std::move(b));
      {
        std::lock_guard<std::mutex> lock(mu_);
        done_.emplace(index, std::move(r));
      }
      cv_.notify_all();
    }
  }

  const std::vector<InputFile>& inputs_;
  const Encoder& enc_;
  const size_t block_bytes_;
  const int64_t skip_blocks_, max_in_flight_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Block> queue_;
  std::map<int64_t, Result> done_;
  int64_t produced_ = 0, next_ = 0;
  bool reader_done_ = false, stop_ = false;
  std::thread reader_;
  std::vector<std::thread> workers_;
};

void check_options(const TokenizeOptions& o) {
  if (!(o.val_fraction >= 0.0 && o.val_fraction < 1.0))
    throw InputError("tokenize: val_fraction must be in [0, 1), got " + std::to_string(o.val_fraction) + ".");
  if (o.max_tokens_per_shard < 2)
    throw InputError("tokenize: max_tokens_per_shard must be at least 2, got " +
                     std::to_string(o.max_tokens_per_shard) + ".");
  if (o.block_bytes < 1 || o.block_bytes > int64_t(1) << 30)
    throw InputError("tokenize: block_bytes must be in [1, 2^30], got " + std::to_string(o.block_bytes) + ".");
  if (o.text_field.empty()) throw InputError("tokenize: --text-field must not be empty.");
}

std::optional<uint32_t> marker(const Tokenizer& tok, std::optional<bool> asked, std::optional<uint32_t> id,
                               const char* name) {
  if (!asked.value_or(id.has_value())) return std::nullopt;
  if (!id)
    throw InputError(std::string("tokenize: --") + name + " was asked for, but the " + tok.kind() +
                     " tokenizer has no " + name + " id; leave it out (--no-" + name + ").");
  return id;
}

TokenizeReport report_from_manifest(const nlohmann::json& m, const std::string& prefix) {
  TokenizeReport r;
  r.up_to_date = true;
  for (int s = 0; s < 2; ++s)
    for (const auto& sh : m.at("shards").at(kSplits[s])) {
      const std::string path = shard_path(prefix, s, int64_t((s == 0 ? r.train_shards : r.val_shards).size()));
      std::error_code ec;
      uint64_t bytes = 0;  // checked: the manifest is a file like any other
      const bool overflow = __builtin_mul_overflow(sh.at("tokens").get<uint64_t>(), m.at("token_bytes").get<uint64_t>(),
                                                   &bytes) ||
                            __builtin_add_overflow(bytes, uint64_t(kShardHeaderBytes), &bytes);
      if (overflow || fs::file_size(path, ec) != bytes)
        throw InputError("tokenize: '" + path + "', listed in " + prefix + ".manifest.json, is missing or has " +
                         "another size; run again with --overwrite to write the output anew.");
      (s == 0 ? r.train_shards : r.val_shards).push_back(path);
    }
  const auto& t = m.at("totals");
  r.train_tokens = t.at("train_tokens").get<int64_t>();
  r.val_tokens = t.at("val_tokens").get<int64_t>();
  r.documents = t.at("documents").get<int64_t>();
  r.skipped_lines = t.at("skipped_lines").get<int64_t>();
  r.input_bytes = t.at("input_bytes").get<uint64_t>();
  return r;
}

void remove_file(const std::string& path) {
  std::error_code ec;
  fs::remove(path, ec);
  if (ec) throw Error("cannot remove '" + path + "': " + ec.message());
}

// What the output prefix already holds, and what this run does with it (docs/data-format.md "Output",
// "Resumable"): nothing or --overwrite -> a fresh run; the manifest of this request -> up to date; the progress
// file of this request -> resume; anything else -> InputError.
struct ExistingOutput {
  std::optional<TokenizeReport> up_to_date;
  ResumeState resume;
  bool resumed = false;
};

ExistingOutput check_existing_output(const std::string& out_prefix, const nlohmann::json& request,
                                     const nlohmann::json& progress_header, uint32_t token_bytes, bool overwrite) {
  const std::string manifest_path = out_prefix + ".manifest.json";
  const std::string progress_path = out_prefix + ".progress.jsonl";
  const std::string redo = " Run again with --overwrite to replace it, or give another OUT_PREFIX.";
  std::error_code ec;
  ExistingOutput out;
  if (overwrite) {
    for (const std::string& p : existing_outputs(out_prefix)) remove_file(p);
    remove_file(manifest_path);
    remove_file(progress_path);
  } else if (fs::exists(manifest_path, ec)) {
    nlohmann::json m = nlohmann::json::parse(std::ifstream(manifest_path), nullptr, false);
    if (m.is_discarded() || !m.is_object() || !m.contains("request"))
      throw InputError("tokenize: '" + manifest_path + "' is not a manifest natsl wrote." + redo);
    if (m["request"] != request)
      throw InputError("tokenize: '" + out_prefix + "' holds the output of another tokenization (its manifest " +
                       "differs in: " + differing_keys(m["request"], request) + ")." + redo);
    try {
      out.up_to_date = report_from_manifest(m, out_prefix);
    } catch (const nlohmann::json::exception& e) {
      throw InputError("tokenize: '" + manifest_path + "' is malformed (" + e.what() + ")." + redo);
    }
    out.up_to_date->manifest = manifest_path;
    remove_file(progress_path);  // left by a run killed right after its manifest was written
  } else if (fs::exists(progress_path, ec)) {
    const std::vector<std::string> lines = read_lines(progress_path);
    nlohmann::json head = lines.empty() ? nlohmann::json() : nlohmann::json::parse(lines[0], nullptr, false);
    if (head != progress_header)
      throw InputError("tokenize: '" + progress_path + "' is from an interrupted tokenization with other inputs " +
                       "or options (they differ in: " +
                       (!head.is_object() ? std::string("format")
                        : head.value("request", nlohmann::json()) == request
                            ? std::string("input modification times or block size")
                            : differing_keys(head.value("request", nlohmann::json()), request)) +
                       "); run it again as it was to resume it." + redo);
    out.resume = read_progress(lines, out_prefix, token_bytes);
    out.resumed = true;
  } else if (const auto old = existing_outputs(out_prefix); !old.empty()) {
    throw InputError("tokenize: '" + old.front() + "' already exists (output without a manifest, e.g. of an older " +
                     "natsl)." + redo);
  }
  return out;
}

// The manifest (docs/data-format.md "Output"); fills the report's shard lists and totals on the way.
nlohmann::json manifest_json(const nlohmann::json& request, uint32_t token_bytes, uint32_t vocab,
                             const std::vector<ShardSink>& sinks, TokenizeReport& report) {
  nlohmann::json m;
  m["format"] = "natsl-token-shards";
  m["version"] = 1;
  m["request"] = request;
  m["token_bytes"] = token_bytes;
  m["vocab_size"] = vocab;
  m["inputs"] = nlohmann::json::array();
  for (const InputReport& in : report.inputs) {
    m["inputs"].push_back({{"path", in.file.path},
                           {"format", input_format_name(in.file.format)},
                           {"compression", compression_name(in.file.compression)},
                           {"bytes", in.file.bytes},
                           {"xxh3_64", in.xxh3},
                           {"documents", in.documents},
                           {"tokens", in.tokens},
                           {"skipped_lines",
                            {{"invalid_json", in.skipped_invalid_json},
                             {"missing_field", in.skipped_missing_field},
                             {"not_utf8", in.skipped_not_utf8}}}});
    report.documents += in.documents;
    report.skipped_lines += in.skipped();
  }
  for (int s = 0; s < 2; ++s) {
    nlohmann::json list = nlohmann::json::array();
    for (const ShardInfo& i : sinks[size_t(s)].shards()) {
      list.push_back({{"file", fs::path(i.path).filename().string()}, {"tokens", i.tokens}, {"crc32", hex32(i.crc32)}});
      (s == 0 ? report.train_shards : report.val_shards).push_back(i.path);
    }
    m["shards"][kSplits[s]] = list;
  }
  m["totals"] = {{"documents", report.documents},     {"train_tokens", report.train_tokens},
                 {"val_tokens", report.val_tokens},   {"input_bytes", report.input_bytes},
                 {"skipped_lines", report.skipped_lines}};
  return m;
}

}  // namespace

TokenizeReport tokenize(const std::vector<std::string>& input_specs, const std::string& out_prefix,
                        const Tokenizer& tok, const TokenizeOptions& opts) {
  const auto t0 = Clock::now();
  if (input_specs.empty()) throw InputError("tokenize: give at least one input (a file, a directory or a glob).");
  check_options(opts);
  const fs::path parent = fs::path(out_prefix).parent_path();
  std::error_code ec;
  if (!parent.empty() && !fs::is_directory(parent, ec))
    throw InputError("tokenize: output directory '" + parent.string() + "' (from OUT_PREFIX '" + out_prefix +
                     "') does not exist; create it first.");
  const std::vector<InputFile> inputs = discover_inputs(input_specs);
  if (tok.vocab_size() < 1 || uint64_t(tok.vocab_size()) > std::numeric_limits<uint32_t>::max())
    throw InputError("tokenize: the tokenizer's vocabulary size " + std::to_string(tok.vocab_size()) +
                     " does not fit a shard header (1 .. 2^32 - 1).");
  const uint32_t vocab = uint32_t(tok.vocab_size());
  const uint32_t token_bytes = token_bytes_for_vocab(vocab);
  const Encoder enc{tok, opts, marker(tok, opts.bos, tok.bos_id(), "bos"), marker(tok, opts.eos, tok.eos_id(), "eos"),
                    tok.kind() != "byte"};
  // A SentencePiece model that does not let long documents be cut into words: say once why it is slow.
  if (const auto* spm = dynamic_cast<const SentencePieceTokenizer*>(&tok); spm && !spm->piecewise())
    fmt::print(stderr, "note: SentencePiece model '{}': each document is encoded in one call (slow for long "
                       "documents), as {}\n", spm->model_path(), spm->whole_document_reason());

  // What the output is a function of: a finished or interrupted run with the same request is this run.
  nlohmann::json request;
  request["tokenizer"] = tok.identity();
  request["options"] = {{"text_field", opts.text_field},
                        {"bad_lines", opts.bad_lines == BadLines::Skip ? "skip" : "error"},
                        {"bos", enc.bos.has_value()},
                        {"eos", enc.eos.has_value()},
                        {"val_fraction", opts.val_fraction},
                        {"max_tokens_per_shard", opts.max_tokens_per_shard},
                        {"strip_utf8_bom", opts.strip_utf8_bom}};
  request["inputs"] = nlohmann::json::array();
  nlohmann::json mtimes = nlohmann::json::array();
  for (const InputFile& in : inputs) {
    request["inputs"].push_back({{"path", in.path}, {"bytes", in.bytes}});
    mtimes.push_back(in.mtime_ns);
  }
  nlohmann::json progress_header = {{"natsl_tokenize_progress", 1}, {"request", request},
                                    {"mtime_ns", mtimes}, {"block_bytes", opts.block_bytes}};

  const std::string manifest_path = out_prefix + ".manifest.json";
  const std::string progress_path = out_prefix + ".progress.jsonl";
  ExistingOutput existing = check_existing_output(out_prefix, request, progress_header, token_bytes, opts.overwrite);
  if (existing.up_to_date) {
    existing.up_to_date->seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    return *existing.up_to_date;
  }
  const ResumeState& resume = existing.resume;
  const bool resumed = existing.resumed;

  // The progress file as far as it is trusted, then appended to as blocks and shards finish.
  {
    std::string text = progress_header.dump() + "\n";
    for (const auto& b : resume.blocks) text += b.dump() + "\n";
    for (int s = 0; s < 2; ++s)
      for (size_t i = 0; i < resume.shards[s].size(); ++i)
        text += shard_record(s, int64_t(i), resume.shards[s][i]).dump() + "\n";
    replace_file_atomically(progress_path, text);
  }
  AppendOnlyFile progress(progress_path);
  // A shard's record follows its (atomic, synced) file; a kill between the two only costs writing it again.
  auto on_shard = [&progress](int split, int64_t index, const ShardInfo& s) {
    progress.append(shard_record(split, index, s).dump() + "\n");
    progress.sync();
  };
  std::vector<ShardSink> sinks;
  for (int s = 0; s < 2; ++s) {
    sinks.emplace_back(out_prefix, s, opts.max_tokens_per_shard, token_bytes, vocab, on_shard);
    int64_t kept = 0;
    for (const ShardInfo& i : resume.shards[s]) kept += i.tokens;
    sinks.back().resume(resume.shards[s], resume.start[s], kept - resume.start[s]);
  }

  TokenizeReport report;
  report.resumed = resumed;
  report.kept_shards = int64_t(resume.shards[0].size() + resume.shards[1].size());
  report.inputs.resize(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    report.inputs[i].file = inputs[i];
    report.input_bytes += inputs[i].bytes;
  }
  int threads = opts.threads > 0 ? opts.threads : int(std::thread::hardware_concurrency());
  threads = std::max(1, threads);
  ProgressMeter meter(opts.progress, report.input_bytes);
  uint64_t bytes_done = 0;
  std::vector<int> warnings_shown(inputs.size(), 0);
  int64_t prev_end[2] = {0, 0};
  {
    Pipeline pipe(inputs, enc, threads, opts.block_bytes, int64_t(resume.blocks.size()));
    while (std::optional<Result> r = pipe.next()) {
      if (r->error) std::rethrow_exception(r->error);
      const Block& b = r->block;
      InputReport& in = report.inputs[size_t(b.input)];
      nlohmann::json rec;
      if (b.skip) {
        rec = resume.blocks[size_t(b.index)];
      } else {
        for (int s = 0; s < 2; ++s) sinks[size_t(s)].push(std::move(r->tokens[s]));
        rec = {{"block", b.index},
               {"input", b.input},
               {"documents", r->counts.documents},
               {"invalid_json", r->counts.invalid_json},
               {"missing_field", r->counts.missing_field},
               {"not_utf8", r->counts.not_utf8},
               {"train_end", sinks[0].position()},
               {"val_end", sinks[1].position()}};
        progress.append(rec.dump() + "\n");
        for (const std::string& w : r->warnings)
          if (warnings_shown[size_t(b.input)]++ < kWarningsPerInput) fmt::print(stderr, "warning: {}\n", w);
      }
      if (rec.at("input").get<int64_t>() != b.input)
        throw InputError("tokenize: '" + progress_path + "' does not match the inputs (block " +
                         std::to_string(b.index) + "); run again with --overwrite.");
      const int64_t end[2] = {rec["train_end"].get<int64_t>(), rec["val_end"].get<int64_t>()};
      in.documents += rec["documents"].get<int64_t>();
      in.tokens += end[0] - prev_end[0] + end[1] - prev_end[1];
      in.skipped_invalid_json += rec["invalid_json"].get<int64_t>();
      in.skipped_missing_field += rec["missing_field"].get<int64_t>();
      in.skipped_not_utf8 += rec["not_utf8"].get<int64_t>();
      prev_end[0] = end[0];
      prev_end[1] = end[1];
      if (b.last) in.xxh3 = checksum_hex(b.xxh3);
      bytes_done += b.raw_bytes;
      meter.update(bytes_done, sinks[0].position() + sinks[1].position());
    }
  }
  for (auto& s : sinks) s.flush();
  meter.update(bytes_done, sinks[0].position() + sinks[1].position(), /*final=*/true);

  // The manifest: a function of the request alone (no times, no thread count), written atomically.
  report.train_tokens = sinks[0].position();
  report.val_tokens = sinks[1].position();
  const nlohmann::json m = manifest_json(request, token_bytes, vocab, sinks, report);
  replace_file_atomically(manifest_path, m.dump(2) + "\n");
  progress.close();
  remove_file(progress_path);
  fsync_directory(parent.empty() ? "." : parent.string());
  report.manifest = manifest_path;
  report.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return report;
}

TokenizeReport tokenize_files(const std::vector<std::string>& inputs, const std::string& out_prefix,
                              const TokenizeOptions& opts) {
  const std::unique_ptr<Tokenizer> tok = open_tokenizer({"byte", ""});
  return tokenize(inputs, out_prefix, *tok, opts);
}

}  // namespace natsl
