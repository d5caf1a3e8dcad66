#include "hostile_peer.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <mutex>
#include <thread>

#include <fmt/format.h>
#include <openssl/err.h>

#include "federation/identity.h"

namespace keyfed::hostile {
namespace {

// ---- time and polling --------------------------------------------------------

int ms_until(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
  if (left <= 0) return 0;
  return left > 1'000'000 ? 1'000'000 : static_cast<int>(left) + 1;  // +1: never wake just before it
}

/// Waits for `events` on fd until `deadline`; the revents, or 0 on timeout.
short wait_fd(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int n = ::poll(&p, 1, ms_until(deadline));
    if (n > 0) return p.revents;
    if (n == 0) {
      if (Clock::now() >= deadline) return 0;
      continue;
    }
    if (errno != EINTR) return POLLERR;
  }
}

void ignore_sigpipe_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction current {};
    if (sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) std::signal(SIGPIPE, SIG_IGN);
  });
}

bool is_closed_errno(int e) { return e == EPIPE || e == ECONNRESET || e == ENOTCONN || e == ECONNABORTED; }

std::string errno_text(int e) { return e == ECONNRESET ? "connection reset" : std::strerror(e); }

// ---- addresses ----------------------------------------------------------------

struct SockAddr {
  sockaddr_storage storage{};
  socklen_t length = 0;
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
};

Result<SockAddr> parse_address(const std::string& address, int port) {
  SockAddr out;
  auto* in4 = reinterpret_cast<sockaddr_in*>(&out.storage);
  auto* in6 = reinterpret_cast<sockaddr_in6*>(&out.storage);
  if (inet_pton(AF_INET, address.c_str(), &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons(static_cast<std::uint16_t>(port));
    out.length = sizeof *in4;
  } else if (inet_pton(AF_INET6, address.c_str(), &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(static_cast<std::uint16_t>(port));
    out.length = sizeof *in6;
  } else {
    return make_error("'{}' is not an IP address", address);
  }
  return out;
}

std::string format_address(const sockaddr_storage& addr) {
  char ip[INET6_ADDRSTRLEN] = {};
  if (addr.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
    return fmt::format("{}:{}", ip, ntohs(in->sin_port));
  }
  const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&addr);
  inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
  return fmt::format("[{}]:{}", ip, ntohs(in6->sin6_port));
}

std::string describe(const ConnectOptions& o) {
  return o.from.empty() ? fmt::format("{}:{}", o.address, o.port)
                        : fmt::format("{}:{} from {}", o.address, o.port, o.from);
}

// ---- OpenSSL helpers ---------------------------------------------------------

/// After an SSL call failed with SSL_ERROR_SYSCALL / SSL_ERROR_SSL: did the
/// node end the connection (EOF, reset, alert), and how? The error queue is
/// drained either way.
struct TlsFailure {
  bool closed = false;
  std::string detail;
};

TlsFailure classify_tls_failure(int ssl_error, int saved_errno) {
  if (ssl_error == SSL_ERROR_ZERO_RETURN) {
    ERR_clear_error();
    return {true, "close_notify"};
  }
  unsigned long code = ERR_peek_error();
  if (ssl_error == SSL_ERROR_SYSCALL && code == 0) {
    if (saved_errno == 0) return {true, "EOF without close_notify"};
    return {is_closed_errno(saved_errno), errno_text(saved_errno)};
  }
  bool eof = ERR_GET_LIB(code) == ERR_LIB_SSL && ERR_GET_REASON(code) == SSL_R_UNEXPECTED_EOF_WHILE_READING;
  std::string reason = openssl_reason();
  if (eof) return {true, "EOF without close_notify"};
  if (reason.empty()) reason = fmt::format("SSL error {}", ssl_error);
  // An alert from the node, or a record we cannot read: the session is over.
  return {true, "TLS: " + reason};
}

TlsResult tls_failure(std::string why) {
  TlsResult r;
  r.error = std::move(why);
  return r;
}

std::vector<std::uint8_t> alpn_wire(const std::vector<std::string>& protocols) {
  std::vector<std::uint8_t> wire;
  for (const std::string& p : protocols) {
    wire.push_back(static_cast<std::uint8_t>(p.size()));
    wire.insert(wire.end(), p.begin(), p.end());
  }
  return wire;
}

}  // namespace

