// A hostile peer: a client that is NOT a keyfed node and speaks the wire
// protocol (docs/PROTOCOL.md) one explicit step at a time, so that a test or a
// load tool can do what a well-behaved node never would: connect from a chosen
// loopback address and stay silent, send garbage or half a ClientHello one
// byte at a time, offer the wrong TLS version or ALPN, claim a domain whose key
// it does not hold, send malformed frames one TLS record per byte, or never
// read what the node answers.
//
// Everything is blocking from the caller's point of view, but every wait is a
// poll() on a non-blocking socket with a deadline: no call hangs forever.
// Nothing here uses Catch2; failures are values (IoStatus, Result, Status),
// and every OpenSSL failure carries OpenSSL's own reason, the error queue
// being drained by the call that failed and emptied before each call whose
// result is read with SSL_get_error (STYLE.md, "Library error state is per
// call").
//
// A HostilePeer is one connection, owned by one thread at a time. The first
// connect (HostilePeer::connect or start_connect) sets SIGPIPE to ignored if it
// still has its default disposition (as Node::create does): OpenSSL writes to
// the socket with write(2), and a node that closed must be an error value, not
// a dead process.
//
// Typical use, from a test thread:
//
//   auto peer = HostilePeer::connect({.port = node.port(), .from = "127.0.0.2"});
//   peer->send_raw("GET / HTTP/1.0\r\n\r\n", Pacing::byte_by_byte(5ms));
//   CHECK(peer->wait_closed(2s));
//
//   auto peer = HostilePeer::connect({.port = port});
//   TlsResult tls = peer->handshake({.key_file = fedkey("beta-new")});
//   ClaimResult claim = peer->claim("beta.test");       // CLAIM, then CLAIM_OK or ERROR
//   peer->send(encode_ping({}), Pacing::byte_by_byte()); // one TLS record per byte
//   ReadResult pong = peer->read_frame(2s);
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <openssl/ssl.h>

#include "common/c_handles.h"
#include "common/result.h"
#include "federation/frames.h"

namespace keyfed::hostile {

using Millis = std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

// ---- options ---------------------------------------------------------------

/// Where to connect, and from where.
struct ConnectOptions {
  int port = 0;
  std::string address = "127.0.0.1";  ///< the node (IPv4 or IPv6 literal)
  /// Local address to bind before connecting, e.g. "127.0.0.2" (all of
  /// 127.0.0.0/8 is loopback on Linux), so a node's per-address budgets can be
  /// exercised from one machine. Empty: the kernel chooses.
  std::string from;
  Millis timeout{5000};  ///< for the TCP connect
};

/// How bytes are written: all at once, or in chunks with a pause between.
/// After TLS, every chunk is its own SSL_write, hence its own TLS record.
struct Pacing {
  std::size_t chunk = 0;  ///< bytes per write; 0: everything in one write
  Millis delay{0};        ///< pause between two chunks

  static Pacing byte_by_byte(Millis delay = Millis{0}) { return {1, delay}; }
};

/// The client side of the TLS handshake. The defaults are what a keyfed node
/// offers, minus a certificate: set key_file (or key and certificate) to
/// present one.
struct TlsOptions {
  /// Server name indication: the domain the peer wants to reach. nullopt: no SNI.
  std::optional<std::string> sni = std::string("alpha.test");
  /// ALPN protocols offered, in order. Empty: no ALPN extension at all.
  std::vector<std::string> alpn = {std::string(kAlpnProtocol)};
  int min_version = TLS1_3_VERSION;  ///< e.g. TLS1_2_VERSION; 0: OpenSSL's lowest
  int max_version = TLS1_3_VERSION;  ///< 0: OpenSSL's highest
  /// Client certificate: a fresh self-signed certificate wrapping this PEM
  /// key (load_domain_identity, so the file must be mode 0600). Empty: none,
  /// unless key and certificate are given.
  std::filesystem::path key_file;
  std::string certificate_name = "hostile.test";  ///< name in that certificate (keyfed ignores it)
  /// An explicit client identity instead of key_file; borrowed (each
  /// TlsClientContext takes its own reference).
  EVP_PKEY* key = nullptr;
  X509* certificate = nullptr;
  std::string groups;  ///< key exchange groups, e.g. "X25519"; empty: OpenSSL's default
  Millis timeout{5000};  ///< for the whole handshake
};

// ---- outcomes --------------------------------------------------------------

/// What one I/O step ended with.
enum class IoStatus {
  Ok,         ///< done (for reads: a frame arrived)
  Timeout,    ///< the deadline passed first
  Closed,     ///< the node closed the connection (FIN, RST or TLS close_notify)
  Malformed,  ///< bytes arrived that are not a frame (e.g. a length above 16 MiB)
  Failed,     ///< a local or TLS error; see the detail
};
std::string to_string(IoStatus status);

/// Result of a send.
struct SendResult {
  IoStatus status = IoStatus::Ok;
  std::size_t written = 0;  ///< bytes handed to the kernel (or to TLS) before it ended
  std::string detail;       ///< why it failed
  bool ok() const { return status == IoStatus::Ok; }
  explicit operator bool() const { return ok(); }
};

/// Result of reading one frame.
struct ReadResult {
  IoStatus status = IoStatus::Timeout;
  std::optional<Frame> frame;  ///< set iff status == Ok
  /// For Closed: how (e.g. "close_notify", "EOF without close_notify",
  /// "connection reset"); for Malformed and Failed: why.
  std::string detail;
  std::size_t partial_bytes = 0;  ///< bytes of an incomplete frame held when it ended

