#pragma once
// A Store inside one process: for tests that run several ranks as threads, and for a world of one.
#include <condition_variable>
#include <map>
#include <mutex>

#include "trainers/dist/store.h"

namespace natsl::dist {

class MemoryStore : public Store {
 public:
  void set(const std::string& key, const std::vector<uint8_t>& value) override;
  std::vector<uint8_t> get(const std::string& key, Millis timeout) override;
  int64_t add(const std::string& key, int64_t delta) override;
  bool check(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys, Millis timeout) override;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::vector<uint8_t>> kv_;
};

// "a, b and c" style list of the keys among `keys` that `store` lacks now (for timeout messages).
std::string missing_keys(Store& store, const std::vector<std::string>& keys);

}  // namespace natsl::dist
