#pragma once
// natsl::Error and the check macros. Every failure in natsl is an exception carrying context
// (what was being done, where); the CLI turns it into one line and a non-zero exit code.
#include <sstream>
#include <stdexcept>
#include <string>

namespace natsl {

// Kind decides the CLI's exit code: BadInput (a config, data file, checkpoint or command line the user
// gave us) exits 2, Internal exits 1.
enum class ErrorKind { Internal, BadInput, OutOfMemory };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, std::string msg) : std::runtime_error(std::move(msg)), kind_(kind) {}
  explicit Error(std::string msg) : Error(ErrorKind::Internal, std::move(msg)) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

// An error in something the user handed us: exit code 2 at the CLI.
class InputError : public Error {
 public:
  explicit InputError(std::string msg) : Error(ErrorKind::BadInput, std::move(msg)) {}
};

namespace detail {
inline void append(std::ostringstream&) {}
template <class T, class... R>
void append(std::ostringstream& os, const T& v, const R&... rest) {
  os << v;
  append(os, rest...);
}
template <class... A>
std::string str(const A&... a) {
  std::ostringstream os;
  append(os, a...);
  return os.str();
}
[[noreturn]] void check_failed(const char* cond, const char* file, int line, const std::string& msg);
}  // namespace detail

}  // namespace natsl

// NATSL_CHECK(cond, "message parts", value, ...): throws natsl::Error naming the condition and place.
#define NATSL_CHECK(cond, ...)                                                             \
  do {                                                                                     \
    if (!(cond)) [[unlikely]]                                                              \
      ::natsl::detail::check_failed(#cond, __FILE__, __LINE__, ::natsl::detail::str(__VA_ARGS__)); \
  } while (0)

#define NATSL_FAIL(...) \
  ::natsl::detail::check_failed(nullptr, __FILE__, __LINE__, ::natsl::detail::str(__VA_ARGS__))