  bool ok() const { return status == IoStatus::Ok; }
  /// True for a frame of this type.
  bool is(FrameType type) const { return frame && frame->type == static_cast<std::uint8_t>(type); }
  /// The ERROR frame's payload, when this is a well-formed ERROR.
  std::optional<ErrorPayload> error() const;
};

/// Every frame read until the node closed the connection (or the deadline).
struct Drain {
  std::vector<Frame> frames;
  bool closed = false;     ///< false: the deadline passed with the connection open
  std::string detail;      ///< how it was closed, or why reading stopped
  std::size_t partial_bytes = 0;

  /// The first frame of this type, if any.
  const Frame* find(FrameType type) const;
  /// The first well-formed ERROR frame's payload, if any.
  std::optional<ErrorPayload> error() const;
};

/// Bytes read from the bare socket (no TLS), e.g. a TLS alert sent in answer
/// to garbage.
struct RawRead {
  std::vector<std::uint8_t> bytes;
  bool closed = false;  ///< the node closed (EOF or reset) within the time
  std::string detail;
};

/// How a TLS handshake ended, from the client's side. In TLS 1.3 the client
/// finishes before the server has checked its certificate: a refused client
/// certificate shows up on the first read, not here.
struct TlsResult {
  bool ok = false;
  /// OpenSSL's reason ("tlsv1 alert no application protocol", "unexpected eof
  /// while reading", ...), "timeout", or why the options could not be used.
  std::string error;
  bool server_sent_nothing = false;  ///< failed before a single byte came back (closed before TLS)
  std::string version;               ///< "TLSv1.3" once done
  std::string alpn;                  ///< the protocol the server selected, empty if none
  std::vector<std::uint8_t> server_spki;  ///< DER SubjectPublicKeyInfo of the server's certificate
  explicit operator bool() const { return ok; }
};

enum class ClaimStatus {
  Ok,          ///< CLAIM_OK
  Refused,     ///< an ERROR frame (see ClaimResult::error)
  Unexpected,  ///< another frame came first (see ClaimResult::frame)
  Malformed,   ///< an ERROR frame whose payload does not parse, or bytes that are not frames
  Timeout,
  Closed,      ///< closed without an ERROR frame
  SendFailed,  ///< the CLAIM could not be written
};
std::string to_string(ClaimStatus status);

struct ClaimResult {
  ClaimStatus status = ClaimStatus::Timeout;
  std::optional<ErrorPayload> error;  ///< for Refused
  std::optional<Frame> frame;         ///< for Unexpected and Malformed
  std::string detail;                 ///< a description for a person, always set
  bool ok() const { return status == ClaimStatus::Ok; }
  explicit operator bool() const { return ok(); }
};

/// The answer to a MESSAGE.
struct AckResult {
  enum class Status { Ack, Nack, Unexpected, Malformed, Timeout, Closed, SendFailed } status = Status::Timeout;
  std::optional<NackPayload> nack;  ///< for Nack
  std::optional<Frame> frame;       ///< for Unexpected (an ERROR frame included) and Malformed
  std::string detail;
  bool ok() const { return status == Status::Ack; }
  explicit operator bool() const { return ok(); }
};

/// What a peer that never reads managed to write.
struct FloodResult {
  std::uint64_t bytes_written = 0;   ///< handed to TLS (or to the kernel), in whole chunks
  std::uint64_t chunks_written = 0;
  /// Writing stopped because the socket's send buffer stayed full for the
  /// stall time: the node stopped reading (or the path is saturated).
  bool send_buffer_full = false;
  bool closed = false;  ///< the node closed the connection
  std::string detail;
};

// ---- TLS context -----------------------------------------------------------

/// An SSL_CTX built from TlsOptions, reusable across connections, so that
/// loading the key and making its certificate happen once (and stay out of
/// measured latencies). Movable; one context may serve several peers, from
/// one thread at a time.
class TlsClientContext {
 public:
  static Result<TlsClientContext> create(TlsOptions options);

