// The byte stream under a session's TLS: a TCP connection on the node's loop
// (TcpTransport), or memory in the session fuzzer. The session sees only this
// interface, so its TLS and protocol code runs the same over either.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <uv.h>

#include "common/result.h"

namespace keyfed {

/// What a transport reports to the session above it, always on the loop.
class TransportUser {
 public:
  /// An outbound connect finished (ok, or why not).
  virtual void on_transport_connected(Status status) = 0;
  virtual void on_transport_bytes(std::span<const std::uint8_t> bytes) = 0;
  /// The peer closed its side, or the connection broke: no more bytes come.
  virtual void on_transport_end(const std::string& reason) = 0;
  /// A write completed: queued_bytes() went down.
  virtual void on_transport_written() = 0;
  /// close() is done: the transport's last call to its user.
  virtual void on_transport_closed() = 0;

 protected:
  ~TransportUser() = default;
};

class Transport {
 public:
  virtual ~Transport() = default;
  /// Starts delivering events to `user` (reading starts for a connected transport).
  virtual void attach(TransportUser* user) = 0;
  /// "ip:port" ("[ip]:port" for IPv6) of the peer.
  virtual std::string peer_address() const = 0;
  /// Who pays for this connection in the per-source budgets: the IPv4
  /// address, or the /64 of an IPv6 address (docs/SECURITY.md, "Budgets").
  virtual std::string source() const = 0;
  virtual void write(std::vector<std::uint8_t> bytes) = 0;
  /// Bytes written by the session but not yet taken by the network.
  virtual std::size_t queued_bytes() const = 0;
  /// Stops or resumes delivering received bytes (back-pressure).
  virtual void set_reading(bool reading) = 0;
  /// Lets queued bytes go out for at most `linger` (0: none), then closes.
  /// on_transport_closed() follows later on the loop. Idempotent.
  virtual void close(std::chrono::milliseconds linger) = 0;
};

/// TCP on a libuv loop.
class TcpTransport final : public Transport {
 public:
  /// Accepts the pending connection of `server`.
  static Result<std::unique_ptr<TcpTransport>> accept(uv_loop_t* loop, uv_stream_t* server);
  /// Starts connecting to address:port (an IP literal); the result arrives
  /// as on_transport_connected() once attached.
  static Result<std::unique_ptr<TcpTransport>> connect(uv_loop_t* loop, const std::string& address, int port);
  ~TcpTransport() override;

  void attach(TransportUser* user) override;
  std::string peer_address() const override { return peer_address_; }
  std::string source() const override { return source_; }
  void write(std::vector<std::uint8_t> bytes) override;
  std::size_t queued_bytes() const override;
  void set_reading(bool reading) override;
  void close(std::chrono::milliseconds linger) override;

  struct Handles;  // defined in tcp_transport.cpp

 private:
  explicit TcpTransport(uv_loop_t* loop);
  void start_reading();
  static void close_handles(Handles* handles);

  Handles* handles_;  // freed when both handles have closed, possibly after this object
  TransportUser* user_ = nullptr;
  std::string peer_address_;
  std::string source_;
  bool connected_ = false;
  bool connect_pending_ = false;
  Status connect_result_ = ok_status();  // when the connect finished before attach()
  bool connect_done_ = false;
  bool reading_ = true;
  bool closing_ = false;
};

/// The budget key of a socket address (see Transport::source()).
std::string source_of(const struct sockaddr* address);

}  // namespace keyfed
