// TcpStore: ranks as threads of this process, rank 0's server on a free port. The store's calls, their
// deadlines and messages, refusal of other jobs' peers, hostile frames, and a server that goes away.
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <future>
#include <memory>
#include <random>
#include <thread>

#include "trainers/dist/tcp_store.h"
#include "tests/trainers/dist/dist_test_util.h"

namespace natsl::dist {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

LaunchInfo rank_info(int rank, int world_size, int port, const std::string& run_id = "test-run") {
  LaunchInfo li = testing::thread_rank(rank, world_size);
  li.master_port = port;
  li.run_id = run_id;
  li.launcher = "natsl";
  return li;
}

// Rank 0 on a port the kernel picks, and ranks 1..world_size-1 connected to it.
struct Job {
  explicit Job(int world_size, const std::string& run_id = "test-run") : world_size(world_size) {
    stores.push_back(std::make_unique<TcpStore>(rank_info(0, world_size, 0, run_id), 5s));
    port = stores[0]->port();
    for (int r = 1; r < world_size; ++r)
      stores.push_back(std::make_unique<TcpStore>(rank_info(r, world_size, port, run_id), 5s));
  }
  TcpStore& operator[](int rank) { return *stores[size_t(rank)]; }
  LaunchInfo info(int rank) const { return rank_info(rank, world_size, port); }
  int world_size;
  std::vector<std::unique_ptr<TcpStore>> stores;
  int port = 0;
};

// A port nobody listens on now (bound to port 0 and released).
int unused_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  socklen_t len = sizeof addr;
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::vector<uint8_t> bytes(const std::string& s) { return {s.begin(), s.end()}; }

template <class E, class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  ADD_FAILURE() << "no exception";
  return "";
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

#define EXPECT_HAS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << "'" << (part) << "' missing in: " << (text)

TEST(TcpStore, SetGetAddCheckWait) {
  Job job(3);
  job[1].set("a", bytes("xyz"));
  EXPECT_EQ(job[2].get("a", 1s), bytes("xyz"));
  EXPECT_EQ(job[0].get("a", 1s), bytes("xyz"));
  job[2].set("a", bytes("replaced"));
  EXPECT_EQ(job[1].get("a", 1s), bytes("replaced"));
  job[0].set("empty", {});
  EXPECT_EQ(job[1].get("empty", 1s), std::vector<uint8_t>{});

  EXPECT_TRUE(job[0].check({"a", "empty"}));
  EXPECT_FALSE(job[0].check({"a", "b"}));
  EXPECT_TRUE(job[0].check({}));

  EXPECT_EQ(job[0].add("n", 2), 2);
  EXPECT_EQ(job[1].add("n", 3), 5);
  EXPECT_EQ(job[2].add("n", -5), 0);
  EXPECT_EQ(job[2].get("n", 1s), bytes("0"));
  EXPECT_HAS(message_of<Error>([&] { job[1].add("a", 1); }), "'a' holds a value that is not a counter");
  EXPECT_EQ(job[1].add("n", 1), 1);  // the connection is fine after a refused add

  // get and wait block until another rank sets the keys.
  auto got = std::async(std::launch::async, [&] { return job[2].get("late", 10s); });
  auto waited = std::async(std::launch::async, [&] { job[1].wait({"late", "later"}, 10s); });
  job[0].set("late", bytes("1"));
  job[0].set("later", bytes("2"));
  EXPECT_EQ(got.get(), bytes("1"));
  waited.get();
  job[1].wait({}, 0ms);
}

TEST(TcpStore, GetTimesOutNamingTheKey) {
  Job job(2);
  const auto start = Clock::now();
  const std::string what = message_of<TimeoutError>([&] { job[1].get("nobody/sets/this", 300ms); });
  const double took = seconds_since(start);
  EXPECT_HAS(what, "'nobody/sets/this'");
  EXPECT_HAS(what, "0.3 s");
  EXPECT_GE(took, 0.29);
  EXPECT_LT(took, 3.0);
  job[1].set("after", {});  // the connection still works
  EXPECT_TRUE(job[0].check({"after"}));
}

TEST(TcpStore, WaitTimesOutNamingTheMissingKeys) {
  Job job(2);
  job[0].set("k1", {});
  const std::string what = message_of<TimeoutError>([&] { job[1].wait({"k1", "k2", "k3"}, 200ms); });
  EXPECT_HAS(what, "keys 'k2', 'k3' were not set within 0.2 s");
  EXPECT_EQ(what.find("k1"), std::string::npos) << what;
}

// Blocked get and wait sleep on the server's condition variable and the client's poll: two seconds of them
// cost next to no CPU time (a polling loop would burn a core).
TEST(TcpStore, WaitsDoNotSpin) {
  Job job(3);
  const double cpu_before = process_cpu_seconds();
  auto a = std::async(std::launch::async, [&] { return message_of<TimeoutError>([&] { job[1].get("x", 1500ms); }); });
  auto b = std::async(std::launch::async, [&] { return message_of<TimeoutError>([&] { job[2].wait({"y"}, 1500ms); }); });
  const std::string timed_out_get = a.get(), timed_out_wait = b.get();
  EXPECT_HAS(timed_out_get, "'x'");
  EXPECT_HAS(timed_out_wait, "'y'");
  EXPECT_LT(process_cpu_seconds() - cpu_before, 0.3);
}

TEST(TcpStore, RendezvousOfAllRanks) {
  Job job(4);
  std::vector<std::future<void>> ranks;
  for (int r = 0; r < 4; ++r)
    ranks.push_back(std::async(std::launch::async, [&, r] { rendezvous(job[r], job.info(r), 10s); }));
  for (auto& f : ranks) f.get();
  EXPECT_TRUE(job[0].check({"natsl/arrived/0", "natsl/arrived/3"}));
}

TEST(TcpStore, RendezvousNamesTheMissingRanksWithinItsDeadline) {
  Job job(4);
  job.stores.resize(2);  // ranks 2 and 3 never come (their connections closed)
  const auto start = Clock::now();
  auto r0 = std::async(std::launch::async, [&] { return message_of<TimeoutError>([&] { rendezvous(job[0], job.info(0), 500ms); }); });
  auto r1 = std::async(std::launch::async, [&] { return message_of<TimeoutError>([&] { rendezvous(job[1], job.info(1), 500ms); }); });
  const std::string what = r0.get();
  r1.get();
  const double took = seconds_since(start);
  EXPECT_HAS(what, "rendezvous timed out after 0.5 s: ranks 2, 3 of 4 did not arrive at 127.0.0.1:" +
                       std::to_string(job.port));
  EXPECT_HAS(what, "MASTER_ADDR/MASTER_PORT");
  EXPECT_GE(took, 0.49);
  EXPECT_LT(took, 3.0);

  // One missing rank is named alone.
  Job three(3);
  three.stores.resize(2);
  auto a = std::async(std::launch::async, [&] { return message_of<TimeoutError>([&] { rendezvous(three[0], three.info(0), 200ms); }); });
  auto b = std::async(std::launch::async, [&] { return message_of<TimeoutError>([&] { rendezvous(three[1], three.info(1), 200ms); }); });
  const std::string one = a.get();
  EXPECT_HAS(one, ": rank 2 of 3 did not arrive");
  b.get();
}

TEST(TcpStore, RefusesAPeerOfAnotherJob) {
  Job job(2, "job-new");
  const std::string what = message_of<InputError>([&] { TcpStore stale(rank_info(1, 2, job.port, "job-old"), 2s); });
  EXPECT_HAS(what, "a process of another job (run id 'job-new'");
  EXPECT_HAS(what, "run id 'job-old'");
  EXPECT_HAS(what, "127.0.0.1:" + std::to_string(job.port));
  // Another world size is another job too.
  EXPECT_HAS(message_of<InputError>([&] { TcpStore other(rank_info(1, 3, job.port, "job-new"), 2s); }), "another job");
  // A rank already connected is refused; the job goes on.
  EXPECT_HAS(message_of<InputError>([&] { TcpStore twin(rank_info(1, 2, job.port, "job-new"), 2s); }),
             "already has a rank 1");
  job[1].set("still", bytes("fine"));
  EXPECT_EQ(job[0].get("still", 1s), bytes("fine"));
}

TEST(TcpStore, LargeValues) {
  Job job(2);
  std::vector<uint8_t> big(8 << 20);
  std::mt19937 rng(7);
  for (auto& b : big) b = uint8_t(rng());
  job[1].set("big", big);
  EXPECT_EQ(job[0].get("big", 5s), big);
  std::vector<uint8_t> too_big(TcpStore::kMaxValueBytes + 1);
  EXPECT_HAS(message_of<Error>([&] { job[1].set("huge", too_big); }), "above the limit");
  EXPECT_HAS(message_of<Error>([&] { job[1].get(std::string(TcpStore::kMaxKeyBytes + 1, 'k'), 1s); }), "above the limit");
  EXPECT_FALSE(job[0].check({"huge"}));
}

// A raw connection to the server; true when the server closed it within 5 s.
bool server_closes(int port, const std::string& bytes_to_send) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(uint16_t(port));
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  EXPECT_EQ(::send(fd, bytes_to_send.data(), bytes_to_send.size(), MSG_NOSIGNAL), ssize_t(bytes_to_send.size()));
  pollfd p{fd, POLLIN, 0};
  char buf[64];
  const bool closed = ::poll(&p, 1, 5000) == 1 && ::recv(fd, buf, sizeof buf, 0) == 0;
  ::close(fd);
  return closed;
}

