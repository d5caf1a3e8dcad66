// PeerSession: one TCP connection with its TLS 1.3 state (memory BIOs on the
// node's loop) and its place in the protocol's state machine
// (docs/PROTOCOL.md §4). Internal to Node; not part of the public interface.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <openssl/ssl.h>
#include <uv.h>

#include "common/c_handles.h"
#include "federation/frames.h"
#include "federation/node.h"

namespace keyfed {

class PeerSession {
 public:
  /// How long a closing session waits for its last bytes to be taken.
  static constexpr std::uint64_t kLingerMs = 2000;

  enum class State { Connecting, Handshaking, AwaitClaim, AwaitClaimOk, Verifying, Established, Closing };

  PeerSession(Node& node, std::uint64_t id, Direction direction);
  ~PeerSession();
  PeerSession(const PeerSession&) = delete;
  PeerSession& operator=(const PeerSession&) = delete;

  /// Inbound: accepts the pending connection of `server`.
  Status accept_from(uv_stream_t* server);
  /// Outbound: the peer domain's keys are known; connect and handshake.
  void connect_to(const std::string& address, int port, DomainKeys peer_keys, Node::ConnectCallback callback);

  /// Sends one frame over TLS (ignored once closing).
  void send_frame(const std::vector<std::uint8_t>& frame);
  /// Sends a MESSAGE and remembers the callback until ACK or NACK.
  void send_message(std::vector<std::uint8_t> cpim, Node::SendCallback callback);
  /// Closes: an ERROR frame if `code` and the TLS session is up, then
  /// close_notify, then the TCP connection once written. The node lets go of
  /// the session here; it deletes itself when its handles are closed, and
  /// touches the node no more.
  void close(const std::string& reason, std::optional<ErrorCode> code = std::nullopt);

  State state() const { return state_; }
  bool closing() const { return state_ == State::Closing; }
  SessionInfo info;
  std::set<std::pair<std::string, std::string>> subscriptions;  // (watcher, presentity) the peer holds on us

 private:
  void start_tls(SSL_CTX* ctx);
  void drive();  // feeds TLS with what arrived and acts on the result
  void on_handshake_done();
  void on_frame(const Frame& frame);
  void on_claim(const Frame& frame);
  void on_claim_keys(const DomainKeys& answer);
  void on_message(const Frame& frame);
  void on_presence(const Frame& frame);
  void on_notify(const Frame& frame);
  void established();
  void flush();
  void arm_timer(std::chrono::milliseconds after);
  void on_timer();
  void fail_connect(const std::string& reason);
  void start_reading();
  void close_handles();  // both handles; the session deletes itself when they are closed
  std::vector<std::uint8_t> peer_spki() const;

  static void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);
  static void on_handle_closed(uv_handle_t* handle);

  Node& node_;
  State state_ = State::Connecting;
  uv_tcp_t tcp_{};
  uv_timer_t timer_{};
  uv_connect_t connect_req_{};
  uv_shutdown_t shutdown_req_{};
  int open_handles_ = 0;
  SslPtr ssl_;
  BIO* network_in_ = nullptr;   // owned by ssl_: bytes from the peer
  BIO* network_out_ = nullptr;  // owned by ssl_: bytes for the peer
  FrameReader reader_;
  DomainKeys peer_keys_;  // outbound: the target's lookup
  Node::ConnectCallback connect_callback_;
  std::map<std::uint32_t, Node::SendCallback> pending_acks_;
  std::uint32_t next_message_id_ = 1;
  std::uint64_t last_received_ms_ = 0;
  std::uint64_t last_sent_ms_ = 0;
  std::uint64_t bytes_since_rekey_ = 0;
  std::uint64_t last_rekey_ms_ = 0;
};

}  // namespace keyfed
