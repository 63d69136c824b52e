#pragma once
// The key-value store the ranks of one job meet through (rendezvous): rank 0 serves it, every rank reads and
// writes it. Communicators use it once, to exchange their connection details (Gloo's addresses, NCCL's unique
// id); the trainer uses it for the few facts all ranks must agree on before the first collective.
//
// Every call that waits takes a deadline and throws dist::TimeoutError naming what it waited for; nothing
// here waits forever.
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"

namespace natsl::dist {

using Millis = std::chrono::milliseconds;

// A wait ran past its deadline: the message names what did not arrive (keys, ranks).
struct TimeoutError : Error {
  using Error::Error;
};

class Store {
 public:
  virtual ~Store() = default;
  // Sets key to value (replacing an earlier value).
  virtual void set(const std::string& key, const std::vector<uint8_t>& value) = 0;
  // The value of key, waiting until it is set or timeout passes (TimeoutError naming the key).
  virtual std::vector<uint8_t> get(const std::string& key, Millis timeout) = 0;
  // Adds delta to the integer counter at key (0 when unset) and returns the new value.
  virtual int64_t add(const std::string& key, int64_t delta) = 0;
  // Whether every key is set now (does not wait).
  virtual bool check(const std::vector<std::string>& keys) = 0;
  // Waits until every key is set; TimeoutError naming the keys still missing.
  virtual void wait(const std::vector<std::string>& keys, Millis timeout) = 0;
};

}  // namespace natsl::dist
