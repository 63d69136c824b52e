#pragma once
// Shared by the checkpoint tests (checkpoint_test.cpp, checkpoint_shards_test.cpp): damaging a written file and
// reading the error a checkpoint directory gives when opened.
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "core/error.h"
#include "tests/trainers/trainer_test_util.h"
#include "trainers/io/checkpoint.h"

namespace natsl::testing {

// XORs one byte `offset` bytes before the end of the file (a change no size or header check can notice).
inline void flip_byte_from_end(const std::string& path, uint64_t offset) {
  namespace fs = std::filesystem;
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f) << path;
  f.seekg(std::streamoff(fs::file_size(path) - offset));
  char c = 0;
  f.read(&c, 1);
  c = char(c ^ 0x10);
  f.seekp(std::streamoff(fs::file_size(path) - offset));
  f.write(&c, 1);
  ASSERT_TRUE(f) << path;
}

// The InputError opening checkpoint `dir` gives; "" when it opens.
inline std::string open_error(const std::string& dir) {
  return error_of<InputError>([&] { CheckpointReader r(dir); });
}

}  // namespace natsl::testing