TEST(TcpStore, HostileFramesCloseOnlyTheirConnection) {
  Job job(2);
  EXPECT_TRUE(server_closes(job.port, std::string("\xf0\xff\xff\xff", 4)));  // a 4 GiB frame: refused unread
  EXPECT_TRUE(server_closes(job.port, std::string("\x05\x00\x00\x00GET /", 9)));  // not a hello
  // A hello whose run id claims more bytes than the frame holds.
  EXPECT_TRUE(server_closes(job.port, std::string("\x0d\x00\x00\x00\x01NTSL\x01\x00\x00\x00\xff\xff\x00\x00", 17)));
  job[1].set("k", bytes("v"));
  EXPECT_EQ(job[0].get("k", 1s), bytes("v"));
}

TEST(TcpStore, AClientOfAGoneServerGetsAClearError) {
  Job job(2);
  job[1].set("k", {});
  job.stores[0].reset();  // rank 0 exits
  const std::string what = message_of<Error>([&] { job[1].get("k", 1s); });
  EXPECT_HAS(what, "lost the connection to the rendezvous server on 127.0.0.1:" + std::to_string(job.port) +
                       " (rank 0 exited?)");
  EXPECT_HAS(message_of<Error>([&] { job[1].set("k", {}); }), "lost the connection");
}

