#include "trainers/dist/memory_store.h"

#include <cstring>

#include <fmt/format.h>

namespace natsl::dist {

void MemoryStore::set(const std::string& key, const std::vector<uint8_t>& value) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    kv_[key] = value;
  }
  cv_.notify_all();
}

std::vector<uint8_t> MemoryStore::get(const std::string& key, Millis timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, timeout, [&] { return kv_.count(key) > 0; }))
    throw TimeoutError(fmt::format("store: key '{}' was not set within {} ms", key, timeout.count()));
  return kv_.at(key);
}

int64_t MemoryStore::add(const std::string& key, int64_t delta) {
  int64_t v = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto& bytes = kv_[key];
    if (bytes.size() == sizeof(int64_t)) std::memcpy(&v, bytes.data(), sizeof v);
    v += delta;
    bytes.resize(sizeof v);
    std::memcpy(bytes.data(), &v, sizeof v);
  }
  cv_.notify_all();
  return v;
}

bool MemoryStore::check(const std::vector<std::string>& keys) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& k : keys)
    if (!kv_.count(k)) return false;
  return true;
}

void MemoryStore::wait(const std::vector<std::string>& keys, Millis timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  auto all = [&] {
    for (const auto& k : keys)
      if (!kv_.count(k)) return false;
    return true;
  };
  if (!cv_.wait_for(lock, timeout, all)) {
    lock.unlock();
    throw TimeoutError(fmt::format("store: keys {} were not set within {} ms", missing_keys(*this, keys), timeout.count()));
  }
}

std::string missing_keys(Store& store, const std::vector<std::string>& keys) {
  std::string s;
  for (const auto& k : keys)
    if (!store.check({k})) s += (s.empty() ? "'" : ", '") + k + "'";
  return s.empty() ? "(none)" : s;
}

}  // namespace natsl::dist
