#pragma once
// Sets a variable (a thread-local mode, hook or tape) for a scope and puts back the value it held when the
// scope ends, also when it ends by an exception; scopes nest.
#include <utility>

namespace natsl {

template <class T>
class ScopedValue {
 public:
  ScopedValue(T& variable, T value) : variable_(variable), prev_(std::exchange(variable, std::move(value))) {}
  ~ScopedValue() { variable_ = std::move(prev_); }
  ScopedValue(const ScopedValue&) = delete;
  ScopedValue& operator=(const ScopedValue&) = delete;

 private:
  T& variable_;
  T prev_;
};

}  // namespace natsl
