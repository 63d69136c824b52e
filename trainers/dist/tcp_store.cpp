#include "trainers/dist/tcp_store.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <cstring>
#include <list>
#include <map>
#include <optional>
#include <set>
#include <thread>
#include <utility>

namespace natsl::dist {

namespace {

using Clock = std::chrono::steady_clock;
using Deadline = std::optional<Clock::time_point>;

constexpr uint32_t kMagic = 0x4c53544e;  // "NTSL"
constexpr uint32_t kProtocolVersion = 1;
// A frame carries one key and its value, or a list of keys (check, wait) of at most the same size.
constexpr size_t kMaxFrameBytes = TcpStore::kMaxValueBytes + TcpStore::kMaxKeyBytes + 1024;
// How long past a request's own wait the client waits for the reply before calling the server lost.
constexpr Millis kReplySlack{30000};
// A connection that sends no hello within this is dropped (a port scanner, a stuck peer).
constexpr Millis kHelloTimeout{10000};
// Waits are capped (a year) so that a deadline never overflows the clock.
constexpr Millis kMaxWait{Millis(365LL * 24 * 3600 * 1000)};

enum class Op : uint8_t { Hello = 1, Set = 2, Get = 3, Add = 4, Check = 5, Wait = 6 };
enum class Status : uint8_t { Ok = 0, Timeout = 1, Refused = 2, Failed = 3 };
enum class Refusal : uint8_t { OtherJob = 1, RankOutOfRange = 2, RankTaken = 3, Protocol = 4 };

// A frame that breaks the protocol (a bad length, a truncated field): its connection is closed.
struct ProtocolError {};

Millis clamp_wait(Millis d) { return std::clamp(d, Millis(0), kMaxWait); }

// A frame under construction: 4 bytes of length, then the payload, integers little-endian.
class Writer {
 public:
  Writer() : buf_(4, '\0') {}
  Writer& u8(uint8_t v) {
    buf_.push_back(char(v));
    return *this;
  }
  Writer& op(Op o) { return u8(uint8_t(o)); }
  Writer& status(Status s) { return u8(uint8_t(s)); }
  Writer& u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) buf_.push_back(char((v >> (8 * i)) & 0xff));
    return *this;
  }
  Writer& i64(int64_t v) {
    for (int i = 0; i < 8; ++i) buf_.push_back(char((uint64_t(v) >> (8 * i)) & 0xff));
    return *this;
  }
  Writer& str(const std::string& s) { return bytes(s.data(), s.size()); }
  Writer& bytes(const void* p, size_t n) {
    u32(uint32_t(n));
    buf_.append(static_cast<const char*>(p), n);
    return *this;
  }
  std::string frame() {
    const uint32_t n = uint32_t(buf_.size() - 4);
    for (int i = 0; i < 4; ++i) buf_[size_t(i)] = char((n >> (8 * i)) & 0xff);
    return std::move(buf_);
  }

 private:
  std::string buf_;
};

// A received payload, read field by field; every read is bounds-checked.
class Reader {
 public:
  explicit Reader(const std::string& s) : p_(s.data()), end_(s.data() + s.size()) {}
  uint8_t u8() {
    need(1);
    return uint8_t(*p_++);
  }
  uint32_t u32() {
    need(4);
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= uint32_t(uint8_t(p_[i])) << (8 * i);
    p_ += 4;
    return v;
  }
  int64_t i64() {
    need(8);
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= uint64_t(uint8_t(p_[i])) << (8 * i);
    p_ += 8;
    return int64_t(v);
  }
  std::string str(size_t cap) {
    const uint32_t n = u32();
    if (n > cap) throw ProtocolError{};
    need(n);
    std::string s(p_, n);
    p_ += n;
    return s;
  }
  // A key list: the count is checked against the bytes left (each key takes at least its 4-byte length).
  std::vector<std::string> keys() {
    const uint32_t n = u32();
    if (n > left() / 4) throw ProtocolError{};
    std::vector<std::string> k(n);
    for (auto& s : k) s = str(TcpStore::kMaxKeyBytes);
    return k;
  }
  size_t left() const { return size_t(end_ - p_); }
  void done() const {
    if (p_ != end_) throw ProtocolError{};
  }

