// PeerSession: one connection with its TLS 1.3 state (memory BIOs over a
// Transport) and its place in the protocol's state machine
// (docs/PROTOCOL.md §4). It reaches its node only through SessionHost.
// Internal to the federation layer: users go through Node.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <openssl/ssl.h>

#include "common/c_handles.h"
#include "common/result.h"
#include "common/uv_handle.h"
#include "federation/frames.h"
#include "federation/session_host.h"
#include "federation/tls_context.h"
#include "federation/transport.h"

namespace keyfed {

struct SslIo;

class PeerSession final : private TransportUser {
 public:
  /// How long a closing session waits for its last bytes to be taken.
  static constexpr std::chrono::milliseconds kLinger{2000};

  enum class State {
    AwaitKeys,     ///< outbound: the node looks up the target's keys
    Connecting,    ///< outbound: TCP connect
    Handshaking,   ///< TLS
    AwaitClaim,    ///< inbound: TLS done, waiting for CLAIM
    Verifying,     ///< inbound: CLAIM received, its keys being looked up
    AwaitClaimOk,  ///< outbound: CLAIM sent
    Established,
    Closing,
  };

  using ConnectCallback = std::function<void(Result<SessionInfo>)>;
  using SendCallback = std::function<void(Status)>;

  PeerSession(SessionHost& host, std::uint64_t id, Direction direction);
  ~PeerSession();
  PeerSession(const PeerSession&) = delete;
  PeerSession& operator=(const PeerSession&) = delete;

  /// Inbound: serves an accepted connection.
  void accept(std::unique_ptr<Transport> transport);
  /// Outbound, first step: the node is looking up the target's keys (`lookup`
  /// is cancelled if the session closes first).
  void await_keys(std::string local_domain, std::string peer_domain, ConnectCallback callback);
  void set_lookup(KeyCache::LookupId lookup) { lookup_ = lookup; }
  /// Outbound: the target's keys are known; connects over `transport`.
  void connect(std::unique_ptr<Transport> transport, std::shared_ptr<const CachedKeys> target_keys);
  /// Outbound, before the handshake decided: a newer answer for the target.
  void update_target_keys(std::shared_ptr<const CachedKeys> target_keys);
  /// Outbound, before the handshake decided: the answer held may no longer
  /// stand (a reload flushed the cache); the decision waits for a fresh one.
  void forget_target_keys();
  /// Outbound: refused before connecting; reports `reason` to the caller.
  void fail_connect(const std::string& reason);

  /// Sends one frame over TLS (ignored until TLS is up, and once closing).
  void send_frame(const std::vector<std::uint8_t>& frame);
  /// Sends a MESSAGE and remembers the callback until ACK or NACK.
  void send_message(std::vector<std::uint8_t> cpim, SendCallback callback);
  /// Closes: an ERROR frame if `code` and TLS is up, then close_notify, then
  /// the connection once written (at most kLinger). The node lets go of the
  /// session here; it frees itself when its transport has closed.
  void close(const std::string& reason, std::optional<ErrorCode> code = std::nullopt);

  State state() const { return state_; }
  bool closing() const { return state_ == State::Closing; }
  const SessionInfo& info() const { return info_; }
  /// Who pays for this connection in the per-source budgets (inbound).
  const std::string& source() const { return source_; }
  /// When the session started (loop time, ms).
  std::uint64_t started_ms() const { return started_ms_; }
  /// Bytes received from the peer so far.
  std::uint64_t bytes_received() const { return bytes_received_; }
  /// Inbound and not authenticated yet: counted in the unauthenticated budgets.
  bool inbound_unauthenticated() const { return info_.direction == Direction::Inbound && !info_.established; }

  /// What the session was admitted on, once a decision was made (POLICY.md §4).
  const std::optional<SessionAuthentication>& authentication() const { return authentication_; }
  /// Until when the answers seen so far vouch for the session's key.
  TimePoint confirmed_until() const { return confirmed_until_; }
  /// The last answer the session was judged against and kept by.
  const std::shared_ptr<const CachedKeys>& last_answer() const { return last_answer_; }
  /// A fresh answer kept the session (POLICY.md §4).
  void confirm(std::shared_ptr<const CachedKeys> entry);

