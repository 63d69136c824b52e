#pragma once
// Text -> token shards (`natsl tokenize`): inputs found by data/text_input.h, tokenized on many threads,
// written as shards OUT_PREFIX.train.NNNNNN.bin (and OUT_PREFIX.val.NNNNNN.bin) with a manifest
// OUT_PREFIX.manifest.json. docs/data-format.md ("natsl tokenize") describes the output; in short:
//
// - Determinism: the inputs are cut into blocks by their content alone (a text file is one block; a JSONL
//   file is cut at the first line end after every `block_bytes`), blocks are tokenized in parallel and their
//   tokens appended to the shards in block order. Shards and manifest are the same bytes for any thread count.
// - Documents: [BOS] tokens [EOS] (each marker when asked for and the tokenizer has it). A text file is one
//   document; with val_fraction f its last f (by bytes) goes to the validation stream (train gets
//   [BOS] head, val gets tail [EOS]). A JSONL document goes whole to validation when XXH3-64(text) / 2^64 < f.
// - Resume: while it runs, OUT_PREFIX.progress.jsonl records each finished block and shard. A run stopped at
//   any moment (kill -9 included) and started again with the same inputs and options keeps the shards whose
//   checksums match and gives the same bytes as a run never stopped. When done the manifest is written
//   (atomically) and the progress file removed; a later identical run finds it up to date.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/text_input.h"
#include "data/tokenizer.h"

namespace natsl {

enum class BadLines { Error, Skip };

struct TokenizeOptions {
  // Fraction held out as validation (see above); 0 writes train shards only.
  double val_fraction = 0.0;
  int64_t max_tokens_per_shard = int64_t(1) << 30;
  // Drop a leading UTF-8 byte-order mark (EF BB BF) of each text file (warandpeace.txt has one).
  bool strip_utf8_bom = true;
  std::string text_field = "text";                 // the JSONL field that holds a document
  BadLines bad_lines = BadLines::Error;            // a bad JSONL line (or non-UTF-8 text for a non-byte tokenizer)
  std::optional<bool> bos, eos;                    // unset: yes when the tokenizer has the marker
  int threads = 0;                                 // 0: std::thread::hardware_concurrency()
  int64_t block_bytes = int64_t(4) << 20;          // JSONL block size (the unit of parallel work)
  // What to do with an output prefix that already holds output: false resumes an interrupted run with the
  // same request, finds a finished one up to date, and refuses anything else; true deletes it and starts anew.
  bool overwrite = false;
  bool progress = false;                           // progress lines on stderr
};

// Per input, as the manifest records it.
struct InputReport {
  InputFile file;
  std::string xxh3;  // XXH3-64 of the file's bytes on disk, 16 hex digits
  int64_t documents = 0, tokens = 0;
  int64_t skipped_invalid_json = 0, skipped_missing_field = 0, skipped_not_utf8 = 0;
  int64_t skipped() const { return skipped_invalid_json + skipped_missing_field + skipped_not_utf8; }
};

struct TokenizeReport {
  std::vector<std::string> train_shards, val_shards;
  int64_t train_tokens = 0, val_tokens = 0;
  int64_t documents = 0, skipped_lines = 0;
  uint64_t input_bytes = 0;
  std::vector<InputReport> inputs;
  std::string manifest;     // its path
  bool up_to_date = false;  // the prefix already held this exact output; nothing was written
  int64_t kept_shards = 0;  // shards kept from an interrupted run (resumed when > 0 or kept blocks > 0)
  bool resumed = false;
  double seconds = 0;
};

// Tokenizes `inputs` (files, directories, globs) into shards at out_prefix. Bad input (a missing file, a bad
// JSONL line under BadLines::Error, an output prefix holding other output) is an InputError naming the file,
// line or key and what to do.
TokenizeReport tokenize(const std::vector<std::string>& inputs, const std::string& out_prefix, const Tokenizer& tok,
                        const TokenizeOptions& opts = {});

// The byte tokenizer (u16 shards, vocab_size 258), as the trainer's `data.text.train: FILE` uses it.
TokenizeReport tokenize_files(const std::vector<std::string>& inputs, const std::string& out_prefix,
                              const TokenizeOptions& opts = {});

}  // namespace natsl