 private:
  void need(size_t n) const {
    if (left() < n) throw ProtocolError{};
  }
  const char* p_;
  const char* end_;
};

enum class Io { Ok, Closed, TimedOut, Cancelled };

int poll_timeout_ms(const Deadline& deadline) {
  if (!deadline) return -1;
  const int64_t left = std::chrono::ceil<Millis>(*deadline - Clock::now()).count();
  return int(std::clamp<int64_t>(left, 0, 1 << 30));
}

// Waits until fd has `events`, the deadline passes, or cancel_fd (when >= 0) turns readable.
Io wait_ready(int fd, short events, const Deadline& deadline, int cancel_fd) {
  for (;;) {
    pollfd p[2] = {{fd, events, 0}, {cancel_fd, POLLIN, 0}};
    const int n = ::poll(p, cancel_fd >= 0 ? 2 : 1, poll_timeout_ms(deadline));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw Error(std::string("rendezvous store: poll failed: ") + std::strerror(errno));
    }
    if (cancel_fd >= 0 && p[1].revents) return Io::Cancelled;
    if (p[0].revents) return Io::Ok;  // ready, or an error or hang-up that the next recv/send reports
    if (deadline && Clock::now() >= *deadline) return Io::TimedOut;
  }
}

bool connection_gone(int err) {
  return err == ECONNRESET || err == EPIPE || err == ENOTCONN || err == ETIMEDOUT || err == ECONNABORTED;
}

Io read_exact(int fd, char* buf, size_t n, const Deadline& deadline, int cancel_fd) {
  size_t got = 0;
  while (got < n) {
    const ssize_t r = ::recv(fd, buf + got, n - got, MSG_DONTWAIT);
    if (r > 0) {
      got += size_t(r);
    } else if (r == 0) {
      return Io::Closed;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (const Io w = wait_ready(fd, POLLIN, deadline, cancel_fd); w != Io::Ok) return w;
    } else if (connection_gone(errno)) {
      return Io::Closed;
    } else if (errno != EINTR) {
      throw Error(std::string("rendezvous store: recv failed: ") + std::strerror(errno));
    }
  }
  return Io::Ok;
}

Io write_all(int fd, const std::string& data, const Deadline& deadline, int cancel_fd) {
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t r = ::send(fd, data.data() + sent, data.size() - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (r >= 0) {
      sent += size_t(r);
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (const Io w = wait_ready(fd, POLLOUT, deadline, cancel_fd); w != Io::Ok) return w;
    } else if (connection_gone(errno)) {
      return Io::Closed;
    } else if (errno != EINTR) {
      throw Error(std::string("rendezvous store: send failed: ") + std::strerror(errno));
    }
  }
  return Io::Ok;
}

// One frame's payload; ProtocolError when its length is above the cap (nothing allocated for it).
Io read_frame(int fd, std::string& payload, const Deadline& deadline, int cancel_fd) {
  char head[4];
  if (const Io r = read_exact(fd, head, 4, deadline, cancel_fd); r != Io::Ok) return r;
  const uint32_t n = Reader(std::string(head, 4)).u32();
  if (n > kMaxFrameBytes) throw ProtocolError{};
  payload.resize(n);
  return read_exact(fd, payload.data(), n, deadline, cancel_fd);
}

