// The TCP store's server on rank 0 (the protocol and the class: tcp_store_detail.h).
#include "trainers/dist/tcp_store_detail.h"

namespace natsl::dist {

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

}  // namespace natsl::dist