TEST(TcpStore, StoppingTheServerEndsAWaitingClientsCall) {
  Job job(2);
  auto waiting = std::async(std::launch::async, [&] { return message_of<Error>([&] { job[1].get("never", 60s); }); });
  // Stop rank 0 once the get is queued on the server (or before; either way the call must end at once).
  std::this_thread::sleep_for(50ms);
  const auto start = Clock::now();
  job.stores[0].reset();
  const std::string what = waiting.get();
  EXPECT_HAS(what, "lost the connection");
  EXPECT_LT(seconds_since(start), 3.0);
}

TEST(TcpStore, ClientsWaitForALateServer) {
  const int port = unused_port();
  auto client = std::async(std::launch::async, [&] {
    TcpStore s(rank_info(1, 2, port), 10s);
    s.set("from1", {});
  });
  std::this_thread::sleep_for(300ms);  // the client retries meanwhile
  TcpStore server(rank_info(0, 2, port), 10s);
  client.get();
  EXPECT_TRUE(server.check({"from1"}));
}

TEST(TcpStore, ConnectTimesOutNamingTheServer) {
  const int port = unused_port();
  const auto start = Clock::now();
  const std::string what = message_of<TimeoutError>([&] { TcpStore s(rank_info(1, 2, port), 300ms); });
  EXPECT_HAS(what, "rank 1 could not reach the rendezvous server on 127.0.0.1:" + std::to_string(port) + " within 0.3 s");
  EXPECT_HAS(what, "is rank 0 started");
  EXPECT_LT(seconds_since(start), 3.0);
}

TEST(TcpStore, PortInUseIsBadInput) {
  Job job(2);
  const std::string what = message_of<InputError>([&] { TcpStore second(rank_info(0, 2, job.port), 1s); });
  EXPECT_HAS(what, "MASTER_PORT " + std::to_string(job.port) + " is in use");
}

TEST(TcpStore, SecondsText) {
  EXPECT_EQ(seconds_text(30000ms), "30 s");
  EXPECT_EQ(seconds_text(500ms), "0.5 s");
  EXPECT_EQ(seconds_text(1250ms), "1.25 s");
}

}  // namespace
}  // namespace natsl::dist
