#pragma once
// dist::Store over TCP: rank 0 serves the keys from a background thread on MASTER_PORT (all IPv4
// interfaces); every rank, rank 0 included, is a client of MASTER_ADDR:MASTER_PORT.
//
// Wire format (both directions): frames of [u32 length][payload], integers little-endian, strings and values
// as [u32 length][bytes]. A client's first frame is a hello {magic, protocol version, run id, rank, world
// size}; the server refuses a peer of another job (another run id or world size), a rank out of range, or a
// rank already connected, so a process left over from an earlier job can never join this one. Lengths are
// checked against caps before anything is allocated (64 MiB per value), and a malformed frame closes that
// connection. get and wait block on the server (a condition variable, until the client's deadline).
#include <memory>
#include <mutex>
#include <string>

#include "trainers/dist/launch.h"
#include "trainers/dist/store.h"

namespace natsl::dist {

class TcpStore : public Store {
 public:
  static constexpr size_t kMaxValueBytes = size_t(64) << 20;
  static constexpr size_t kMaxKeyBytes = size_t(64) << 10;

  // Rank 0 starts the server (info.master_port 0: any free port, see port()), then every rank connects,
  // retrying until connect_timeout passes (the server may start later). Throws InputError when the port is
  // in use or the server belongs to another job, TimeoutError when no server answers in time.
  TcpStore(const LaunchInfo& info, Millis connect_timeout);
  // Closes the connection; rank 0 also stops the server (its thread and the connections' threads joined),
  // so the other ranks' next call fails with "lost the connection". Never waits for other ranks.
  ~TcpStore() override;
  TcpStore(const TcpStore&) = delete;
  TcpStore& operator=(const TcpStore&) = delete;

  void set(const std::string& key, const std::vector<uint8_t>& value) override;
  std::vector<uint8_t> get(const std::string& key, Millis timeout) override;
  int64_t add(const std::string& key, int64_t delta) override;
  bool check(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys, Millis timeout) override;

  int port() const { return port_; }         // the server's port (the one bound when master_port was 0)
  std::string endpoint() const;              // "MASTER_ADDR:PORT", for messages

  class Server;  // rank 0's listening side (tcp_store.cpp)

 private:
  std::string request(const std::string& payload, Millis server_wait);  // one round trip; the reply payload
  [[noreturn]] void lost_connection();

  LaunchInfo info_;
  int port_ = 0;
  std::unique_ptr<Server> server_;
  std::mutex mu_;  // one request at a time on the connection
  int fd_ = -1;
  bool broken_ = false;  // a reply went missing: the stream's position is unknown, so no further request
};

// Every rank announces itself (key "natsl/arrived/<rank>") and waits until all world_size ranks have.
// TimeoutError after `timeout` naming the ranks that did not arrive. Once per store: the keys stay set.
void rendezvous(Store& store, const LaunchInfo& info, Millis timeout);

// "2.5 s", "30 s", "0.2 s": a duration for messages.
std::string seconds_text(Millis d);

}  // namespace natsl::dist