void set_no_delay(int fd) {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// Strictly a decimal int64, as add() writes them.
std::optional<int64_t> parse_counter(const std::string& s) {
  int64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

std::string quoted_list(const std::vector<std::string>& keys) {
  constexpr size_t kShown = 10;
  std::string s;
  for (size_t i = 0; i < keys.size() && i < kShown; ++i) s += (i ? ", '" : "'") + keys[i] + "'";
  if (keys.size() > kShown) s += fmt::format(" and {} more", keys.size() - kShown);
  return s;
}

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

}  // namespace

std::string seconds_text(Millis d) { return fmt::format("{:g} s", double(d.count()) / 1000.0); }

// ---------------------------------------------------------------------------------------------------------
// The server: an accept thread, and a thread per connection (a rank) that reads its requests in turn and
// blocks on the condition variable for get and wait. The stop pipe, readable once the server stops, wakes
// every poll; `stopping_` wakes every condition wait.

class TcpStore::Server {
 public:
  explicit Server(const LaunchInfo& info);
  ~Server();
  int port() const { return port_; }

 private:
  struct Connection {
    int fd = -1;
    std::thread thread;
    std::atomic<bool> done{false};
  };

  void accept_loop();
  void serve(int fd);
  // Answers one request; false when the connection should close (server stopping, peer gone).
  bool answer(int fd, Op op, Reader& r);
  bool reply(int fd, Writer& w) {
    return write_all(fd, w.frame(), Clock::now() + kReplySlack, stop_pipe_[0]) == Io::Ok;
  }

  LaunchInfo info_;
  int listen_fd_ = -1;
  int port_ = 0;
  int stop_pipe_[2] = {-1, -1};
  std::thread accept_thread_;
  std::list<Connection> connections_;  // touched by the accept thread only, until it is joined

  std::mutex mu_;
  std::condition_variable changed_;  // a key was set, or the server stops
  bool stopping_ = false;
  std::map<std::string, std::string> values_;
  std::set<int> connected_ranks_;
};

TcpStore::Server::Server(const LaunchInfo& info) : info_(info) {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) throw Error(std::string("rendezvous server: socket() failed: ") + std::strerror(errno));
  const int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = htons(uint16_t(info.master_port));
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    const int err = errno;
    if (err == EADDRINUSE)
      throw InputError(fmt::format("MASTER_PORT {} is in use on this host (another job, or an earlier run still "
                                   "exiting?): stop that process or give this job another MASTER_PORT",
                                   info.master_port));
    throw InputError(fmt::format("rank 0 cannot listen on MASTER_PORT {} ({}): give another MASTER_PORT (1024..65535)",
                                 info.master_port, std::strerror(err)));
  }
  if (::listen(fd.get(), SOMAXCONN) != 0)
    throw Error(fmt::format("rendezvous server: listen on port {} failed: {}", info.master_port, std::strerror(errno)));
  socklen_t len = sizeof addr;
  if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    throw Error(std::string("rendezvous server: getsockname failed: ") + std::strerror(errno));
  port_ = ntohs(addr.sin_port);
  if (::pipe2(stop_pipe_, O_CLOEXEC) != 0)
    throw Error(std::string("rendezvous server: pipe failed: ") + std::strerror(errno));
  listen_fd_ = fd.release();
  accept_thread_ = std::thread([this] { accept_loop(); });
}

TcpStore::Server::~Server() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  changed_.notify_all();
  const char byte = 1;
  while (::write(stop_pipe_[1], &byte, 1) < 0 && errno == EINTR) {
  }
  accept_thread_.join();
  for (Connection& c : connections_) c.thread.join();
  ::close(listen_fd_);
  ::close(stop_pipe_[0]);
  ::close(stop_pipe_[1]);
}

void TcpStore::Server::accept_loop() {
  for (;;) {
    pollfd p[2] = {{listen_fd_, POLLIN, 0}, {stop_pipe_[0], POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) continue;  // EINTR
    if (p[1].revents) return;
    if (!(p[0].revents & POLLIN)) continue;
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      // Out of descriptors: back off rather than spin on a listen socket that stays readable.
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
        std::this_thread::sleep_for(Millis(100));
      continue;
    }
    set_no_delay(fd);
    connections_.remove_if([](Connection& c) {
      if (!c.done) return false;
      c.thread.join();
      return true;
    });
    Connection& c = connections_.emplace_back();
    c.fd = fd;
    try {
      c.thread = std::thread([this, &c] {
        serve(c.fd);
        c.done = true;
      });
    } catch (const std::system_error&) {  // no thread for it: the peer sees the connection close
      ::close(fd);
      connections_.pop_back();
    }
  }
}

