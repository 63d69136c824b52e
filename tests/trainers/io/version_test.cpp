// The build's identity (trainers/io/version.cpp) is what checkpoints, benchmark rows and the golden CPU trace
// are keyed on. Moving version.cpp once left CMake defining its strings for a file that no longer existed:
// every checkpoint said "natsl unknown (commit unknown)" and the golden trace test found no entry for the
// "unknown compiler" and checked nothing. These tests fail in that case.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "trainers/io/version.h"

namespace natsl {
namespace {

TEST(Version, IsTheProjectVersionOfThisBuild) { EXPECT_EQ(std::string(natsl_version()), NATSL_PROJECT_VERSION); }

TEST(Version, NamesACommit) {
  const std::string commit = natsl_git_commit();
  ASSERT_FALSE(commit.empty());
  // "unknown" is allowed only where neither -DNATSL_COMMIT nor git could give one: a tree without .git, or one
  // git refuses to read (e.g. owned by another user).
  const std::string src = NATSL_SOURCE_DIR;
  if (std::filesystem::exists(src + "/.git") &&
      std::system(("git -C '" + src + "' rev-parse --short HEAD >/dev/null 2>&1").c_str()) == 0) {
    EXPECT_NE(commit, "unknown") << "configured in a git checkout git can read, yet the build names no commit";
  }
  if (commit != "unknown") {
    EXPECT_GE(commit.size(), 7u) << commit;
  }
}

TEST(Version, CpuNumericsNameTheCompiler) {
  const std::string n = natsl_cpu_numerics();
  EXPECT_EQ(n.rfind("unknown compiler", 0), std::string::npos) << n;
  EXPECT_NE(n.find("Eigen "), std::string::npos) << n;
}

}  // namespace
}  // namespace natsl
