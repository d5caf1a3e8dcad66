// Node: one federation server hosting one or more domains. It accepts and
// opens TLS 1.3 sessions on the libuv loop, authenticates peer domains
// against their DNSSEC-validated keys (docs/POLICY.md), and relays
// message/cpim and presence over the wire protocol (docs/PROTOCOL.md).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <uv.h>

#include "common/result.h"
#include "common/uv_handle.h"
#include "dnskey/key_cache.h"
#include "federation/cpim.h"
#include "federation/discovery.h"
#include "federation/frames.h"
#include "federation/identity.h"
#include "federation/policy.h"

namespace keyfed {

/// docs/CONFIG.md, "[limits]".
struct NodeLimits {
  std::chrono::milliseconds connect_timeout{5000};     ///< per address tried
  std::chrono::milliseconds handshake_timeout{10000};  ///< TLS + claim + key lookup, after TCP connect
  std::chrono::milliseconds idle_timeout{300000};      ///< nothing received for this long: close
  std::chrono::milliseconds keepalive_interval{60000}; ///< PING when nothing was sent for this long
  std::size_t max_sessions = 1000;
  std::size_t max_frame_size = 64 * 1024;
  double message_rate = 100;   ///< messages per second per peer domain (token bucket)
  double message_burst = 200;  ///< bucket size
  std::uint64_t rekey_bytes = std::uint64_t{1} << 30;  ///< TLS KeyUpdate after this many bytes sent
  std::chrono::seconds rekey_interval{3600};           ///< ... or this long
};

/// Checks ranges (docs/CONFIG.md); the error names the setting.
Status check_node_limits(const NodeLimits& limits);

struct HostedDomain {
  std::string domain;                          ///< normalized
  std::vector<std::filesystem::path> key_files;  ///< the first is used; all may be published
};

struct NodeSettings {
  std::vector<HostedDomain> domains;
  PolicyConfig policy;
  NodeLimits limits;
  std::chrono::milliseconds revalidate_interval{10000};  ///< re-check keys of live peers
  int default_port = 5269;  ///< discovery: port when a domain has no SRV record
};

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
};

struct DeliveredMessage {
  SessionInfo session;  ///< session.decision says whether the sender's domain was authenticated
  CpimRouting routing;
  std::vector<std::uint8_t> cpim;  ///< verbatim
};

class PeerSession;

class Node {
 public:
  struct Handlers {
    std::function<void(const DeliveredMessage&)> on_message;
    std::function<void(const SessionInfo&, const NotifyPayload&)> on_notify;
    std::function<void(const SessionInfo&, const std::string& reason)> on_session_closed;
    /// One JSON object per line for every authentication decision (default: the log).
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

  /// Listens on address:port (port 0: any); see port().
  Status listen(const std::string& address, int port);
  int port() const { return port_; }

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
  /// Sets a hosted user's presence and notifies its subscribers.
  void set_presence(const std::string& presentity, const std::string& document);

  void close_session(std::uint64_t session_id, const std::string& reason);
  /// Closes every session (SIGTERM) with an ERROR Shutdown frame.
  void close_all(const std::string& reason);

  std::vector<SessionInfo> sessions() const;
  std::optional<SessionInfo> session(std::uint64_t id) const;

  /// Looks up the keys of every live peer domain now, so that a changed key
  /// set closes the sessions it no longer covers (docs/POLICY.md §4).
  void revalidate();

  /// New identities, policy and limits for sessions from now on (SIGHUP).
  Status reload(NodeSettings settings);

  const NodeSettings& settings() const { return settings_; }

 private:
  friend class PeerSession;
  Node(uv_loop_t* loop, KeyCache& cache, Handlers handlers);
  Status install(NodeSettings settings);
  const DomainIdentity* identity(const std::string& domain) const;
  PeerSession* find(std::uint64_t id) const;
  Result<PeerSession*> established(std::uint64_t id) const;
  Status send_presence(std::uint64_t session_id, FrameType type, const std::string& watcher,
                       const std::string& presentity);
  void on_key_change(const KeySetChange& change);
  void audit(const PeerSession& session, std::string_view event, const PolicyVerdict& verdict,
             DnsOutcome outcome);
  bool take_message_token(const std::string& peer_domain);
  /// Gives up ownership of a closing session, which frees itself once its handles are closed.
  void release_session(std::uint64_t id);
  void try_servers(const std::string& local_domain, const std::string& peer_domain,
                   std::shared_ptr<const std::vector<ServerAddress>> servers, std::size_t next,
                   std::string failures, ConnectCallback callback);
  static void on_connection(uv_stream_t* server, int status);

  uv_loop_t* loop_;
  KeyCache& cache_;
  Handlers handlers_;
  NodeSettings settings_;
  std::map<std::string, DomainIdentity> identities_;
  std::unique_ptr<Discovery> discovery_;
  SslCtxPtr server_ctx_;
  SslCtxPtr client_ctx_;
  UvHandle<uv_tcp_t> listener_;
  UvHandle<uv_timer_t> revalidate_timer_;
  int port_ = 0;
  std::uint64_t next_session_id_ = 1;
  std::map<std::uint64_t, std::unique_ptr<PeerSession>> sessions_;
  struct Bucket {
    double tokens;
    std::uint64_t last_ms;
  };
  std::map<std::string, Bucket> buckets_;
  std::map<std::string, std::string> presence_;  // presentity -> document
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // for callbacks that may outlive the node
};

}  // namespace keyfed