void TcpStore::Server::serve(int fd) {
  int rank = -1;
  try {
    std::string payload;
    if (read_frame(fd, payload, Clock::now() + kHelloTimeout, stop_pipe_[0]) != Io::Ok) throw ProtocolError{};
    Reader r(payload);
    if (Op(r.u8()) != Op::Hello || r.u32() != kMagic) throw ProtocolError{};  // not a natsl peer: no answer
    const uint32_t version = r.u32();
    const std::string run_id = r.str(TcpStore::kMaxKeyBytes);
    const int64_t peer_rank = r.i64();
    const int64_t world_size = r.i64();
    r.done();
    std::optional<Refusal> refusal;
    if (version != kProtocolVersion) {
      refusal = Refusal::Protocol;
    } else if (run_id != info_.run_id || world_size != info_.world_size) {
      refusal = Refusal::OtherJob;
    } else if (peer_rank < 0 || peer_rank >= world_size) {
      refusal = Refusal::RankOutOfRange;
    } else {
      std::lock_guard<std::mutex> lock(mu_);
      if (connected_ranks_.insert(int(peer_rank)).second)
        rank = int(peer_rank);
      else
        refusal = Refusal::RankTaken;
    }
    Writer w;
    if (refusal) {
      w.status(Status::Refused).u8(uint8_t(*refusal)).str(info_.run_id).i64(info_.world_size).u32(kProtocolVersion);
      reply(fd, w);
      throw ProtocolError{};
    }
    if (!reply(fd, w.status(Status::Ok))) throw ProtocolError{};
    for (;;) {
      if (read_frame(fd, payload, std::nullopt, stop_pipe_[0]) != Io::Ok) break;
      Reader req(payload);
      if (!answer(fd, Op(req.u8()), req)) break;
    }
  } catch (const ProtocolError&) {
  } catch (const Error&) {  // a socket call failed: this connection ends, the server goes on
  }
  if (rank >= 0) {
    std::lock_guard<std::mutex> lock(mu_);
    connected_ranks_.erase(rank);
  }
  ::close(fd);
}

bool TcpStore::Server::answer(int fd, Op op, Reader& r) {
  Writer w;
  switch (op) {
    case Op::Set: {
      std::string key = r.str(TcpStore::kMaxKeyBytes);
      std::string value = r.str(TcpStore::kMaxValueBytes);
      r.done();
      {
        std::lock_guard<std::mutex> lock(mu_);
        values_[std::move(key)] = std::move(value);
      }
      changed_.notify_all();
      w.status(Status::Ok);
      break;
    }
    case Op::Get: {
      const std::string key = r.str(TcpStore::kMaxKeyBytes);
      const Millis timeout = clamp_wait(Millis(r.i64()));
      r.done();
      std::unique_lock<std::mutex> lock(mu_);
      auto it = values_.end();
      changed_.wait_until(lock, Clock::now() + timeout,
                          [&] { return (it = values_.find(key)) != values_.end() || stopping_; });
      if (it == values_.end()) {
        if (stopping_) return false;  // an answer that is ready is still sent while the server stops
        w.status(Status::Timeout);
      } else {
        w.status(Status::Ok).str(it->second);
      }
      break;
    }
    case Op::Add: {
      const std::string key = r.str(TcpStore::kMaxKeyBytes);
      const int64_t delta = r.i64();
      r.done();
      std::unique_lock<std::mutex> lock(mu_);
      std::string& value = values_[key];
      const std::optional<int64_t> now = value.empty() ? std::optional<int64_t>(0) : parse_counter(value);
      int64_t sum = 0;
      if (!now) {
        w.status(Status::Failed).str("add: key '" + key + "' holds a value that is not a counter (set, not add, wrote it)");
      } else if (__builtin_add_overflow(*now, delta, &sum)) {
        w.status(Status::Failed).str(fmt::format("add: key '{}' would overflow ({} + {})", key, *now, delta));
      } else {
        value = std::to_string(sum);
        w.status(Status::Ok).i64(sum);
      }
      lock.unlock();
      changed_.notify_all();
      break;
    }
    case Op::Check: {
      const std::vector<std::string> keys = r.keys();
      r.done();
      std::lock_guard<std::mutex> lock(mu_);
      const bool all = std::all_of(keys.begin(), keys.end(), [&](const std::string& k) { return values_.count(k) > 0; });
      w.status(Status::Ok).u8(all ? 1 : 0);
      break;
    }
    case Op::Wait: {
      const std::vector<std::string> keys = r.keys();
      const Millis timeout = clamp_wait(Millis(r.i64()));
      r.done();
      std::unique_lock<std::mutex> lock(mu_);
      auto all_set = [&] {
        return std::all_of(keys.begin(), keys.end(), [&](const std::string& k) { return values_.count(k) > 0; });
      };
      changed_.wait_until(lock, Clock::now() + timeout, [&] { return stopping_ || all_set(); });
      if (all_set()) {
        w.status(Status::Ok);
      } else if (stopping_) {
        return false;
      } else {
        std::vector<std::string> missing;
        for (const auto& k : keys)
          if (!values_.count(k)) missing.push_back(k);
        w.status(Status::Timeout).u32(uint32_t(missing.size()));
        for (const auto& k : missing) w.str(k);
      }
      break;
    }
    default:
      throw ProtocolError{};
  }
  return reply(fd, w);
}

