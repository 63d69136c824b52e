#pragma once
// `natsl train --nproc N`: N ranks of one job on this host, started and supervised like torchrun's agent.
//
// Each rank is the natsl program again (fork + exec of /proc/self/exe), with RANK, WORLD_SIZE=N, LOCAL_RANK,
// LOCAL_WORLD_SIZE=N, MASTER_ADDR=127.0.0.1, MASTER_PORT (a free port) and NATSL_RUN_ID (random) set;
// OMP_NUM_THREADS, when unset, gives each rank an equal share of the cores.
//
// Supervision: SIGINT and SIGTERM reach the launcher and are passed on to every rank (a second one again, so
// the ranks' "second signal stops at once" holds). When a rank exits non-zero or is killed, the launcher
// prints one line naming it, sends SIGTERM to the others, and SIGKILL to those still running after the grace
// period. Exit code: 0 when every rank exited 0, else the first failure's code (128 + signal if killed).
//
// Process groups: each rank runs in a process group of its own, so a terminal's Ctrl-C reaches only the
// launcher, which passes one SIGINT on (were the ranks in the terminal's group they would get the
// terminal's SIGINT and the launcher's, and a second SIGINT makes a trainer exit without its checkpoint).
// So that no rank outlives a launcher that is killed (kill -9, a closed terminal), each rank gets SIGTERM
// when the launcher dies (PR_SET_PDEATHSIG; the launcher must run on a thread that lives until it returns).
//
// Output: rank 0's stdout and stderr are the launcher's; the other ranks' stdout goes to /dev/null
// (keep_all_stdout keeps it), their stderr is kept (errors of any rank are seen). stdin is /dev/null.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

namespace natsl::dist {

struct LocalLaunchOptions {
  std::string program;                        // the program to run; "" = this one (/proc/self/exe)
  int master_port = 0;                        // 0: a free port of this host (free_tcp_port())
  std::chrono::milliseconds grace{30000};     // after a rank fails: SIGTERM to the others, SIGKILL after this
  bool keep_all_stdout = false;               // the other ranks' stdout too (default: rank 0's only)
  std::FILE* log = stderr;                    // the launcher's own lines
};

// Runs nproc ranks of `argv` (argv[0] is the name the ranks see, e.g. "natsl"; the caller has removed
// --nproc from it) and waits for all of them. Returns the exit code described above. InputError for
// nproc < 1; Error when a rank cannot be started (all started ones are stopped first).
int launch_local_ranks(int nproc, const std::vector<std::string>& argv, const LocalLaunchOptions& options = {});

// A TCP port that is free on this host now (bound to port 0, read back, released). Another process may take
// it before rank 0 binds it; rank 0 then fails with "MASTER_PORT ... is in use" and a rerun picks another.
int free_tcp_port();

// argv without "--nproc N" / "--nproc=N" (what the ranks are given).
std::vector<std::string> args_without_nproc(const std::vector<std::string>& argv);

}  // namespace natsl::dist
