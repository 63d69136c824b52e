#pragma once
// Helpers for the data tests: a fresh temporary directory per test, file byte edits, error matching.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/config_key_error.h"
#include "core/error.h"
#include "data/crc32.h"

namespace natsl::testing {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "natsl_data_XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data()) ? tmpl : std::string();
    EXPECT_FALSE(path_.empty());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

// The field a generator's validate(options) names in its ConfigKeyError's key(); "" when it accepts them.
template <class Options>
std::string invalid_field(const Options& o) {
  try {
    validate(o);
  } catch (const ConfigKeyError& e) {
    return e.key();
  }
  return "";
}

// One change to a generator's good options and the field validate() must then name ("" = still accepted).
template <class Options>
struct FieldCase {
  std::function<void(Options&)> change;
  std::string field;
};

// `ok` passes validate(); each case's change makes it name that case's field.
template <class Options>
void expect_invalid_fields(const Options& ok, const std::vector<FieldCase<Options>>& cases) {
  EXPECT_EQ(invalid_field(ok), "");
  for (size_t i = 0; i < cases.size(); ++i) {
    Options o = ok;
    cases[i].change(o);
    EXPECT_EQ(invalid_field(o), cases[i].field) << "case " << i;
  }
}

// Runs fn, expects an InputError whose message contains every one of `parts`.
inline void expect_input_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected natsl::InputError, nothing was thrown";
  } catch (const InputError& e) {
    for (const std::string& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << "message lacks '" << p << "': " << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected natsl::InputError, got another exception: " << e.what();
  }
}

// One change to a source's good options and the parts of the InputError its constructor must then throw.
template <class Options>
struct ErrorCase {
  std::function<void(Options&)> change;
  std::vector<std::string> parts;
};

// A Source made from `ok` is fine; each case's change makes making it throw an InputError with its parts.
template <class Source, class Options>
void expect_source_errors(const Options& ok, const std::vector<ErrorCase<Options>>& cases) {
  EXPECT_NO_THROW(Source{ok});
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i));
    Options o = ok;
    cases[i].change(o);
    expect_input_error([&] { Source{o}; }, cases[i].parts);
  }
}

// A source of a's options restored from a's state (through its JSON text) has that state and serves a's
// batch of `step`; one made from `other` options refuses a's state with an InputError holding `parts`.
template <class Source, class Options>
void expect_state_restores(Source& a, int64_t step, const Options& other, const std::vector<std::string>& parts) {
  Source c(a.options());
  c.load_state(nlohmann::json::parse(a.state().dump()));
  EXPECT_EQ(c.state(), a.state());
  EXPECT_EQ(c.next(step).inputs.template to_vector<int32_t>(), a.next(step).inputs.template to_vector<int32_t>());
  expect_input_error([&] { Source(other).load_state(a.state()); }, parts);
}

// A shard's bytes built by hand from docs/data-format.md, for formats and lies write_shard cannot produce:
// version 1 (32-byte header) or 2 (40 bytes: + max_token, header CRC). max_token < 0 records the real max.
inline std::string shard_bytes(uint32_t version, uint32_t token_bytes, const std::vector<uint32_t>& tokens,
                               uint32_t vocab_size, int64_t max_token = -1) {
  std::string body;
  uint32_t mx = 0;
  for (uint32_t t : tokens) {
    body.append(reinterpret_cast<const char*>(&t), token_bytes);  // little-endian: the low bytes first
    mx = std::max(mx, t);
  }
  auto put = [](std::string& s, uint64_t v, int n) { s.append(reinterpret_cast<const char*>(&v), size_t(n)); };
  std::string h = "NATSLTOK";
  put(h, version, 4);
  put(h, token_bytes, 4);
  put(h, tokens.size(), 8);
  put(h, crc32_update(0, body.data(), body.size()), 4);
  put(h, vocab_size, 4);
  if (version >= 2) {
    put(h, max_token < 0 ? mx : uint32_t(max_token), 4);
    put(h, crc32_update(0, h.data(), h.size()), 4);
  }
  return h + body;
}

// Recomputes a version-2 header's CRC after a test edited header fields.
inline std::string reseal_header(std::string bytes) {
  uint32_t c = crc32_update(0, bytes.data(), 36);
  bytes.replace(36, 4, reinterpret_cast<const char*>(&c), 4);
  return bytes;
}

inline std::string shared_data(const std::string& name) { return std::string(NATSL_SHARED_DIR) + "/data/" + name; }

}  // namespace natsl::testing