// ---------------------------------------------------------------------------------------------------------
// The client.

TcpStore::TcpStore(const LaunchInfo& info, Millis connect_timeout) : info_(info), port_(info.master_port) {
  if (info.rank == 0) {
    server_ = std::make_unique<Server>(info);
    port_ = server_->port();
  } else if (info.master_port <= 0) {
    throw InputError(fmt::format("rank {} has no MASTER_PORT to reach rank 0 at", info.rank));
  }
  const auto deadline = Clock::now() + clamp_wait(connect_timeout);
  std::string last_error = "no answer";
  Millis backoff(20);
  for (;;) {
    addrinfo hints{};
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    const int gai = ::getaddrinfo(info.master_addr.c_str(), std::to_string(port_).c_str(), &hints, &found);
    if (gai != 0 && gai != EAI_AGAIN)
      throw InputError(fmt::format("MASTER_ADDR '{}' is not a host this machine can find ({}): give rank 0's host "
                                   "name or IPv4 address",
                                   info.master_addr, ::gai_strerror(gai)));
    if (gai == EAI_AGAIN) {
      last_error = std::string("looking up the host: ") + ::gai_strerror(gai);
    } else {
      sockaddr_in addr;
      std::memcpy(&addr, found->ai_addr, sizeof addr);
      ::freeaddrinfo(found);
      Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
      if (fd.get() < 0) throw Error(std::string("rendezvous client: socket() failed: ") + std::strerror(errno));
      int err = ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 ? 0 : errno;
      if (err == EINPROGRESS || err == EINTR) {
        err = ETIMEDOUT;
        if (wait_ready(fd.get(), POLLOUT, deadline, -1) == Io::Ok) {
          socklen_t len = sizeof err;
          ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
        }
      }
      if (err == 0) {
        set_no_delay(fd.get());
        Writer hello;
        hello.op(Op::Hello).u32(kMagic).u32(kProtocolVersion).str(info.run_id).i64(info.rank).i64(info.world_size);
        std::string answer;
        Io io = write_all(fd.get(), hello.frame(), deadline, -1);
        try {
          if (io == Io::Ok) io = read_frame(fd.get(), answer, deadline, -1);
        } catch (const ProtocolError&) {
          io = Io::Closed;
        }
        if (io == Io::Ok) {
          Reader r(answer);
          try {
            const Status status = Status(r.u8());
            if (status == Status::Ok) {
              fd_ = fd.release();
              return;
            }
            if (status != Status::Refused) throw ProtocolError{};
            const Refusal why = Refusal(r.u8());
            const std::string their_run_id = r.str(kMaxKeyBytes);
            const int64_t their_world = r.i64();
            const uint32_t their_version = r.u32();
            const std::string where = fmt::format("the rendezvous server on {}", endpoint());
            switch (why) {
              case Refusal::OtherJob:
                throw InputError(fmt::format(
                    "rank {}: {} is a process of another job (run id '{}', world size {}; this process: run id '{}', "
                    "world size {}): stop that job, or give this one another MASTER_PORT",
                    info.rank, where, their_run_id, their_world, info.run_id, info.world_size));
              case Refusal::RankTaken:
                throw InputError(fmt::format("rank {}: {} already has a rank {}: two processes were given the same "
                                             "rank; check the launcher's RANK / SLURM_PROCID settings",
                                             info.rank, where, info.rank));
              case Refusal::RankOutOfRange:
                throw InputError(fmt::format("rank {}: {} refused it: not a rank of world size {}", info.rank, where,
                                             their_world));
              case Refusal::Protocol:
                throw InputError(fmt::format("rank {}: {} speaks store protocol {}, this natsl speaks {}: run the "
                                             "same natsl build on every rank",
                                             info.rank, where, their_version, kProtocolVersion));
            }
            throw ProtocolError{};
          } catch (const ProtocolError&) {
            throw Error(fmt::format("rank {}: the process on {} answered the hello with something that is not a "
                                    "natsl rendezvous server: is MASTER_PORT another program's port?",
                                    info.rank, endpoint()));
          }
        }
        last_error = io == Io::TimedOut ? "no answer to the hello" : "the connection closed during the hello";
      } else {
        last_error = std::strerror(err);
      }
    }
    const auto now = Clock::now();
    if (now >= deadline)
      throw TimeoutError(fmt::format(
          "rank {} could not reach the rendezvous server on {} within {} (last: {}): is rank 0 started, with the "
          "same MASTER_ADDR/MASTER_PORT?",
          info.rank, endpoint(), seconds_text(connect_timeout), last_error));
    std::this_thread::sleep_for(std::min<Clock::duration>(backoff, deadline - now));
    backoff = std::min(backoff * 2, Millis(1000));
  }
}