  SSL_CTX* get() const { return ctx_.get(); }
  const TlsOptions& options() const { return options_; }

 private:
  TlsClientContext(SslCtxPtr ctx, TlsOptions options) : ctx_(std::move(ctx)), options_(std::move(options)) {}
  SslCtxPtr ctx_;
  TlsOptions options_;
};

// ---- the peer --------------------------------------------------------------

class HostilePeer {
 public:
  /// Opens a TCP connection (binding to options.from first) and waits at most
  /// options.timeout for it to be accepted by the kernel. The peer then sends
  /// nothing until told to: a connected, silent peer.
  static Result<HostilePeer> connect(const ConnectOptions& options);

  HostilePeer(HostilePeer&& other) noexcept;
  HostilePeer& operator=(HostilePeer&& other) noexcept;
  HostilePeer(const HostilePeer&) = delete;
  HostilePeer& operator=(const HostilePeer&) = delete;
  /// Closes the socket (plainly: no close_notify, no RST); see reset().
  ~HostilePeer();

  /// The deadline for each wait inside send()/send_raw() (default 5 s).
  void set_io_timeout(Millis timeout) { io_timeout_ = timeout; }

  // -- raw TCP: before TLS, without it, or under it --

  /// Writes bytes straight onto the TCP stream, whether or not TLS is up
  /// (after TLS this injects bytes between records). With Pacing, one send(2)
  /// per chunk, with a pause between (TCP_NODELAY is set, so each becomes its
  /// own segment on loopback).
  SendResult send_raw(std::span<const std::uint8_t> bytes, Pacing pacing = {});
  SendResult send_raw(std::string_view bytes, Pacing pacing = {});

  /// Reads whatever the node sends on the bare socket within `within`, stopping
  /// early when it closes. Only before TLS (after it, bytes would be records).
  RawRead read_raw(Millis within);

  // -- TLS --

  /// Runs the client handshake on this connection. A failed handshake leaves
  /// the socket open (raw steps remain possible); a second call is refused.
  TlsResult handshake(const TlsOptions& options);
  TlsResult handshake(const TlsClientContext& context);
  TlsResult handshake(const TlsClientContext& context, Millis timeout);  ///< overrides options().timeout
  bool tls_up() const { return ssl_ != nullptr && tls_done_; }

  // -- after TLS --

  /// Writes through TLS. With Pacing, one SSL_write per chunk, so
  /// Pacing::byte_by_byte() sends one TLS record per byte.
  SendResult send(std::span<const std::uint8_t> bytes, Pacing pacing = {});

  /// The next frame, waiting at most `timeout`. Frames that arrived during
  /// earlier calls (wait_closed, claim, ...) are returned first, in order.
  ReadResult read_frame(Millis timeout);

  /// The next frame that is not a PING (PINGs are answered with PONG, as a
  /// live peer would), waiting at most `timeout` in all.
  ReadResult read_frame_answering_pings(Millis timeout);

  /// Reads every frame until the node closes the connection, or `timeout`.
  Drain read_until_closed(Millis timeout);

  /// Is the connection closed by the node? Waits up to `within` for that to
  /// happen (0: only what has already arrived). Anything the node sent
  /// meanwhile is kept for read_frame(). Works before and after TLS.
  bool wait_closed(Millis within = Millis{0});

  /// A peer that never reads: writes chunk after chunk from `next_chunk`
  /// (called with 0, 1, 2, ...; each chunk may hold many frames) and never
  /// reads, until the send buffer stays full for `stall`, the node closes,
  /// or `limit` passes. After a full buffer the unfinished TLS record is kept
  /// and written first by the next flood() or send(), so flooding can go on
  /// in slices. (wait_closed() reads: a peer that must never read can poll
  /// fd() for POLLRDHUP instead.)
  FloodResult flood(const std::function<std::vector<std::uint8_t>(std::uint64_t)>& next_chunk, Millis stall,
                    Millis limit);

  // -- protocol steps (docs/PROTOCOL.md §4, §5) --

  /// Sends CLAIM `domain` and waits for CLAIM_OK or ERROR.
  ClaimResult claim(const std::string& domain, Millis timeout = Millis{5000});

