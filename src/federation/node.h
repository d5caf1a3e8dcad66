// Node: one federation server hosting one or more domains. It accepts and
// opens TLS 1.3 sessions on the libuv loop, authenticates peer domains
// against their DNSSEC-validated keys (docs/POLICY.md), relays message/cpim
// and presence over the wire protocol (docs/PROTOCOL.md), and keeps every
// stranger within its budgets (docs/SECURITY.md).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <uv.h>

#include "common/result.h"
#include "common/uv_handle.h"
#include "dnskey/key_cache.h"
#include "federation/cpim.h"
#include "federation/discovery.h"
#include "federation/frames.h"
#include "federation/identity.h"
#include "federation/limits.h"
#include "federation/policy.h"
#include "federation/presence.h"
#include "federation/rate_limiter.h"
#include "federation/session_host.h"
#include "federation/tls_context.h"
#include "federation/transport.h"

namespace keyfed {

struct HostedDomain {
  std::string domain;                            ///< normalized
  std::vector<std::filesystem::path> key_files;  ///< the first is presented; all are loaded and checked

  bool operator==(const HostedDomain&) const = default;
};

struct NodeSettings {
  std::vector<HostedDomain> domains;
  PolicyConfig policy;
  NodeLimits limits;
  std::chrono::milliseconds revalidate_interval{10000};  ///< re-check keys of live peers; 0: never
  int default_port = 5269;  ///< discovery: port when a domain has no SRV record

  bool operator==(const NodeSettings&) const = default;
};

struct DeliveredMessage {
  SessionInfo session;  ///< session.decision says whether the sender's domain was authenticated
  CpimMessage message;  ///< the parsed headers (docs/PROTOCOL.md §5.1)
  std::vector<std::uint8_t> cpim;  ///< verbatim
};

/// What the node refused or cut off, for tests and operators.
struct NodeStats {
  std::uint64_t refused_connections = 0;  ///< closed at accept: max_sessions or a per-source rate
  std::uint64_t evicted = 0;              ///< unauthenticated sessions cut off to admit newer ones
  std::uint64_t refused_lookups = 0;      ///< claims refused before any lookup (lookup budgets)
  std::uint64_t revoked = 0;              ///< live sessions ended by POLICY.md §4
};

class PeerSession;

class Node final : private SessionHost {
 public:
  struct Handlers {
    std::function<void(const DeliveredMessage&)> on_message;
    /// Takes over the answer to a MESSAGE that passed sender binding and whose
    /// recipients are hosted here: `reply` ACKs or NACKs, now or later (after
    /// the store committed it). Without it the node ACKs at once.
    std::function<void(const DeliveredMessage&, DeliveryReply)> deliver;
    std::function<void(const SessionInfo&, const NotifyPayload&)> on_notify;
    /// A session is established (either direction).
    std::function<void(const SessionInfo&)> on_established;
    /// Whether `watcher` may see `presentity`'s presence now (docs/STORE.md,
    /// "Presence"): NOTIFYs go to authorized watchers only. Unset: all may.
    std::function<bool(const std::string& watcher, const std::string& presentity)> may_watch;
    /// What a watcher that may not see the presentity is told when it
    /// subscribes (polite blocking: the same as a presentity that is away,
    /// so a watcher whose authorization went while it was away learns it
    /// too). Unset: nothing is sent.
    std::function<std::string(const std::string& presentity)> withheld_document;
    std::function<void(const SessionInfo&, const std::string& reason)> on_session_closed;
    /// One JSON object per authentication decision (default: the log, log_audit()).
    std::function<void(const std::string&)> audit;
  };
  using ConnectCallback = std::function<void(Result<SessionInfo>)>;
  /// Ok on ACK; the error text carries the NACK code and reason.
  using SendCallback = std::function<void(Status)>;

