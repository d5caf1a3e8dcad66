// OpenSSL error discipline (docs/SECURITY.md, "OpenSSL error state").
//
// OpenSSL reports failures on a per-thread error queue that outlives the
// call that filled it. An error one operation leaves there (parsing a bad key
// from DNS, a refused reload) is read by the next SSL_get_error() of *any*
// session on the loop thread, which then looks fatal. So every OpenSSL call
// that can fail goes through one of these helpers: the queue is emptied before
// the call and drained after it, into the returned error on failure. Nothing
// is ever left behind for the next caller.
#pragma once

#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "common/result.h"

namespace keyfed {

/// The text of every error on this thread's queue, oldest first and joined
/// by "; " (empty if none). The queue is empty afterwards.
std::string drain_openssl_errors();

/// Runs `call` with an empty error queue and returns its result; the queue is
/// empty again afterwards, and what the call left on it is in `*errors`.
template <typename Call>
auto openssl_call(Call&& call, std::string* errors = nullptr) -> decltype(call()) {
  ERR_clear_error();
  auto result = std::forward<Call>(call)();
  std::string left = drain_openssl_errors();
  if (errors != nullptr) *errors = std::move(left);
  return result;
}

/// For calls that return 1 on success (or a non-null pointer): ok, or an
/// Error "<what>: <OpenSSL's reasons>".
template <typename Call>
Status openssl_check(std::string_view what, Call&& call) {
  std::string errors;
  auto result = openssl_call(std::forward<Call>(call), &errors);
  bool ok;
  if constexpr (std::is_pointer_v<decltype(result)>) {
    ok = result != nullptr;
  } else {
    ok = result == 1;
  }
  if (ok) return ok_status();
  return make_error("{}: {}", what, errors.empty() ? "failed" : errors);
}

/// The outcome of one SSL I/O call (SSL_do_handshake, SSL_read, SSL_write,
/// SSL_shutdown, SSL_key_update), with SSL_get_error() read on a queue that
/// holds only this call's errors.
struct SslIo {
  int result = 0;
  int error = SSL_ERROR_NONE;  ///< SSL_get_error() when result <= 0
  std::string reason;          ///< OpenSSL's reasons when error is SSL_ERROR_SSL or SYSCALL
  unsigned long code = 0;      ///< the first error code the call queued (ERR_GET_REASON() of it)

  /// The call needs more bytes from, or room towards, the peer: not a failure.
  bool would_block() const { return error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE; }
  bool failed() const { return result <= 0 && !would_block() && error != SSL_ERROR_ZERO_RETURN; }
};

template <typename Call>
SslIo ssl_io(const SSL* ssl, Call&& call) {
  SslIo io;
  ERR_clear_error();
  io.result = std::forward<Call>(call)();
  if (io.result <= 0) io.error = SSL_get_error(ssl, io.result);
  io.code = ERR_peek_error();
  io.reason = drain_openssl_errors();
  if (io.reason.empty() && io.failed()) {
    io.reason = io.error == SSL_ERROR_SYSCALL ? "connection broken" : "TLS failure";
  }
  return io;
}

}  // namespace keyfed
