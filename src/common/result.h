// Result<T>: a value or an Error, for expected failures (bad input, DNS
// trouble). Exceptions are kept for broken invariants; see docs/DEVELOPING.md.
#pragma once

#include <string>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace keyfed {

/// An expected failure, described for a person: what was wrong and where
/// ("keyfed.toml:12: min_ttl must not exceed max_ttl").
struct Error {
  std::string message;
};

/// Builds an Error from a fmt format string.
template <typename... Args>
Error make_error(fmt::format_string<Args...> format, Args&&... args) {
  return Error{fmt::format(format, std::forward<Args>(args)...)};
}

/// Holds either a T or an Error. Accessing the wrong alternative is a
/// programming error (std::bad_variant_access).
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : state_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Error error) : state_(std::move(error)) {}  // NOLINT

  bool ok() const { return state_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { return std::get<0>(state_); }
  const T& value() const& { return std::get<0>(state_); }
  T&& value() && { return std::get<0>(std::move(state_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const { return std::get<1>(state_); }

 private:
  std::variant<T, Error> state_;
};

/// Result of an operation that produces nothing but may fail.
using Status = Result<std::monostate>;
inline Status ok_status() { return std::monostate{}; }

}  // namespace keyfed