  /// Loads every hosted domain's key; the cache (and its resolver) must outlive
  /// the node. Sets SIGPIPE to ignored if it has the default disposition.
  static Result<std::unique_ptr<Node>> create(uv_loop_t* loop, KeyCache& cache, NodeSettings settings,
                                              Handlers handlers);
  /// Closes every session and handle; run the loop afterwards to release them.
  ~Node();
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  /// A listening socket, bound and listening, not yet the node's own.
  struct Listener {
    UvHandle<uv_tcp_t> handle;
    std::string address;
    int port = 0;
  };
  /// Binds and listens on address:port (port 0: any); connections are served
  /// by this node from now on. Does not replace the current listener.
  Result<Listener> open_listener(const std::string& address, int port);
  /// Makes `listener` the node's (closing the previous one).
  void use_listener(Listener listener);
  /// open_listener() then use_listener().
  Status listen(const std::string& address, int port);
  int port() const { return listener_.port; }

  /// Serves a connection accepted elsewhere (tests, the session fuzzer) under
  /// the same budgets as one accepted from the listener.
  void serve(std::unique_ptr<Transport> transport);

  /// Opens a session as `local_domain` to the server of `peer_domain` at
  /// address:port, authenticating it against the domain's keys.
  void connect(const std::string& local_domain, const std::string& peer_domain, const std::string& address,
               int port, ConnectCallback callback);

  /// Opens a session to `peer_domain` wherever discovery finds its servers
  /// (SRV, else A/AAAA; docs/PROTOCOL.md §8), trying them in order. The
  /// server is authenticated against the domain's keys, whatever its host.
  void connect_domain(const std::string& local_domain, const std::string& peer_domain, ConnectCallback callback);

  Status send_message(std::uint64_t session_id, std::vector<std::uint8_t> cpim, SendCallback callback);
  Status subscribe(std::uint64_t session_id, const std::string& watcher, const std::string& presentity);
  Status unsubscribe(std::uint64_t session_id, const std::string& watcher, const std::string& presentity);
  /// Sets a hosted user's presence and notifies its authorized subscribers.
  void set_presence(const std::string& presentity, const std::string& document);
  /// The peers' watchers of a hosted presentity: (session, watcher URI).
  std::vector<std::pair<std::uint64_t, std::string>> watchers(const std::string& presentity) const;
  /// One NOTIFY to one watcher on one session (e.g. the final "closed" one
  /// when its authorization is withdrawn).
  Status notify(std::uint64_t session_id, const std::string& watcher, const std::string& presentity,
                const std::string& document);

  void close_session(std::uint64_t session_id, const std::string& reason);
  /// Closes every session (SIGTERM) with an ERROR Shutdown frame.
  void close_all(const std::string& reason);

  std::vector<SessionInfo> sessions() const;
  std::optional<SessionInfo> session(std::uint64_t id) const;
  const NodeStats& stats() const { return stats_; }

  /// The key cache was flushed (a reload): outbound sessions whose handshake
  /// has not decided yet decide on a fresh answer, not the one they hold.
  /// revalidate() then fetches the fresh answers.
  void forget_answers();

  /// Looks up the keys of every live peer domain now, so that a changed key
  /// set closes the sessions it no longer covers, and ends sessions whose
  /// keys could not be confirmed for max_key_staleness (docs/POLICY.md §4).
  void revalidate();

  /// A new configuration, in two steps (see KeyResolver::prepare): prepare()
  /// loads keys and builds TLS contexts and can fail; commit() cannot.
  struct Plan {
    NodeSettings settings;
    std::shared_ptr<const TlsContexts> tls;
  };
  Result<Plan> prepare(NodeSettings settings) const;
  /// Puts a plan in service: new sessions use it; sessions of a domain no
  /// longer hosted are closed; every live session is judged again at once
  /// under the new policy against the last answer it was judged on.
  void commit(Plan plan);
  /// prepare() then commit(); on error nothing changes.
  Status reload(NodeSettings settings);

  const NodeSettings& settings() const { return settings_; }

 private:
  Node(uv_loop_t* loop, KeyCache& cache, Handlers handlers);