std::string openssl_reason() {
  std::string out;
  while (unsigned long code = ERR_get_error()) {
    char text[256];
    ERR_error_string_n(code, text, sizeof text);
    // "error:0A000410:SSL routines::sslv3 alert handshake failure": keep the reason.
    std::string_view line(text);
    if (auto colon = line.rfind(':'); colon != std::string_view::npos) line.remove_prefix(colon + 1);
    if (!out.empty()) out += "; ";
    out += line;
  }
  return out;
}

void set_reset_on_close(int fd) {
  linger l{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
}

std::string to_string(IoStatus status) {
  switch (status) {
    case IoStatus::Ok: return "ok";
    case IoStatus::Timeout: return "timeout";
    case IoStatus::Closed: return "closed";
    case IoStatus::Malformed: return "malformed";
    case IoStatus::Failed: return "failed";
  }
  return "?";
}

std::string to_string(ClaimStatus status) {
  switch (status) {
    case ClaimStatus::Ok: return "claim-ok";
    case ClaimStatus::Refused: return "refused";
    case ClaimStatus::Unexpected: return "unexpected-frame";
    case ClaimStatus::Malformed: return "malformed";
    case ClaimStatus::Timeout: return "timeout";
    case ClaimStatus::Closed: return "closed";
    case ClaimStatus::SendFailed: return "send-failed";
  }
  return "?";
}

std::string to_string(FlowStep step) {
  switch (step) {
    case FlowStep::Connect: return "connect";
    case FlowStep::Handshake: return "handshake";
    case FlowStep::Claim: return "claim";
    case FlowStep::Message: return "message";
    case FlowStep::Done: return "done";
  }
  return "?";
}

std::optional<ErrorPayload> ReadResult::error() const {
  if (!is(FrameType::Error)) return std::nullopt;
  auto e = parse_error(frame->payload);
  if (!e) return std::nullopt;
  return *e;
}

const Frame* Drain::find(FrameType type) const {
  for (const Frame& f : frames) {
    if (f.type == static_cast<std::uint8_t>(type)) return &f;
  }
  return nullptr;
}

std::optional<ErrorPayload> Drain::error() const {
  for (const Frame& f : frames) {
    if (f.type != static_cast<std::uint8_t>(FrameType::Error)) continue;
    if (auto e = parse_error(f.payload)) return *e;
  }
  return std::nullopt;
}

// ---- TlsClientContext ----------------------------------------------------------

Result<TlsClientContext> TlsClientContext::create(TlsOptions options) {
  ERR_clear_error();
  SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  if (!ctx) return make_error("SSL_CTX_new: {}", openssl_reason());
  // A hostile client may offer what no keyfed node would: let OpenSSL send it.
  if (options.min_version != 0 && options.min_version < TLS1_2_VERSION) SSL_CTX_set_security_level(ctx.get(), 0);
  if (SSL_CTX_set_min_proto_version(ctx.get(), options.min_version) != 1 ||
      SSL_CTX_set_max_proto_version(ctx.get(), options.max_version) != 1) {
    return make_error("TLS versions {:#x}..{:#x}: {}", options.min_version, options.max_version, openssl_reason());
  }
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_OFF);
  SSL_CTX_set_mode(ctx.get(), SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  if (!options.alpn.empty()) {
    auto wire = alpn_wire(options.alpn);
    if (SSL_CTX_set_alpn_protos(ctx.get(), wire.data(), static_cast<unsigned>(wire.size())) != 0) {  // 0 is success
      return make_error("ALPN list: {}", openssl_reason());
    }
  }
  if (!options.groups.empty() && SSL_CTX_set1_groups_list(ctx.get(), options.groups.c_str()) != 1) {
    return make_error("groups '{}': {}", options.groups, openssl_reason());
  }
  if (!options.key_file.empty()) {
    auto identity = load_domain_identity(options.certificate_name, options.key_file);
    if (!identity) return identity.error();
    if (SSL_CTX_use_certificate(ctx.get(), identity->certificate.get()) != 1 ||
        SSL_CTX_use_PrivateKey(ctx.get(), identity->key.get()) != 1) {
      return make_error("client certificate from {}: {}", options.key_file.string(), openssl_reason());
    }
  } else if (options.key != nullptr || options.certificate != nullptr) {
    if (options.key == nullptr || options.certificate == nullptr) {
      return make_error("an explicit client identity needs both key and certificate");
    }
    // Both calls take their own reference.
    if (SSL_CTX_use_certificate(ctx.get(), options.certificate) != 1 ||
        SSL_CTX_use_PrivateKey(ctx.get(), options.key) != 1) {
      return make_error("client certificate: {}", openssl_reason());
    }
  }
  options.key = nullptr;  // borrowed: not kept past this call
  options.certificate = nullptr;
  return TlsClientContext(std::move(ctx), std::move(options));
}

// ---- building blocks -------------------------------------------------------------

StartedConnect start_connect(const ConnectOptions& options) {
  ignore_sigpipe_once();
  auto fail = [&](int fd, int error, std::string detail) {
    if (fd >= 0) ::close(fd);
    return StartedConnect{-1, error, std::move(detail)};
  };
  auto to = parse_address(options.address, options.port);
  if (!to) return fail(-1, EINVAL, to.error().message);
  int fd = ::socket(to->storage.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(-1, errno, fmt::format("socket: {}", std::strerror(errno)));
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (!options.from.empty()) {
    auto from = parse_address(options.from, 0);
    if (!from) return fail(fd, EINVAL, from.error().message);
    // Let connect() pick the port for the whole 4-tuple, not bind(): many
    // connections from one address to one node need it.
    ::setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    if (::bind(fd, from->get(), from->length) != 0) {
      int e = errno;
      return fail(fd, e, fmt::format("bind {}: {}", options.from, std::strerror(e)));
    }
  }
  if (::connect(fd, to->get(), to->length) != 0 && errno != EINPROGRESS) {
    int e = errno;
    return fail(fd, e, fmt::format("connect {}: {}", describe(options), std::strerror(e)));
  }
  return StartedConnect{fd, 0, ""};
}

Result<SslPtr> new_client_ssl(const TlsClientContext& context, int fd) {
  ERR_clear_error();
  SslPtr ssl(SSL_new(context.get()));
  if (!ssl || SSL_set_fd(ssl.get(), fd) != 1) return make_error("SSL_new: {}", openssl_reason());
  const TlsOptions& o = context.options();
  if (o.sni && SSL_set_tlsext_host_name(ssl.get(), o.sni->c_str()) != 1) {
    return make_error("SNI '{}': {}", *o.sni, openssl_reason());
  }
  SSL_set_connect_state(ssl.get());
  return ssl;
}

// ---- HostilePeer: lifetime -------------------------------------------------------

Result<HostilePeer> HostilePeer::connect(const ConnectOptions& options) {
  StartedConnect started = start_connect(options);
  if (!started.ok()) return make_error("{}", started.detail);
  HostilePeer peer(started.fd);
  short revents = wait_fd(started.fd, POLLOUT, Clock::now() + options.timeout);
  if (revents == 0) return make_error("connect {}: no answer within {} ms", describe(options), options.timeout.count());
  int err = 0;
  socklen_t len = sizeof err;
  ::getsockopt(started.fd, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) return make_error("connect {}: {}", describe(options), std::strerror(err));
  return peer;
}

HostilePeer::HostilePeer(HostilePeer&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      ssl_(std::move(other.ssl_)),
      tls_done_(other.tls_done_),
      io_timeout_(other.io_timeout_),
      reader_(std::move(other.reader_)),
      raw_buffer_(std::move(other.raw_buffer_)),
      pending_write_(std::move(other.pending_write_)),
      closed_(std::move(other.closed_)),
      broken_(std::move(other.broken_)) {}

HostilePeer& HostilePeer::operator=(HostilePeer&& other) noexcept {
  if (this != &other) {
    close_fd();
    fd_ = std::exchange(other.fd_, -1);
    ssl_ = std::move(other.ssl_);
    tls_done_ = other.tls_done_;
    io_timeout_ = other.io_timeout_;
    reader_ = std::move(other.reader_);
    raw_buffer_ = std::move(other.raw_buffer_);
    pending_write_ = std::move(other.pending_write_);
    closed_ = std::move(other.closed_);
    broken_ = std::move(other.broken_);
  }
  return *this;
}

HostilePeer::~HostilePeer() { close_fd(); }

void HostilePeer::close_fd() {
  ssl_.reset();  // the socket BIO does not own the fd
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

std::string HostilePeer::local_address() const {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  if (fd_ < 0 || ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return "?";
  return format_address(addr);
}

void HostilePeer::close_notify() {
  if (!tls_up()) return;
  ERR_clear_error();
  SSL_shutdown(ssl_.get());
  ERR_clear_error();
}

void HostilePeer::shutdown_write() {
  if (fd_ >= 0) ::shutdown(fd_, SHUT_WR);
}

void HostilePeer::reset() {
  if (fd_ >= 0) set_reset_on_close(fd_);
  close_fd();
}

// ---- raw TCP ------------------------------------------------------------------------

SendResult HostilePeer::send_raw(std::string_view bytes, Pacing pacing) {
  return send_raw(std::span(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()), pacing);
}

SendResult HostilePeer::send_raw(std::span<const std::uint8_t> bytes, Pacing pacing) {
  SendResult result;
  if (fd_ < 0) return {IoStatus::Failed, 0, "not connected"};
  std::size_t chunk = pacing.chunk == 0 ? bytes.size() : pacing.chunk;
  while (result.written < bytes.size()) {
    if (result.written > 0 && pacing.delay.count() > 0) std::this_thread::sleep_for(pacing.delay);
    std::size_t end = std::min(bytes.size(), result.written + chunk);
    while (result.written < end) {
      ssize_t n = ::send(fd_, bytes.data() + result.written, end - result.written, MSG_NOSIGNAL);
      if (n > 0) {
        result.written += static_cast<std::size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (wait_fd(fd_, POLLOUT, Clock::now() + io_timeout_) == 0) {
          return {IoStatus::Timeout, result.written, "send buffer full"};
        }
        continue;
      }
      int e = errno;
      return {is_closed_errno(e) ? IoStatus::Closed : IoStatus::Failed, result.written, errno_text(e)};
    }
  }
  return result;
}

RawRead HostilePeer::read_raw(Millis within) {
  RawRead out;
  if (tls_up()) {
    out.detail = "TLS is up: use read_frame";
    return out;
  }
  wait_closed(within);
  out.bytes = std::move(raw_buffer_);
  raw_buffer_.clear();
  out.closed = closed_.has_value();
  out.detail = closed_.value_or(broken_.value_or(""));
  return out;
}

// ---- TLS ------------------------------------------------------------------------------

TlsResult HostilePeer::handshake(const TlsOptions& options) {
  auto context = TlsClientContext::create(options);
  if (!context) return tls_failure(context.error().message);
  return handshake(*context);
}

TlsResult HostilePeer::handshake(const TlsClientContext& context) {
  return handshake(context, context.options().timeout);
}

TlsResult HostilePeer::handshake(const TlsClientContext& context, Millis timeout) {
  TlsResult result;
  if (fd_ < 0) return tls_failure("not connected");
  if (ssl_) return tls_failure("a handshake was already attempted on this connection");
  auto ssl = new_client_ssl(context, fd_);
  if (!ssl) return tls_failure(ssl.error().message);
  ssl_ = std::move(ssl).value();
  auto deadline = Clock::now() + timeout;
  for (;;) {
    ERR_clear_error();
    errno = 0;
    int r = SSL_connect(ssl_.get());
    if (r == 1) break;
    int saved_errno = errno;
    int err = SSL_get_error(ssl_.get(), r);
    short want = err == SSL_ERROR_WANT_READ ? POLLIN : err == SSL_ERROR_WANT_WRITE ? POLLOUT : 0;
    if (want != 0) {
      if (wait_fd(fd_, want, deadline) == 0) {
        result.error = fmt::format("timeout: handshake not done within {} ms", timeout.count());
        result.server_sent_nothing = BIO_number_read(SSL_get_rbio(ssl_.get())) == 0;
        return result;
      }
      continue;
    }
    TlsFailure failure = classify_tls_failure(err, saved_errno);
    result.error = failure.detail;
    result.server_sent_nothing = BIO_number_read(SSL_get_rbio(ssl_.get())) == 0;
    return result;  // wait_closed() and read_raw() still work on the bare socket
  }
  tls_done_ = true;
  result.ok = true;
  result.version = SSL_get_version(ssl_.get());
  const unsigned char* alpn = nullptr;
  unsigned int alpn_len = 0;
  SSL_get0_alpn_selected(ssl_.get(), &alpn, &alpn_len);
  if (alpn != nullptr) result.alpn.assign(reinterpret_cast<const char*>(alpn), alpn_len);
  result.server_spki = certificate_spki(SSL_get0_peer_certificate(ssl_.get()));
  return result;
}

// ---- after TLS --------------------------------------------------------------------------

SendResult HostilePeer::write_tls(std::span<const std::uint8_t> bytes, Clock::time_point deadline) {
  // An SSL_write that returned WANT_WRITE must be repeated with the same
  // bytes before anything else can be written (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
  // lets the copy live elsewhere).
  bool resuming = !pending_write_.empty();
  std::span<const std::uint8_t> data = resuming ? std::span<const std::uint8_t>(pending_write_) : bytes;
  for (;;) {
    ERR_clear_error();
    errno = 0;
    int n = SSL_write(ssl_.get(), data.data(), static_cast<int>(data.size()));
    if (n > 0) {
      if (!resuming) return {IoStatus::Ok, static_cast<std::size_t>(n), ""};
      pending_write_.clear();
      resuming = false;
      data = bytes;
      continue;
    }
    int saved_errno = errno;
    int err = SSL_get_error(ssl_.get(), n);
    short want = err == SSL_ERROR_WANT_WRITE ? POLLOUT : err == SSL_ERROR_WANT_READ ? POLLIN : 0;
    if (want != 0) {
      short revents = wait_fd(fd_, static_cast<short>(want | POLLRDHUP), deadline);
      if (revents == 0) {
        if (!resuming) pending_write_.assign(bytes.begin(), bytes.end());
        return {IoStatus::Timeout, 0, "send buffer full"};
      }
      if ((revents & (POLLHUP | POLLERR)) != 0 || ((revents & POLLRDHUP) != 0 && (revents & want) == 0)) {
        // The node closed; whatever we still write goes nowhere.
        closed_ = closed_.value_or((revents & POLLRDHUP) != 0 ? "FIN from the node" : "connection reset");
        return {IoStatus::Closed, 0, *closed_};
      }
      continue;
    }
    TlsFailure failure = classify_tls_failure(err, saved_errno);
    if (failure.closed) closed_ = closed_.value_or(failure.detail);
    return {failure.closed ? IoStatus::Closed : IoStatus::Failed, 0, failure.detail};
  }
}

SendResult HostilePeer::send(std::span<const std::uint8_t> bytes, Pacing pacing) {
  if (!tls_up()) return {IoStatus::Failed, 0, "TLS is not up"};
  SendResult result;
  std::size_t chunk = pacing.chunk == 0 ? bytes.size() : pacing.chunk;
  if (bytes.empty()) return result;
  while (result.written < bytes.size()) {
    if (result.written > 0 && pacing.delay.count() > 0) std::this_thread::sleep_for(pacing.delay);
    std::size_t n = std::min(chunk, bytes.size() - result.written);
    SendResult r = write_tls(bytes.subspan(result.written, n), Clock::now() + io_timeout_);
    if (!r) {
      r.written = result.written;
      return r;
    }
    result.written += r.written;
  }
  return result;
}

IoStatus HostilePeer::fill(Clock::time_point deadline) {
  if (closed_) return IoStatus::Closed;
  if (broken_) return IoStatus::Failed;
  if (fd_ < 0) {
    broken_ = "not connected";
    return IoStatus::Failed;
  }
  std::uint8_t buf[16384];
  std::size_t got = 0;
  constexpr std::size_t kMaxPerFill = 1 << 20;  // a flooding node must not keep us here forever
  for (;;) {
    if (tls_up()) {
      ERR_clear_error();
      errno = 0;
      int n = SSL_read(ssl_.get(), buf, sizeof buf);
      if (n > 0) {
        reader_.feed({buf, static_cast<std::size_t>(n)});
        got += static_cast<std::size_t>(n);
        if (got >= kMaxPerFill) return IoStatus::Ok;
        continue;
      }
      int saved_errno = errno;
      int err = SSL_get_error(ssl_.get(), n);
      if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        if (got > 0) return IoStatus::Ok;
        short revents = wait_fd(fd_, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline);
        if (revents == 0) return IoStatus::Timeout;
        continue;
      }
      TlsFailure failure = classify_tls_failure(err, saved_errno);
      if (failure.closed) {
        closed_ = failure.detail;
      } else {
        broken_ = failure.detail;
      }
      // Frames that arrived before the close still count.
      if (got > 0) return IoStatus::Ok;
      return failure.closed ? IoStatus::Closed : IoStatus::Failed;
    }
    ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n > 0) {
      raw_buffer_.insert(raw_buffer_.end(), buf, buf + n);
      got += static_cast<std::size_t>(n);
      if (got >= kMaxPerFill) return IoStatus::Ok;
      continue;
    }
    if (n == 0) {
      closed_ = "EOF";
      return got > 0 ? IoStatus::Ok : IoStatus::Closed;
    }
    int e = errno;
    if (e == EINTR) continue;
    if (e == EAGAIN || e == EWOULDBLOCK) {
      if (got > 0) return IoStatus::Ok;
      if (wait_fd(fd_, POLLIN, deadline) == 0) return IoStatus::Timeout;
      continue;
    }
    if (is_closed_errno(e)) {
      closed_ = errno_text(e);
      return got > 0 ? IoStatus::Ok : IoStatus::Closed;
    }
    broken_ = errno_text(e);
    return got > 0 ? IoStatus::Ok : IoStatus::Failed;
  }
}

std::optional<ReadResult> HostilePeer::buffered_frame() {
  auto next = reader_.next();
  if (!next) {
    broken_ = broken_.value_or(next.error().message);
    return ReadResult{IoStatus::Malformed, std::nullopt, next.error().message, reader_.buffered()};
  }
  if (!next->has_value()) return std::nullopt;
  return ReadResult{IoStatus::Ok, std::move(**next), "", 0};
}

ReadResult HostilePeer::read_frame(Millis timeout) {
  if (!tls_up()) return {IoStatus::Failed, std::nullopt, "TLS is not up", 0};
  auto deadline = Clock::now() + timeout;
  for (;;) {
    if (auto frame = buffered_frame()) return std::move(*frame);
    IoStatus s = fill(deadline);
    if (s == IoStatus::Ok) continue;
    if (s == IoStatus::Closed) return {s, std::nullopt, *closed_, reader_.buffered()};
    if (s == IoStatus::Failed) return {s, std::nullopt, broken_.value_or("read failed"), reader_.buffered()};
    return {IoStatus::Timeout, std::nullopt, fmt::format("no frame within {} ms", timeout.count()),
            reader_.buffered()};
  }
}

ReadResult HostilePeer::read_frame_answering_pings(Millis timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
    ReadResult r = read_frame(std::max(left, Millis{0}));
    if (!r.is(FrameType::Ping)) return r;
    (void)send(encode_pong(r.frame->payload));  // a failed PONG shows up on the next read
  }
}

Drain HostilePeer::read_until_closed(Millis timeout) {
  Drain out;
  auto deadline = Clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
    ReadResult r = read_frame(std::max(left, Millis{0}));
    if (r.ok()) {
      out.frames.push_back(std::move(*r.frame));
      continue;
    }
    out.closed = r.status == IoStatus::Closed;
    out.detail = r.detail;
    out.partial_bytes = r.partial_bytes;
    return out;
  }
}

bool HostilePeer::wait_closed(Millis within) {
  auto deadline = Clock::now() + within;
  for (;;) {
    IoStatus s = fill(deadline);
    if (s == IoStatus::Closed) return true;
    if (s != IoStatus::Ok) return false;  // timeout, or a local failure
  }
}

FloodResult HostilePeer::flood(const std::function<std::vector<std::uint8_t>(std::uint64_t)>& next_chunk, Millis stall,
                               Millis limit) {
  FloodResult out;
  auto end = Clock::now() + limit;
  for (std::uint64_t i = 0; Clock::now() < end; ++i) {
    std::vector<std::uint8_t> chunk = next_chunk(i);
    auto deadline = std::min(end, Clock::now() + stall);
    SendResult r;
    if (tls_up()) {
      r = write_tls(chunk, deadline);
    } else {
      Millis saved = io_timeout_;
      io_timeout_ = std::chrono::duration_cast<Millis>(deadline - Clock::now());
      r = send_raw(chunk);
      io_timeout_ = saved;
    }
    if (r.ok()) {
      out.bytes_written += chunk.size();
      ++out.chunks_written;
      continue;
    }
    out.detail = r.detail;
    if (r.status == IoStatus::Timeout) {
      out.send_buffer_full = deadline < end;  // stalled, not merely out of time
      if (!out.send_buffer_full) out.detail = "time limit";
    } else {
      out.closed = r.status == IoStatus::Closed;
    }
    return out;
  }
  out.detail = "time limit";
  return out;
}

// ---- protocol steps ------------------------------------------------------------------------

ClaimResult HostilePeer::claim(const std::string& domain, Millis timeout) {
  ClaimResult out;
  auto deadline = Clock::now() + timeout;
  if (SendResult s = send(encode_claim(domain)); !s) {
    out.status = ClaimStatus::SendFailed;
    out.detail = "CLAIM not sent: " + s.detail;
    return out;
  }
  ReadResult r = read_frame(std::max(Millis{0}, std::chrono::duration_cast<Millis>(deadline - Clock::now())));
  switch (r.status) {
    case IoStatus::Ok: break;
    case IoStatus::Timeout:
      out.status = ClaimStatus::Timeout;
      out.detail = fmt::format("no answer to CLAIM {} within {} ms", domain, timeout.count());
      return out;
    case IoStatus::Malformed:
      out.status = ClaimStatus::Malformed;
      out.detail = r.detail;
      return out;
    case IoStatus::Closed:
    case IoStatus::Failed:
      out.status = ClaimStatus::Closed;
      out.detail = "closed without an answer to CLAIM: " + r.detail;
      return out;
  }
  if (r.is(FrameType::ClaimOk)) {
    out.status = ClaimStatus::Ok;
    out.detail = "CLAIM_OK";
    return out;
  }
  if (r.is(FrameType::Error)) {
    out.error = r.error();
    out.status = out.error ? ClaimStatus::Refused : ClaimStatus::Malformed;
    out.detail = out.error ? fmt::format("ERROR {}: {}", static_cast<int>(out.error->code), out.error->text)
                           : "malformed ERROR frame";
    out.frame = std::move(r.frame);
    return out;
  }
  out.status = ClaimStatus::Unexpected;
  out.detail = fmt::format("{} instead of CLAIM_OK", frame_type_name(r.frame->type));
  out.frame = std::move(r.frame);
  return out;
}

AckResult HostilePeer::send_message(std::uint32_t id, std::string_view cpim, Millis timeout) {
  using S = AckResult::Status;
  AckResult out;
  auto deadline = Clock::now() + timeout;
  MessagePayload message{id, {cpim.begin(), cpim.end()}};
  if (SendResult s = send(encode_message(message)); !s) {
    out.status = S::SendFailed;
    out.detail = "MESSAGE not sent: " + s.detail;
    return out;
  }
  for (;;) {
    ReadResult r =
        read_frame_answering_pings(std::max(Millis{0}, std::chrono::duration_cast<Millis>(deadline - Clock::now())));
    switch (r.status) {
      case IoStatus::Ok: break;
      case IoStatus::Timeout:
        out.status = S::Timeout;
        out.detail = fmt::format("no ACK for message {} within {} ms", id, timeout.count());
        return out;
      case IoStatus::Malformed:
        out.status = S::Malformed;
        out.detail = r.detail;
        return out;
      case IoStatus::Closed:
      case IoStatus::Failed:
        out.status = S::Closed;
        out.detail = "closed before the ACK: " + r.detail;
        return out;
    }
    if (r.is(FrameType::Ack)) {
      auto ack = parse_ack(r.frame->payload);
      if (!ack) {
        out.status = S::Malformed;
        out.detail = ack.error().message;
        out.frame = std::move(r.frame);
        return out;
      }
      if (*ack != id) continue;  // an answer to an earlier message
      out.status = S::Ack;
      out.detail = "ACK";
      return out;
    }
    if (r.is(FrameType::Nack)) {
      auto nack = parse_nack(r.frame->payload);
      if (!nack) {
        out.status = S::Malformed;
        out.detail = nack.error().message;
        out.frame = std::move(r.frame);
        return out;
      }
      if (nack->id != id) continue;
      out.status = S::Nack;
      out.detail = fmt::format("NACK {}: {}", static_cast<int>(nack->code), nack->text);
      out.nack = std::move(*nack);
      return out;
    }
    if (r.is(FrameType::Notify) || r.is(FrameType::Pong)) continue;
    out.status = S::Unexpected;
    auto error = r.error();
    out.detail = error ? fmt::format("ERROR {}: {}", static_cast<int>(error->code), error->text)
                       : fmt::format("{} instead of ACK", frame_type_name(r.frame->type));
    out.frame = std::move(r.frame);
    return out;
  }
}

// ---- flows -------------------------------------------------------------------------------------

FlowResult connect_claim_message(const LegitFlow& flow) {
  FlowResult out;
  auto start = Clock::now();
  auto since = [&] { return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start); };
  auto fail = [&](FlowStep step, std::string detail) {
    out.failed_at = step;
    out.detail = std::move(detail);
    return std::move(out);
  };
  if (!flow.tls) return fail(FlowStep::Handshake, "no TLS context");
  auto peer = HostilePeer::connect(flow.connect);
  if (!peer) return fail(FlowStep::Connect, peer.error().message);
  out.connected = since();
  out.peer.emplace(std::move(peer).value());
  HostilePeer& p = *out.peer;
  p.set_io_timeout(flow.step_timeout);
  TlsResult tls = p.handshake(*flow.tls, flow.step_timeout);
  if (!tls) return fail(FlowStep::Handshake, tls.error);
  out.handshaken = since();
  ClaimResult claim = p.claim(flow.domain, flow.step_timeout);
  if (!claim) return fail(FlowStep::Claim, claim.detail);
  out.claimed = since();
  if (flow.cpim.empty()) return out;
  AckResult ack = p.send_message(flow.message_id, flow.cpim, flow.step_timeout);
  if (!ack) return fail(FlowStep::Message, ack.detail);
  out.acked = since();
  return out;
}

Result<HostilePeer> connect_and_claim(const ConnectOptions& connect, const TlsClientContext& tls,
                                      const std::string& domain, Millis step_timeout) {
  auto peer = HostilePeer::connect(connect);
  if (!peer) return peer.error();
  peer->set_io_timeout(step_timeout);
  if (TlsResult r = peer->handshake(tls, step_timeout); !r) return make_error("TLS handshake: {}", r.error);
  if (ClaimResult c = peer->claim(domain, step_timeout); !c) return make_error("claim of {}: {}", domain, c.detail);
  return std::move(peer).value();
}

}  // namespace keyfed::hostile
