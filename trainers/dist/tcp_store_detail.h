#pragma once
// Internal to the TCP store (tcp_store.cpp, the client; tcp_store_server.cpp, rank 0's server): the wire
// protocol (frames, readers and writers, socket I/O with deadlines) and the server class. Not for other users.
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
namespace tcp_detail {


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

inline Millis clamp_wait(Millis d) { return std::clamp(d, Millis(0), kMaxWait); }

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

inline int poll_timeout_ms(const Deadline& deadline) {
  if (!deadline) return -1;
  const int64_t left = std::chrono::ceil<Millis>(*deadline - Clock::now()).count();
  return int(std::clamp<int64_t>(left, 0, 1 << 30));
}

// Waits until fd has `events`, the deadline passes, or cancel_fd (when >= 0) turns readable.
inline Io wait_ready(int fd, short events, const Deadline& deadline, int cancel_fd) {
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

inline bool connection_gone(int err) {
  return err == ECONNRESET || err == EPIPE || err == ENOTCONN || err == ETIMEDOUT || err == ECONNABORTED;
}

// Moves n bytes through `move(done)` (a non-blocking recv or send of the bytes from offset `done` on,
// returning its result), waiting for `events` on fd whenever it would block. `op` names it in errors.
template <class Move>
inline Io move_all(int fd, size_t n, short events, const char* op, const Deadline& deadline, int cancel_fd,
                   Move move) {
  size_t done = 0;
  while (done < n) {
    const ssize_t r = move(done);
    if (r > 0) {
      done += size_t(r);
    } else if (r == 0) {
      return Io::Closed;  // a recv at end of stream (a send of a non-empty range never returns 0)
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (const Io w = wait_ready(fd, events, deadline, cancel_fd); w != Io::Ok) return w;
    } else if (connection_gone(errno)) {
      return Io::Closed;
    } else if (errno != EINTR) {
      throw Error(std::string("rendezvous store: ") + op + " failed: " + std::strerror(errno));
    }
  }
  return Io::Ok;
}

inline Io read_exact(int fd, char* buf, size_t n, const Deadline& deadline, int cancel_fd) {
  return move_all(fd, n, POLLIN, "recv", deadline, cancel_fd,
                  [&](size_t got) { return ::recv(fd, buf + got, n - got, MSG_DONTWAIT); });
}

inline Io write_all(int fd, const std::string& data, const Deadline& deadline, int cancel_fd) {
  return move_all(fd, data.size(), POLLOUT, "send", deadline, cancel_fd, [&](size_t sent) {
    return ::send(fd, data.data() + sent, data.size() - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
  });
}

// One frame's payload; ProtocolError when its length is above the cap (nothing allocated for it).
inline Io read_frame(int fd, std::string& payload, const Deadline& deadline, int cancel_fd) {
  char head[4];
  if (const Io r = read_exact(fd, head, 4, deadline, cancel_fd); r != Io::Ok) return r;
  const uint32_t n = Reader(std::string(head, 4)).u32();
  if (n > kMaxFrameBytes) throw ProtocolError{};
  payload.resize(n);
  return read_exact(fd, payload.data(), n, deadline, cancel_fd);
}

inline void set_no_delay(int fd) {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// Strictly a decimal int64, as add() writes them.
inline std::optional<int64_t> parse_counter(const std::string& s) {
  int64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

inline std::string quoted_list(const std::vector<std::string>& keys) {
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


}  // namespace tcp_detail
using namespace tcp_detail;  // this header is included by the two store files only

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

}  // namespace natsl::dist
