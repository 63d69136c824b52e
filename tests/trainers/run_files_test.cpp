// The files of a run directory: the lock one run holds on train.out_dir, metrics.jsonl (appended only; the
// resume rewrite replaces it by rename, never in place) and the atomic whole-file replacement.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "core/error.h"
#include "trainers/io/metrics_log.h"
#include "trainers/io/run_dir_lock.h"
#include "data/sync_file.h"
#include "trainers/trainer.h"
#include "trainer_test_util.h"

namespace natsl {
namespace {

namespace fs = std::filesystem;
using testing::error_of;
using testing::read_text;
using testing::TempDir;
using testing::write_text;

ino_t inode_of(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

std::string rows(int from, int to) {
  std::string s;
  for (int i = from; i <= to; ++i) s += "{\"loss\":1.5,\"step\":" + std::to_string(i) + "}\n";
  return s;
}

// flock locks belong to an open file description, so a second lock in the same process conflicts too.
TEST(RunDirLock, ASecondHolderIsRefusedNamingTheDirectoryAndPid) {
  TempDir dir;
  const std::string out = dir / "run";
  {
    RunDirLock first(out);
    first.keep_directory();
    EXPECT_EQ(read_text(out + "/.lock"), std::to_string(::getpid()) + "\n");
    std::string err;
    try {
      RunDirLock second(out);
    } catch (const InputError& e) {
      err = e.what();
    }
    EXPECT_NE(err.find("train.out_dir '" + out + "' is in use by another natsl run (pid " + std::to_string(::getpid()) + ")"),
              std::string::npos)
        << err;
  }
  EXPECT_NO_THROW(RunDirLock again(out));  // released with its holder
}

TEST(RunDirLock, ASetupThatFailsLeavesNoDirectoryBehind) {
  TempDir dir;
  { RunDirLock lock(dir / "a/b/run"); }
  EXPECT_FALSE(fs::exists(dir / "a"));
  {
    RunDirLock lock(dir / "kept/run");
    lock.keep_directory();
  }
  EXPECT_TRUE(fs::exists(dir / "kept/run/.lock"));
  fs::create_directories(dir / "existing");
  { RunDirLock lock(dir / "existing"); }
  EXPECT_TRUE(fs::exists(dir / "existing"));  // not ours to remove
}

TEST(RunDirLock, AnUnusableDirectoryIsBadInput) {
  TempDir dir;
  write_text(dir / "file", "x");
  const std::string under = error_of([&] { RunDirLock l(dir / "file/run"); });
  EXPECT_NE(under.find("train.out_dir '" + dir / "file/run" + "' cannot be created"), std::string::npos) << under;
  EXPECT_NE(under.find("Not a directory"), std::string::npos) << under;
  const std::string file = error_of([&] { RunDirLock l(dir / "file"); });
  EXPECT_NE(file.find("is a file, not a directory"), std::string::npos) << file;
  EXPECT_THROW(RunDirLock l(dir / "file/run"), InputError);
}

// Two Trainers on one out_dir in one process: the second is refused before it writes anything.
TEST(RunDirLock, TwoTrainersCannotShareAnOutDir) {
  TempDir dir;
  RunConfig cfg = testing::millisecond_run_config(dir / "run");
  cfg.train.steps = 2;
  cfg.train.batch_size = 2;
  validate_config(cfg);
  Trainer first(cfg, TrainerOptions{nullptr, true});
  cfg.resume = "auto";
  EXPECT_THROW(Trainer second(cfg, TrainerOptions{nullptr, true}), InputError);
  EXPECT_EQ(first.train().step, 2);
  EXPECT_EQ(testing::count_lines(dir / "run/metrics.jsonl"), 2u);
}

// The rewrite of a resume goes through a new file renamed over the old: a hard link to the old file (what a
// reader holding it open, or a crash mid-rewrite, would see) keeps every old line.
TEST(MetricsLog, ResumeRewriteNeverTruncatesInPlace) {
  TempDir dir;
  const std::string path = dir / "metrics.jsonl";
  write_text(path, rows(1, 5) + "{\"step\":6,\"lo");  // a cut last line, as a killed run leaves it
  fs::create_hard_link(path, dir / "old.jsonl");
  {
    MetricsLog log(path, 3);
    log.write({{"step", 4}});
  }
  EXPECT_EQ(read_text(dir / "old.jsonl"), rows(1, 5) + "{\"step\":6,\"lo");
  EXPECT_EQ(read_text(path), rows(1, 3) + "{\"step\":4}\n");
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST(MetricsLog, NothingToDropKeepsTheFile) {
  TempDir dir;
  const std::string path = dir / "metrics.jsonl";
  write_text(path, rows(1, 3));
  const ino_t before = inode_of(path);
  {
    MetricsLog log(path, 3);
    log.write({{"step", 4}});
  }
  EXPECT_EQ(inode_of(path), before);
  EXPECT_EQ(read_text(path), rows(1, 3) + "{\"step\":4}\n");
}

// A rewrite that cannot be done leaves the file as it was and says why.
TEST(MetricsLog, AFailedRewriteLeavesTheOldFile) {
  TempDir dir;
  const std::string path = dir / "metrics.jsonl";
  write_text(path, rows(1, 5));
  fs::create_directories(path + ".tmp/blocker");
  const std::string err = error_of([&] { MetricsLog log(path, 2); });
  EXPECT_NE(err.find(path + ".tmp"), std::string::npos) << err;
  EXPECT_EQ(read_text(path), rows(1, 5));
}

TEST(MetricsLog, AWriteToAFullDiskThrows) {
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full";
  TempDir dir;
  const std::string path = dir / "metrics.jsonl";
  fs::create_symlink("/dev/full", path);
  MetricsLog log(path, 0);
  const std::string err = error_of([&] { log.write({{"step", 1}}); });
  EXPECT_NE(err.find("cannot write '" + path + "': No space left on device"), std::string::npos) << err;
}

TEST(SyncFile, ReplaceFileAtomicallyWritesANewFile) {
  TempDir dir;
  const std::string path = dir / "config.yaml";
  write_text(path, "old\n");
  fs::create_hard_link(path, dir / "old.yaml");
  replace_file_atomically(path, "new\n");
  EXPECT_EQ(read_text(path), "new\n");
  EXPECT_EQ(read_text(dir / "old.yaml"), "old\n");
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  fs::create_symlink("/dev/full", dir / "full.txt");
  EXPECT_NO_THROW(replace_file_atomically(dir / "full.txt", "x"));  // the link is replaced, not written through
  if (fs::exists("/dev/full")) {
    AppendOnlyFile f("/dev/full");
    EXPECT_THROW(f.append("x"), Error);
  }
  // Another writer's file: a writer that fails part-way leaves the old file and no PATH.tmp.
  EXPECT_THROW(replace_file_atomically_with(path, [](const std::string& tmp) {
                 write_text(tmp, "half");
                 throw Error("disk full");
               }),
               Error);
  EXPECT_EQ(read_text(path), "new\n");
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  replace_file_atomically_with(path, [](const std::string& tmp) { write_file_synced(tmp, "newer\n"); });
  EXPECT_EQ(read_text(path), "newer\n");
  EXPECT_EQ(read_text(dir / "old.yaml"), "old\n");
}

}  // namespace
}  // namespace natsl