TcpStore::~TcpStore() {
  if (fd_ >= 0) ::close(fd_);
  server_.reset();
}

std::string TcpStore::endpoint() const { return fmt::format("{}:{}", info_.master_addr, port_); }

void TcpStore::lost_connection() {
  broken_ = true;
  throw Error(fmt::format("rank {} lost the connection to the rendezvous server on {} (rank 0 exited?)", info_.rank,
                          endpoint()));
}

std::string TcpStore::request(const std::string& frame, Millis server_wait) {
  std::lock_guard<std::mutex> lock(mu_);
  if (broken_) lost_connection();
  const Millis limit = clamp_wait(server_wait) + kReplySlack;
  const Deadline deadline = Clock::now() + limit;
  std::string reply;
  Io io = write_all(fd_, frame, deadline, -1);
  try {
    if (io == Io::Ok) io = read_frame(fd_, reply, deadline, -1);
  } catch (const ProtocolError&) {
    broken_ = true;
    throw Error(fmt::format("rank {}: the reply of the rendezvous server on {} is malformed (longer than {} bytes)",
                            info_.rank, endpoint(), kMaxFrameBytes));
  }
  if (io == Io::Closed) lost_connection();
  if (io != Io::Ok) {
    broken_ = true;
    throw Error(fmt::format("rank {}: the rendezvous server on {} did not answer within {} (is rank 0 stuck?)",
                            info_.rank, endpoint(), seconds_text(limit)));
  }
  if (!reply.empty() && Status(reply[0]) == Status::Failed) {
    Reader r(reply);
    r.u8();
    std::string message = "(no message)";
    try {
      message = r.str(kMaxFrameBytes);
    } catch (const ProtocolError&) {
    }
    throw Error("rendezvous store: " + message);
  }
  return reply;
}

namespace {
void check_key(const std::string& key) {
  if (key.size() > TcpStore::kMaxKeyBytes)
    throw Error(fmt::format("rendezvous store: a key of {} bytes is above the limit of {}", key.size(),
                            TcpStore::kMaxKeyBytes));
}
void check_keys(const std::vector<std::string>& keys) {
  size_t total = 0;
  for (const auto& k : keys) {
    check_key(k);
    total += 4 + k.size();
  }
  if (total > TcpStore::kMaxValueBytes)
    throw Error(fmt::format("rendezvous store: {} keys of {} bytes in all are above the limit of {} per request",
                            keys.size(), total, TcpStore::kMaxValueBytes));
}
[[noreturn]] void malformed(const TcpStore& s) {
  throw Error("rendezvous store: a malformed reply from the rendezvous server on " + s.endpoint());
}
}  // namespace

void TcpStore::set(const std::string& key, const std::vector<uint8_t>& value) {
  check_key(key);
  if (value.size() > kMaxValueBytes)
    throw Error(fmt::format("rendezvous store: the value of key '{}' is {} bytes, above the limit of {}", key,
                            value.size(), kMaxValueBytes));
  Writer w;
  w.op(Op::Set).str(key).bytes(value.data(), value.size());
  const std::string reply = request(w.frame(), Millis(0));
  if (reply.size() != 1 || Status(reply[0]) != Status::Ok) malformed(*this);
}

