#include "daemon/daemon.h"

#include <stdexcept>

#include "common/log.h"

namespace keyfed {

// A configured peer the node keeps a session with: reconnected after a
// failure or a close, with a delay that doubles from 1 s up to 5 minutes
// (a deferred peer, docs/POLICY.md §1, is retried this way).
struct Daemon::PeerLink {
  StaticPeer peer;
  UvHandle<uv_timer_t> retry;
  std::chrono::milliseconds backoff{1000};
  std::optional<std::uint64_t> session;
  bool connecting = false;
};

namespace {
constexpr std::chrono::milliseconds kMaxBackoff{300000};
}

Result<std::unique_ptr<Daemon>> Daemon::start(uv_loop_t* loop, NodeConfig config, Node::Handlers handlers,
                                               DaemonParts parts) {
  if (parts != DaemonParts::Keys && config.federation.domains.empty()) {
    return make_error("{}: no [[domains]]: the node would host nothing", config.source.string());
  }
  std::unique_ptr<Daemon> daemon(new Daemon(loop));
  daemon->config_ = std::move(config);
  if (parts == DaemonParts::Full) set_log_level(daemon->config_.log_level);
  auto resolver = KeyResolver::create(loop, daemon->config_.resolver);
  if (!resolver) return resolver.error();
  daemon->resolver_ = std::move(resolver).value();
  daemon->cache_ = std::make_unique<KeyCache>(*daemon->resolver_, daemon->config_.key_cache);
  if (parts == DaemonParts::Keys) return daemon;
  if (parts == DaemonParts::Node) {
    auto node = Node::create(loop, *daemon->cache_, daemon->config_.federation, std::move(handlers));
    if (!node) return node.error();
    daemon->node_ = std::move(node).value();
    return daemon;
  }
  Daemon* raw = daemon.get();
  if (!handlers.on_message) {
    // Addresses were checked by the strict CPIM reader (docs/PROTOCOL.md
    // §5.1): a restricted alphabet, safe to log as they are.
    handlers.on_message = [](const DeliveredMessage& m) {
      log_at(LogLevel::Info, "message {} -> {} ({} bytes, sender domain {})", m.message.from.uri,
             m.message.to.front().uri, m.cpim.size(), to_string(m.session.decision));
    };
  }
  daemon->handlers_ = handlers;
  auto user_closed = std::move(handlers.on_session_closed);
  handlers.on_session_closed = [raw, user_closed](const SessionInfo& info, const std::string& reason) {
    raw->on_session_closed(info);
    if (raw->messages_) raw->messages_->session_closed(info);
    if (raw->presence_) raw->presence_->session_closed(info);
    if (user_closed) user_closed(info, reason);
  };
  auto user_established = std::move(handlers.on_established);
  handlers.on_established = [raw, user_established](const SessionInfo& info) {
    if (raw->messages_) raw->messages_->session_up(info);
    if (raw->presence_) raw->presence_->session_up(info);
    if (user_established) user_established(info);
  };
  auto user_notify = std::move(handlers.on_notify);
  handlers.on_notify = [raw, user_notify](const SessionInfo& info, const NotifyPayload& notify) {
    if (raw->presence_) raw->presence_->notify_received(info, notify);
    if (user_notify) user_notify(info, notify);
  };
  // docs/STORE.md, "Presence": NOTIFYs reach authorized watchers only.
  handlers.may_watch = [raw](const std::string& watcher, const std::string& presentity) {
    return raw->presence_ && raw->presence_->may_watch(watcher, presentity);
  };
  handlers.withheld_document = [](const std::string& presentity) { return make_pidf(presentity, false, ""); };
  // docs/STORE.md, "Inbox": committed before the ACK.
  auto user_message = handlers.on_message;
  handlers.deliver = [raw, user_message](const DeliveredMessage& m, DeliveryReply reply) {
    if (user_message) user_message(m);
    if (!raw->messages_) return reply(NackPayload{0, NackCode::TemporaryFailure, "the node is stopping"});
    raw->messages_->accept_inbound(m, std::move(reply));
  };
  auto node = Node::create(loop, *daemon->cache_, daemon->config_.federation, std::move(handlers));
  if (!node) return node.error();
  daemon->node_ = std::move(node).value();
  if (Status s = daemon->node_->listen(daemon->config_.listen_address, daemon->config_.listen_port); !s) {
    return s.error();
  }
  auto store = open_sqlite_store(loop, {.path = daemon->config_.store.path,
                                        .synchronous = daemon->config_.store.synchronous,
                                        .retention = std::max<std::chrono::seconds>(
                                            std::chrono::seconds(7 * 86400), 2 * daemon->config_.delivery.lifetime)});
  if (!store) return store.error();
  daemon->store_ = std::move(store).value();
  daemon->access_ = std::make_unique<AccessLists>(daemon->config_.access);
  daemon->messages_ =
      std::make_unique<MessageService>(loop, *daemon->node_, *daemon->store_, *daemon->access_, daemon->config_);
  daemon->presence_ = std::make_unique<PresenceService>(loop, *daemon->node_, *daemon->store_, *daemon->messages_,
                                                        *daemon->access_, daemon->config_);
  daemon->presence_->load([raw](Status loaded) { raw->on_loaded(std::move(loaded)); });
  daemon->messages_->keep_open([raw](const std::string& local, const std::string& peer) {
    return raw->presence_ && raw->presence_->needs_session(local, peer);
  });
  auto control = ControlSocket::open(loop, daemon->config_.control,
                                     [raw](const nlohmann::json& request, ControlSocket::Send send) {
                                       raw->on_control(request, send);
                                     });
  if (!control) return control.error();
  daemon->control_ = std::move(control).value();
  log_at(LogLevel::Info, "store {}; control socket {}", daemon->config_.store.path.string(),
         daemon->control_->path().string());
  for (const StaticPeer& peer : daemon->config_.peers) daemon->start_link(peer);
  return daemon;
}

Daemon::Daemon(uv_loop_t* loop) : loop_(loop) {}

Daemon::~Daemon() {
  stopping_ = true;
  control_.reset();
  links_.clear();
  if (presence_) presence_->stop();
  if (node_) node_->close_all("node shutting down");  // ERROR Shutdown and close_notify on every session
  presence_.reset();
  messages_.reset();
  node_.reset();
  store_.reset();  // what was queued to it is committed first
  cache_.reset();
  resolver_.reset();
}

void Daemon::shutdown(const std::string& reason) {
  stopping_ = true;
  control_.reset();
  links_.clear();
  if (presence_) presence_->stop();
  if (node_) node_->close_all(reason);
}

Reactor::Reactor() {
  if (uv_loop_init(&loop_) != 0) throw std::runtime_error("cannot create an event loop");
}

Reactor::~Reactor() {
  daemon_.reset();              // sessions closed, then node, store, cache, resolver, in that order
  uv_run(&loop_, UV_RUN_DEFAULT);  // every handle finishes closing
  uv_loop_close(&loop_);
}

Status Reactor::start(NodeConfig config, DaemonParts parts, Node::Handlers handlers) {
  auto started = Daemon::start(&loop_, std::move(config), std::move(handlers), parts);
  if (!started) return started.error();
  daemon_ = std::move(started).value();
  return ok_status();
}

bool Reactor::run_until(const std::function<bool()>& done) {
  while (!done()) {
    if (uv_run(&loop_, UV_RUN_ONCE) == 0 && !done()) return false;  // nothing left that could make it true
  }
  return true;
}

Status Daemon::reload(NodeConfig next) {
  if (next.federation.domains.empty()) {
    return make_error("{}: no [[domains]]: the node would host nothing", next.source.string());
  }
  if (!(next.store == config_.store) || !(next.control == config_.control)) {
    return make_error("{}: [store] and [control] take a restart (docs/CONFIG.md, Reload)", next.source.string());
  }
  // 1. Prepare every part; nothing running is touched until all succeeded.
  Result<KeyResolver::Prepared> resolver = resolver_->prepare(next.resolver);
  if (!resolver) return resolver.error();
  if (Status s = check_key_cache_config(next.key_cache); !s) return s;
  Result<Node::Plan> plan = node_->prepare(next.federation);
  if (!plan) return plan.error();
  std::optional<Node::Listener> listener;
  if (next.listen_address != config_.listen_address || next.listen_port != config_.listen_port) {
    Result<Node::Listener> opened = node_->open_listener(next.listen_address, next.listen_port);
    if (!opened) return opened.error();
    listener = std::move(opened).value();
  }
  // 2. Commit them all; none of this can fail.
  resolver_->commit(std::move(resolver).value());
  (void)cache_->reconfigure(next.key_cache);
  // Keys validated under the old trust anchor or zones must not keep
  // authenticating: the cache starts over, and every live peer domain is
  // looked up again below.
  cache_->clear();
  node_->forget_answers();
  node_->commit(std::move(plan).value());
  if (listener) node_->use_listener(std::move(*listener));
  set_log_level(next.log_level);
  std::vector<StaticPeer> peers = next.peers;
  config_ = std::move(next);
  apply_peers(peers);
  messages_->reconfigure(config_);
  presence_->reconfigure(config_);
  node_->revalidate();
  return ok_status();
}

void Daemon::apply_peers(const std::vector<StaticPeer>& peers) {
  auto same = [](const StaticPeer& a, const StaticPeer& b) {
    return a.domain == b.domain && a.address == b.address && a.port == b.port;
  };
  for (auto it = links_.begin(); it != links_.end();) {
    bool kept = std::any_of(peers.begin(), peers.end(), [&](const StaticPeer& p) { return same(p, (*it)->peer); });
    if (kept) {
      ++it;
      continue;
    }
    std::optional<std::uint64_t> session = (*it)->session;
    it = links_.erase(it);
    if (session) node_->close_session(*session, "no longer a configured peer (reload)");
  }
  for (const StaticPeer& peer : peers) {
    bool known = std::any_of(links_.begin(), links_.end(), [&](const auto& each) { return same(each->peer, peer); });
    if (!known) start_link(peer);
  }
}

void Daemon::start_link(const StaticPeer& peer) {
  auto link = std::make_unique<PeerLink>();
  link->peer = peer;
  link->retry = make_uv_handle<uv_timer_t>();
  uv_timer_init(loop_, link->retry.get());
  PeerLink& ref = *link;
  links_.push_back(std::move(link));
  connect(ref);
}

void Daemon::connect(PeerLink& link) {
  const std::string& local = config_.federation.domains.front().domain;
  PeerLink* l = &link;
  l->connecting = true;
  node_->connect(local, link.peer.domain, link.peer.address, link.peer.port, [this, l](Result<SessionInfo> r) {
    // The link may have been dropped by a reload meanwhile.
    bool alive = std::any_of(links_.begin(), links_.end(), [&](const auto& each) { return each.get() == l; });
    if (!alive) {
      if (r) node_->close_session(r->id, "no longer a configured peer (reload)");
      return;
    }
    l->connecting = false;
    if (r) {
      l->session = r->id;
      l->backoff = std::chrono::milliseconds(1000);
      messages_->session_up(*r);
      return;
    }
    log_at(LogLevel::Warning, "no session with {} at {}:{}: {}; retrying in {} ms", l->peer.domain, l->peer.address,
           l->peer.port, r.error().message, l->backoff.count());
    schedule(*l);
  });
}

void Daemon::schedule(PeerLink& link) {
  if (stopping_) return;
  link.retry->data = this;
  uv_timer_start(
      link.retry.get(),
      [](uv_timer_t* t) {
        auto* daemon = static_cast<Daemon*>(t->data);
        for (auto& l : daemon->links_) {
          if (l->retry.get() == t && !daemon->stopping_) return daemon->connect(*l);
        }
      },
      static_cast<std::uint64_t>(link.backoff.count()), 0);
  link.backoff = std::min(link.backoff * 2, kMaxBackoff);
}

void Daemon::on_loaded(Status loaded) {
  if (!loaded) {
    log_at(LogLevel::Error, "store {}: cannot read lists, presence and watches: {}; the node refuses messages",
           config_.store.path.string(), loaded.error().message);
    load_error_ = loaded.error();
  }
  auto early = std::move(early_requests_);
  early_requests_.clear();
  for (auto& [request, send] : early) on_control(request, send);
}

void Daemon::on_session_closed(const SessionInfo& info) {
  if (stopping_) return;
  for (auto& link : links_) {
    if (link->session == info.id) {
      link->session.reset();
      schedule(*link);
    }
  }
}

}  // namespace keyfed