  /// Sends MESSAGE (id, cpim) and waits for its ACK or NACK (answering PINGs).
  AckResult send_message(std::uint32_t id, std::string_view cpim, Millis timeout = Millis{5000});

  // -- closing --

  /// TLS close_notify (if TLS is up), leaving TCP open.
  void close_notify();
  /// TCP half-close: FIN, nothing more can be sent; reads still work.
  void shutdown_write();
  /// Closes with a TCP RST (SO_LINGER 0): no FIN, no TIME_WAIT.
  void reset();

  int fd() const { return fd_; }
  /// "127.0.0.2:40312"
  std::string local_address() const;

 private:
  explicit HostilePeer(int fd) : fd_(fd) {}
  void close_fd();
  SendResult write_tls(std::span<const std::uint8_t> bytes, Clock::time_point deadline);
  /// Reads what is available, waiting until `deadline` for something: into
  /// the frame reader after TLS, into raw_buffer_ before. Closed sets closed_.
  IoStatus fill(Clock::time_point deadline);
  std::optional<ReadResult> buffered_frame();

  int fd_ = -1;
  SslPtr ssl_;
  bool tls_done_ = false;
  Millis io_timeout_{5000};
  FrameReader reader_{kHardMaxFrameSize};
  std::vector<std::uint8_t> raw_buffer_;     ///< bytes read before TLS, for read_raw()
  std::vector<std::uint8_t> pending_write_;  ///< an SSL_write that must be repeated first
  std::optional<std::string> closed_;  ///< set once the node closed: how
  std::optional<std::string> broken_;  ///< set on a read error: why
};

// ---- a legitimate session, step by step -----------------------------------

/// One legitimate exchange: connect, TLS with the domain's key, CLAIM,
/// CLAIM_OK, one MESSAGE, its ACK.
struct LegitFlow {
  ConnectOptions connect;
  std::shared_ptr<const TlsClientContext> tls;  ///< built once, e.g. with key_file = fedkey("beta-new")
  std::string domain;                           ///< claimed, e.g. "beta.test"
  std::string cpim;                             ///< the message; empty: stop after CLAIM_OK
  std::uint32_t message_id = 1;
  Millis step_timeout{5000};  ///< for each step after the TCP connect (whose timeout is in `connect`)
};

enum class FlowStep { Connect, Handshake, Claim, Message, Done };
std::string to_string(FlowStep step);

struct FlowResult {
  FlowStep failed_at = FlowStep::Done;  ///< Done: every step succeeded
  std::string detail;                   ///< why the step failed
  /// Time from the start of the TCP connect to the end of each step
  /// (connected, TLS done, CLAIM_OK, ACK); only steps reached are set.
  std::chrono::nanoseconds connected{0}, handshaken{0}, claimed{0}, acked{0};
  std::optional<HostilePeer> peer;  ///< the open connection, when the connect succeeded
  bool ok() const { return failed_at == FlowStep::Done; }
  explicit operator bool() const { return ok(); }
};

/// Runs the flow. Never throws; a failure names its step.
FlowResult connect_claim_message(const LegitFlow& flow);

/// connect + handshake + claim: an authenticated session ready for hostile
/// frames, or why not.
Result<HostilePeer> connect_and_claim(const ConnectOptions& connect, const TlsClientContext& tls,
                                      const std::string& domain, Millis step_timeout = Millis{5000});

// ---- building blocks for multiplexing tools (bench/keyfed_load) ------------

/// A connect started on a non-blocking socket.
struct StartedConnect {
  int fd = -1;         ///< owned by the caller; -1 on failure
  int error = 0;       ///< errno of the failing call (ECONNREFUSED, EADDRNOTAVAIL, ...)
  std::string detail;  ///< for a person
  bool ok() const { return fd >= 0; }
};

/// A non-blocking TCP socket with TCP_NODELAY, bound to `from` (if set),
/// whose connect has been started (it may already be connected: poll for
/// POLLOUT and read SO_ERROR). Sets SIGPIPE to ignored (see above).
StartedConnect start_connect(const ConnectOptions& options);

/// Applies the per-connection options (SNI) to a new SSL made from `context`,
/// attached to fd, in connect state. Empty error queue on return.
Result<SslPtr> new_client_ssl(const TlsClientContext& context, int fd);

/// Drains OpenSSL's error queue into one line ("" if it was empty).
std::string openssl_reason();

/// Sets SO_LINGER 0 on fd, so that close(2) sends a RST and leaves no TIME_WAIT.
void set_reset_on_close(int fd);

}  // namespace keyfed::hostile