std::vector<uint8_t> TcpStore::get(const std::string& key, Millis timeout) {
  check_key(key);
  timeout = clamp_wait(timeout);
  Writer w;
  w.op(Op::Get).str(key).i64(timeout.count());
  const std::string reply = request(w.frame(), timeout);
  try {
    Reader r(reply);
    const Status s = Status(r.u8());
    if (s == Status::Timeout)
      throw TimeoutError(fmt::format("rendezvous store: key '{}' was not set within {} (server {})", key,
                                     seconds_text(timeout), endpoint()));
    if (s != Status::Ok) throw ProtocolError{};
    const std::string value = r.str(kMaxValueBytes);
    r.done();
    return std::vector<uint8_t>(value.begin(), value.end());
  } catch (const ProtocolError&) {
    malformed(*this);
  }
}

int64_t TcpStore::add(const std::string& key, int64_t delta) {
  check_key(key);
  Writer w;
  w.op(Op::Add).str(key).i64(delta);
  const std::string reply = request(w.frame(), Millis(0));
  try {
    Reader r(reply);
    if (Status(r.u8()) != Status::Ok) throw ProtocolError{};
    const int64_t v = r.i64();
    r.done();
    return v;
  } catch (const ProtocolError&) {
    malformed(*this);
  }
}

bool TcpStore::check(const std::vector<std::string>& keys) {
  if (keys.empty()) return true;
  check_keys(keys);
  Writer w;
  w.op(Op::Check).u32(uint32_t(keys.size()));
  for (const auto& k : keys) w.str(k);
  const std::string reply = request(w.frame(), Millis(0));
  if (reply.size() != 2 || Status(reply[0]) != Status::Ok) malformed(*this);
  return reply[1] != 0;
}

void TcpStore::wait(const std::vector<std::string>& keys, Millis timeout) {
  if (keys.empty()) return;
  check_keys(keys);
  timeout = clamp_wait(timeout);
  Writer w;
  w.op(Op::Wait).u32(uint32_t(keys.size()));
  for (const auto& k : keys) w.str(k);
  w.i64(timeout.count());
  const std::string reply = request(w.frame(), timeout);
  try {
    Reader r(reply);
    const Status s = Status(r.u8());
    if (s == Status::Ok) return r.done();
    if (s != Status::Timeout) throw ProtocolError{};
    const std::vector<std::string> missing = r.keys();
    r.done();
    throw TimeoutError(fmt::format("rendezvous store: {} {} {} not set within {} (server {})",
                                   missing.size() == 1 ? "key" : "keys", quoted_list(missing),
                                   missing.size() == 1 ? "was" : "were", seconds_text(timeout), endpoint()));
  } catch (const ProtocolError&) {
    malformed(*this);
  }
}

// ---------------------------------------------------------------------------------------------------------

void rendezvous(Store& store, const LaunchInfo& info, Millis timeout) {
  const auto start = Clock::now();
  auto arrived = [](int rank) { return "natsl/arrived/" + std::to_string(rank); };
  // The value says who arrived (host and pid), for whoever debugs a rendezvous by reading the store.
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  const std::string who = fmt::format("{} pid {}", host, ::getpid());
  store.set(arrived(info.rank), std::vector<uint8_t>(who.begin(), who.end()));
  std::vector<std::string> keys;
  for (int r = 0; r < info.world_size; ++r) keys.push_back(arrived(r));
  try {
    store.wait(keys, std::max(Millis(0), timeout - std::chrono::duration_cast<Millis>(Clock::now() - start)));
  } catch (const TimeoutError&) {
    std::vector<int> missing;
    for (int r = 0; r < info.world_size; ++r)
      if (!store.check({arrived(r)})) missing.push_back(r);
    if (missing.empty()) return;  // the last one arrived just after the deadline
    constexpr size_t kShown = 16;
    std::string ranks;
    for (size_t i = 0; i < missing.size() && i < kShown; ++i) ranks += (i ? ", " : "") + std::to_string(missing[i]);
    if (missing.size() > kShown) ranks += fmt::format(" and {} more", missing.size() - kShown);
    throw TimeoutError(fmt::format(
        "rendezvous timed out after {}: {} {} of {} did not arrive at {}:{} (are they started? the same "
        "MASTER_ADDR/MASTER_PORT?)",
        seconds_text(timeout), missing.size() == 1 ? "rank" : "ranks", ranks, info.world_size, info.master_addr,
        info.master_port));
  }
}

}  // namespace natsl::dist
