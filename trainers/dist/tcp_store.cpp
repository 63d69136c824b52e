// The TCP store's client (every rank) and the rendezvous; the server on rank 0: tcp_store_server.cpp.
#include "trainers/dist/tcp_store_detail.h"

namespace natsl::dist {

std::string seconds_text(Millis d) { return fmt::format("{:g} s", double(d.count()) / 1000.0); }

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
