// The narrow door between a session and its node: what a PeerSession may ask
// of the node that runs it, and nothing more (no friend, no private fields).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <uv.h>

#include "dnskey/key_cache.h"
#include "federation/audit.h"
#include "federation/cpim.h"
#include "federation/frames.h"
#include "federation/identity.h"
#include "federation/limits.h"
#include "federation/policy.h"

namespace keyfed {

class PeerSession;
class TlsContexts;

/// What is known about a session, for callbacks, logs and message metadata.
struct SessionInfo {
  std::uint64_t id = 0;
  Direction direction = Direction::Inbound;
  std::string peer_address;  ///< "ip:port"
  std::string local_domain;
  std::string peer_domain;   ///< claimed (inbound) or target (outbound); empty before the claim
  DnsOutcome outcome = DnsOutcome::TempFail;
  Decision decision = Decision::Refuse;
  std::optional<FederationKey> peer_key;  ///< the key the peer proved it holds
  bool established = false;
  std::uint64_t key_updates = 0;  ///< TLS KeyUpdates this side requested
  std::int64_t established_at_ms = 0;  ///< Unix time in ms; 0 before
  std::uint64_t messages_in = 0;   ///< MESSAGEs from the peer this side ACKed
  std::uint64_t messages_out = 0;  ///< MESSAGEs to the peer it ACKed
};

/// The answer to a MESSAGE: nothing (ACK) or a NACK.
using DeliveryReply = std::function<void(std::optional<NackPayload>)>;

class SessionHost {
 public:
  virtual uv_loop_t* loop() = 0;
  virtual const NodeLimits& limits() const = 0;
  /// The TLS contexts for new sessions (kept by the session for its life).
  virtual std::shared_ptr<const TlsContexts> tls() const = 0;
  /// The identity this node presents for `domain`; nullptr when not hosted.
  virtual std::shared_ptr<const DomainIdentity> identity(std::string_view domain) const = 0;

  /// Looks up the keys of the domain `session` claims, on behalf of the
  /// connection's source and within its budgets; an error (over budget)
  /// refuses the claim. The returned id cancels the lookup (0 when answered
  /// at once).
  virtual Result<KeyCache::LookupId> lookup_claimed_keys(const SessionInfo& session, const std::string& source,
                                                         KeyCache::Callback callback) = 0;
  virtual void cancel_lookup(KeyCache::LookupId id) = 0;

  /// Admission, docs/POLICY.md §1 and §5: the policy decision for the peer's
  /// key against `answer`, the node's session budgets, and the audit line,
  /// in one call. Refusals come back as a verdict, never as an exception.
  virtual PolicyVerdict admit(const SessionInfo& session, AuditEvent event, const DomainKeys& answer,
                              std::span<const std::uint8_t> peer_spki) = 0;
  /// An audit line for a decision made without a lookup (handshake refusals).
  virtual void audit(const SessionInfo& session, AuditEvent event, const PolicyVerdict& verdict) = 0;

  /// The session is established (after admit()).
  virtual void established(PeerSession& session) = 0;
  /// One token of the message rate of the session's peer (its domain, or the
  /// zone that published its keys: key_principal()).
  virtual bool take_message_token(const SessionInfo& session) = 0;
  /// A MESSAGE that passed sender binding (docs/PROTOCOL.md §5); `reply`
  /// sends the ACK or NACK, now or later.
  virtual void deliver(const SessionInfo& session, CpimMessage message, std::vector<std::uint8_t> cpim,
                       DeliveryReply reply) = 0;
  /// SUBSCRIBE or UNSUBSCRIBE from the peer: a NACK, or nothing (ACK, then
  /// for SUBSCRIBE the current NOTIFY from notify_document()).
  virtual std::optional<NackPayload> presence_request(const SessionInfo& session, FrameType type,
                                                      const PresenceRequest& request) = 0;
  /// The document `watcher` may see now, or nothing when the presentity does
  /// not authorize it (docs/STORE.md, "Presence"): no NOTIFY is sent then.
  virtual std::optional<std::string> notify_document(const std::string& watcher, const std::string& presentity) = 0;
  /// A NOTIFY from the peer whose presentity is of the peer's domain.
  virtual void notify_received(const SessionInfo& session, const NotifyPayload& notify) = 0;

  /// The session is closing: the node lets go of it (the session frees
  /// itself once its transport has closed, and touches the node no more).
  virtual void closed(PeerSession& session, const std::string& reason) = 0;

 protected:
  ~SessionHost() = default;
};

}  // namespace keyfed