  // SessionHost
  uv_loop_t* loop() override { return loop_; }
  const NodeLimits& limits() const override { return settings_.limits; }
  std::shared_ptr<const TlsContexts> tls() const override { return tls_; }
  std::shared_ptr<const DomainIdentity> identity(std::string_view domain) const override;
  Result<KeyCache::LookupId> lookup_claimed_keys(const SessionInfo& session, const std::string& source,
                                                 KeyCache::Callback callback) override;
  void cancel_lookup(KeyCache::LookupId id) override;
  PolicyVerdict admit(const SessionInfo& session, AuditEvent event, const DomainKeys& answer,
                      std::span<const std::uint8_t> peer_spki) override;
  void audit(const SessionInfo& session, AuditEvent event, const PolicyVerdict& verdict) override;
  void established(PeerSession& session) override;
  bool take_message_token(const SessionInfo& session) override;
  void deliver(const SessionInfo& session, CpimMessage message, std::vector<std::uint8_t> cpim,
               DeliveryReply reply) override;
  std::optional<NackPayload> presence_request(const SessionInfo& session, FrameType type,
                                              const PresenceRequest& request) override;
  std::optional<std::string> notify_document(const std::string& watcher, const std::string& presentity) override;
  void notify_received(const SessionInfo& session, const NotifyPayload& notify) override;
  void closed(PeerSession& session, const std::string& reason) override;

  PeerSession* find(std::uint64_t id) const;
  Result<PeerSession*> established_session(std::uint64_t id) const;
  void write_audit(const SessionInfo& session, AuditEvent event, const PolicyVerdict& verdict,
                   std::optional<DnsOutcome> outcome);
  /// docs/SECURITY.md, "Budgets": an inbound connection is refused, or an
  /// older unauthenticated one is cut off to make room. False: refused.
  bool admit_connection(const std::string& source);
  /// Cuts off an unauthenticated session of `source` (with `silent_first`,
  /// of any source when it has sent nothing yet).
  void evict_oldest_unauthenticated(const std::string& source, const std::string& why, bool silent_first = false);
  void refuse_connection(const std::string& source, const std::string& why);
  void on_answer(const std::string& domain, const std::shared_ptr<const CachedKeys>& entry);
  /// POLICY.md §4 for one session against one answer; closes it if need be.
  void judge(PeerSession& session, const std::shared_ptr<const CachedKeys>& entry);
  void end_stale_sessions();
  void revoke(PeerSession& session, const std::string& reason, std::optional<DnsOutcome> outcome);
  void try_servers(const std::string& local_domain, const std::string& peer_domain,
                   std::shared_ptr<const std::vector<ServerAddress>> servers, std::size_t next,
                   std::string failures, ConnectCallback callback);
  void start_timers();
  void housekeeping();
  static void on_connection(uv_stream_t* server, int status);

  uv_loop_t* loop_;
  KeyCache& cache_;
  Handlers handlers_;
  NodeSettings settings_;
  std::shared_ptr<const TlsContexts> tls_;
  std::unique_ptr<Discovery> discovery_;
  Listener listener_;
  UvHandle<uv_timer_t> revalidate_timer_;
  UvHandle<uv_timer_t> housekeeping_timer_;
  std::uint64_t next_session_id_ = 1;
  std::map<std::uint64_t, std::unique_ptr<PeerSession>> sessions_;
  NodeStats stats_;

  // docs/SECURITY.md, "Budgets": who each session counts against.
  struct Account {
    enum class Kind {
      Stranger,  ///< inbound, no key proved (yet): the unauthenticated budgets
      Peer,      ///< inbound, a key proved: the authenticated budgets
      Outbound,
    } kind;
    std::string source;     ///< strangers: the source address that pays
    std::string principal;  ///< peers: key_principal() of their answer
  };
  void count(std::uint64_t id, Account account);
  void uncount(std::uint64_t id);
  std::unordered_map<std::uint64_t, Account> accounts_;
  std::size_t strangers_ = 0;
  std::size_t peers_ = 0;
  std::size_t outbound_ = 0;
  std::unordered_map<std::string, std::size_t> strangers_by_source_;
  std::unordered_map<std::string, std::size_t> peers_by_principal_;
  std::unordered_set<KeyCache::LookupId> claim_lookups_;  // pending
  RateLimiter message_rate_;
  RateLimiter connection_rate_;
  RateLimiter lookup_rate_;
  RateLimiter lookup_rate_total_;
  PresenceBook presence_;
  std::uint64_t refusals_logged_ms_ = 0;
  std::uint64_t refusals_unlogged_ = 0;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // for callbacks that may outlive the node
};

}  // namespace keyfed
