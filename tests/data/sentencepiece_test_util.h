#pragma once
// Scaffolding of the SentencePiece tests: a skip for builds without the library, and a suite base whose models
// are trained once, into a temporary directory that lives as long as the suite.
#include <gtest/gtest.h>

#include <string>

#include "data/sentencepiece_tokenizer.h"
#include "tests/data/data_test_util.h"

#define SKIP_WITHOUT_SENTENCEPIECE() \
  if (!natsl::sentencepiece_available()) GTEST_SKIP() << natsl::kSentencePieceMissing

namespace natsl::testing {

// `Suite` (deriving from TrainedModelSuite<Suite>, so that each suite has its own directory) trains its models
// in its SetUpTestSuite into model(name), after open_model_dir() said yes.
template <class Suite>
class TrainedModelSuite : public ::testing::Test {
 protected:
  // Makes the suite's directory; false, and no directory, in a build without SentencePiece (its tests skip).
  static bool open_model_dir() {
    if (!sentencepiece_available()) return false;
    dir_ = new TempDir;
    return true;
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::string model(const std::string& name) { return dir_->file(name + ".model"); }
  static inline TempDir* dir_ = nullptr;
};

}  // namespace natsl::testing
