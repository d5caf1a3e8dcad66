// The daemon's composition (`keyfed run`): one owner of everything a running
// node holds (resolver, key cache, node and its listener, the sessions kept
// with configured peers), built from one configuration, torn down in reverse
// order, and reloaded as one unit: every part of a new configuration is
// prepared first, and only when all of them are is anything replaced.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include <uv.h>

#include "common/result.h"
#include "common/uv_handle.h"
#include "config/node_config.h"
#include "dnskey/key_cache.h"
#include "dnskey/resolver.h"
#include "daemon/access_lists.h"
#include "daemon/control_socket.h"
#include "daemon/message_service.h"
#include "daemon/presence_service.h"
#include "federation/node.h"
#include "store/store.h"

namespace keyfed {

/// How much of a node a command needs: the resolver and key cache
/// (`keyfed lookup`), also a node without a listener (`keyfed send
/// --direct`), or the whole daemon (`keyfed run`).
enum class DaemonParts { Keys, Node, Full };

class Daemon {
 public:
  /// Builds and starts, on `loop` (which must outlive the daemon), what
  /// `parts` says, in order: resolver, cache, node, listener, store,
  /// message and presence services, control socket, peer links. Errors name
  /// what failed.
  static Result<std::unique_ptr<Daemon>> start(uv_loop_t* loop, NodeConfig config, Node::Handlers handlers = {},
                                               DaemonParts parts = DaemonParts::Full);
  /// Closes every session and handle, node first, resolver last; run the
  /// loop afterwards to release them.
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  /// SIGHUP (docs/CLI.md): applies every section of `config`, or none. The
  /// key cache is flushed (keys validated under the old trust anchor or
  /// zones are not kept), every live session is judged again under the new
  /// policy and against fresh answers, sessions of a domain no longer hosted
  /// are closed, the listener moves if [node] says so, [[peers]] links are
  /// added and dropped.
  Status reload(NodeConfig config);
  /// Stops the peer links and closes every session with ERROR Shutdown.
  void shutdown(const std::string& reason);

  Node& node() { return *node_; }
  MessageStore& store() { return *store_; }
  MessageService& messages() { return *messages_; }
  PresenceService& presence() { return *presence_; }
  /// The store's lists, presence and watches are read (shortly after start).
  bool ready() const { return presence_ && presence_->ready(); }
  KeyCache& cache() { return *cache_; }
  KeyResolver& resolver() { return *resolver_; }
  const NodeConfig& config() const { return config_; }

 private:
  struct PeerLink;
  explicit Daemon(uv_loop_t* loop);
  void start_link(const StaticPeer& peer);
  void connect(PeerLink& link);
  void schedule(PeerLink& link);
  void on_session_closed(const SessionInfo& info);
  void apply_peers(const std::vector<StaticPeer>& peers);
  /// One request from the control socket (docs/CONTROL.md).
  void on_control(const nlohmann::json& request, const ControlSocket::Send& send);
  void on_loaded(Status loaded);

  uv_loop_t* loop_;
  NodeConfig config_;
  Node::Handlers handlers_;
  std::unique_ptr<KeyResolver> resolver_;
  std::unique_ptr<KeyCache> cache_;
  std::unique_ptr<Node> node_;
  std::unique_ptr<MessageStore> store_;
  std::unique_ptr<AccessLists> access_;
  std::unique_ptr<MessageService> messages_;
  std::unique_ptr<PresenceService> presence_;
  /// Control requests that came before the store was read, answered once it is.
  std::vector<std::pair<nlohmann::json, ControlSocket::Send>> early_requests_;
  std::optional<Error> load_error_;
  std::unique_ptr<ControlSocket> control_;
  std::vector<std::unique_ptr<PeerLink>> links_;
  bool stopping_ = false;
};

/// One owner of a running reactor: the libuv loop and the Daemon on it,
/// for every command (`lookup`, `send --direct`, `run`) and the tests.
/// Destroyed in order: the daemon (sessions, node, store, cache, resolver),
/// then the loop runs until every handle has closed, then the loop closes.
class Reactor {
 public:
  Reactor();
  ~Reactor();
  Reactor(const Reactor&) = delete;
  Reactor& operator=(const Reactor&) = delete;

  Status start(NodeConfig config, DaemonParts parts, Node::Handlers handlers = {});
  uv_loop_t* loop() { return &loop_; }
  Daemon& daemon() { return *daemon_; }
  /// Ends the daemon early (SIGTERM): its sessions get ERROR Shutdown.
  void stop_daemon() { daemon_.reset(); }
  bool running() const { return daemon_ != nullptr; }
  /// Runs the loop one turn at a time until `done()` holds; false if the
  /// loop ran out of work first (a bug: every lookup and connection has a
  /// deadline).
  bool run_until(const std::function<bool()>& done);
  /// Runs the loop until nothing is left to run.
  void run() { uv_run(&loop_, UV_RUN_DEFAULT); }

 private:
  uv_loop_t loop_;
  std::unique_ptr<Daemon> daemon_;
};

}  // namespace keyfed