 private:
  // TransportUser
  void on_transport_connected(Status status) override;
  void on_transport_bytes(std::span<const std::uint8_t> bytes) override;
  void on_transport_end(const std::string& reason) override;
  void on_transport_written() override;
  void on_transport_closed() override;

  void start_tls(bool server);
  void drive();  // feeds TLS with what arrived and acts on the result
  void on_handshake_failed(const SslIo& io);
  void on_handshake_done();
  void decide_outbound();
  void on_frame(const Frame& frame);
  void on_claim(const Frame& frame);
  void on_claim_keys(const std::shared_ptr<const CachedKeys>& entry);
  void on_message(const Frame& frame);
  void on_answer(FrameType type, const Frame& frame);
  void on_presence(const Frame& frame);
  void on_notify(const Frame& frame);
  void established();
  void admitted(const PolicyVerdict& verdict, const std::shared_ptr<const CachedKeys>& entry);
  /// Encrypts `plain` (one or more frames) and hands the records to the
  /// transport, re-keying when due.
  void send_plain(const std::vector<std::uint8_t>& plain);
  void write_tls(const std::vector<std::uint8_t>& frame);
  void flush();
  void check_send_queue();
  void arm_timer();
  void on_timer();
  /// True while this session may still log a line caused by its peer's
  /// frames this second (docs/SECURITY.md, "Logs"); the rest are counted.
  bool may_log();

  SessionHost& host_;
  SessionInfo info_;
  State state_ = State::AwaitKeys;
  std::string source_;
  std::uint64_t started_ms_ = 0;
  std::unique_ptr<Transport> transport_;
  UvHandle<uv_timer_t> timer_;
  std::shared_ptr<const TlsContexts> tls_;              // the contexts this session started with
  std::shared_ptr<const DomainIdentity> identity_;      // outbound: the key we present
  SslPtr ssl_;
  BIO* network_in_ = nullptr;   // owned by ssl_: bytes from the peer
  BIO* network_out_ = nullptr;  // owned by ssl_: bytes for the peer
  FrameReader reader_{kMaxFrameBeforeClaim};
  std::vector<std::uint8_t> peer_spki_;
  std::shared_ptr<const CachedKeys> target_keys_;  // outbound: the target's latest answer
  bool awaiting_fresh_keys_ = false;  // outbound: TLS is done, the answer to decide on is not
  KeyCache::LookupId lookup_ = 0;
  std::optional<SessionAuthentication> authentication_;
  TimePoint confirmed_until_{};
  std::shared_ptr<const CachedKeys> last_answer_;
  ConnectCallback connect_callback_;
  std::map<std::uint32_t, SendCallback> pending_acks_;
  std::uint32_t next_message_id_ = 1;
  std::uint64_t phase_started_ms_ = 0;  // connect or handshake start, for their timeouts
  std::uint64_t last_received_ms_ = 0;
  std::uint64_t bytes_received_ = 0;
  std::uint64_t last_sent_ms_ = 0;
  std::uint64_t bytes_since_rekey_ = 0;
  std::uint64_t last_rekey_ms_ = 0;
  std::uint64_t stalled_since_ms_ = 0;  // reading paused: the peer does not take what we send
  // While drive() handles what one read brought, the frames it answers with
  // are collected and sent as one TLS write and one socket write: what a
  // peer's small frames cost us stays close to what they weigh.
  bool batching_ = false;
  std::vector<std::uint8_t> batch_;
  std::uint64_t log_window_ms_ = 0;
  unsigned logged_in_window_ = 0;
  std::uint64_t not_logged_ = 0;
  /// Points at this session until it closes: replies that come later (a
  /// delivery's ACK) check it before touching the session.
  std::shared_ptr<PeerSession*> self_;
};

std::string_view to_string(PeerSession::State state);

}  // namespace keyfed
