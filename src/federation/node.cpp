#include "federation/node.h"

#include <csignal>
#include <ctime>
#include <set>

#include <nlohmann/json.hpp>
#include <openssl/err.h>

#include "common/log.h"
#include "dnskey/domain_name.h"
#include "federation/session.h"

namespace keyfed {
namespace {

// Certificates are only key carriers (docs/PROTOCOL.md §2): OpenSSL's chain
// check is skipped and the key is checked against DNS after the handshake.
int accept_any_certificate(int, X509_STORE_CTX*) { return 1; }

Status configure_tls(SSL_CTX* ctx) {
  // docs/PROTOCOL.md §2: TLS 1.3 only, ephemeral ECDHE, no resumption.
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1 ||
      SSL_CTX_set1_groups_list(ctx, "X25519:P-256") != 1 ||
      SSL_CTX_set1_sigalgs_list(ctx, "ed25519:ecdsa_secp256r1_sha256") != 1) {
    return make_error("cannot configure TLS 1.3");
  }
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, accept_any_certificate);
  return ok_status();
}

std::string utc_now() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace

Status check_node_limits(const NodeLimits& l) {
  using std::chrono::milliseconds;
  if (l.connect_timeout < milliseconds(50) || l.connect_timeout > milliseconds(600000)) {
    return make_error("connect_timeout_ms must be within 50..600000");
  }
  if (l.handshake_timeout < milliseconds(100) || l.handshake_timeout > milliseconds(600000)) {
    return make_error("handshake_timeout_ms must be within 100..600000");
  }
  if (l.idle_timeout < milliseconds(100)) return make_error("idle_timeout_ms must be at least 100");
  if (l.keepalive_interval < milliseconds(50)) return make_error("keepalive_interval_ms must be at least 50");
  if (l.max_sessions < 1) return make_error("max_sessions must be at least 1");
  if (l.max_frame_size < 1024 || l.max_frame_size > kHardMaxFrameSize) {
    return make_error("max_frame_size must be within 1024..{}", kHardMaxFrameSize);
  }
  if (!(l.message_rate > 0) || !(l.message_burst >= 1)) {
    return make_error("message_rate must be positive and message_burst at least 1");
  }
  if (l.rekey_bytes < 4096) return make_error("rekey_bytes must be at least 4096");
  if (l.rekey_interval < std::chrono::seconds(1)) return make_error("rekey_interval must be at least 1 s");
  return ok_status();
}

Node::Node(uv_loop_t* loop, KeyCache& cache, Handlers handlers)
    : loop_(loop), cache_(cache), handlers_(std::move(handlers)) {}

Result<std::unique_ptr<Node>> Node::create(uv_loop_t* loop, KeyCache& cache, NodeSettings settings,
                                           Handlers handlers) {
  // libuv writes to sockets with write(2): a peer that vanishes mid-write
  // would kill the process with SIGPIPE. Ignore it unless the program chose
  // a handler of its own.
  struct sigaction current {};
  if (sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) signal(SIGPIPE, SIG_IGN);
  auto node = std::unique_ptr<Node>(new Node(loop, cache, std::move(handlers)));
  if (Status s = node->install(std::move(settings)); !s) return s.error();
  std::weak_ptr<bool> alive = node->alive_;
  Node* raw = node.get();
  cache.add_change_listener([alive, raw](const KeySetChange& change) {
    if (!alive.expired()) raw->on_key_change(change);
  });
  if (node->settings_.revalidate_interval.count() > 0) {
    node->revalidate_timer_ = make_uv_handle<uv_timer_t>();
    uv_timer_init(loop, node->revalidate_timer_.get());
    node->revalidate_timer_->data = raw;
    auto every = static_cast<std::uint64_t>(node->settings_.revalidate_interval.count());
    uv_timer_start(node->revalidate_timer_.get(), [](uv_timer_t* t) { static_cast<Node*>(t->data)->revalidate(); },
                   every, every);
    uv_unref(reinterpret_cast<uv_handle_t*>(node->revalidate_timer_.get()));  // does not keep the loop alive
  }
  return node;
}

Status Node::install(NodeSettings settings) {
  if (settings.domains.empty()) return make_error("the node hosts no domain");
  if (Status s = check_node_limits(settings.limits); !s) return s;
  std::map<std::string, DomainIdentity> identities;
  for (const HostedDomain& hosted : settings.domains) {
    if (hosted.key_files.empty()) return make_error("domain {} has no key file", hosted.domain);
    // Every listed key is loaded, so the next key of a rollover is known good
    // before the switch (docs/KEYS.md, "Rolling and revoking keys"); the first
    // one is presented.
    for (std::size_t i = hosted.key_files.size(); i-- > 0;) {
      Result<DomainIdentity> identity = load_domain_identity(hosted.domain, hosted.key_files[i]);
      if (!identity) return identity.error();
      log_at(LogLevel::Info, "{}: key {} ({}): {}", hosted.domain, identity->public_key.key_tag,
             i == 0 ? "presented" : "held for rollover", key_record_text(hosted.domain, identity->public_key, 300));
      if (i == 0) identities.emplace(hosted.domain, std::move(identity).value());
    }
  }

  SslCtxPtr server(SSL_CTX_new(TLS_server_method()));
  SslCtxPtr client(SSL_CTX_new(TLS_client_method()));
  if (!server || !client) return make_error("cannot create TLS contexts");
  if (Status s = configure_tls(server.get()); !s) return s;
  if (Status s = configure_tls(client.get()); !s) return s;
  SSL_CTX_set_alpn_protos(client.get(), kAlpnWire, sizeof kAlpnWire);
  SSL_CTX_set_alpn_select_cb(
      server.get(),
      [](SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in, unsigned int inlen,
         void*) -> int {
        unsigned char* selected = nullptr;
        if (SSL_select_next_proto(&selected, outlen, kAlpnWire, sizeof kAlpnWire, in, inlen) !=
            OPENSSL_NPN_NEGOTIATED) {
          return SSL_TLSEXT_ERR_ALERT_FATAL;  // no_application_protocol
        }
        *out = selected;
        return SSL_TLSEXT_ERR_OK;
      },
      nullptr);
  // The responder presents the key of the domain the initiator asked for (SNI).
  SSL_CTX_set_tlsext_servername_callback(server.get(), +[](SSL* ssl, int* alert, void* arg) -> int {
    auto* node = static_cast<Node*>(arg);
    const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    const DomainIdentity* identity = name != nullptr ? node->identity(name) : &node->identities_.begin()->second;
    if (identity == nullptr) {
      *alert = SSL_AD_UNRECOGNIZED_NAME;
      return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    // OpenSSL keeps one certificate per key type: drop the default one, or an
    // Ed25519 default could be served in place of a P-256 domain key.
    SSL_certs_clear(ssl);
    SSL_use_certificate(ssl, identity->certificate.get());
    SSL_use_PrivateKey(ssl, identity->key.get());
    return SSL_TLSEXT_ERR_OK;
  });
  SSL_CTX_set_tlsext_servername_arg(server.get(), this);
  // Without SNI, the first hosted domain answers.
  const DomainIdentity& first = identities.begin()->second;
  SSL_CTX_use_certificate(server.get(), first.certificate.get());
  SSL_CTX_use_PrivateKey(server.get(), first.key.get());

  if (settings.default_port < 1 || settings.default_port > 65535) return make_error("default_port must be 1..65535");
  // Nothing is replaced before this point, so a failed reload changes nothing.
  // Discovery keeps its jobs across reloads; only its default port changes.
  if (!discovery_) {
    discovery_ = std::make_unique<Discovery>(cache_.resolver(), settings.default_port);
  } else {
    discovery_->set_default_port(settings.default_port);
  }
  identities_ = std::move(identities);
  server_ctx_ = std::move(server);
  client_ctx_ = std::move(client);
  settings_ = std::move(settings);
  return ok_status();
}

Status Node::reload(NodeSettings settings) {
  // install() builds everything before it replaces anything: on error the
  // running identities and policy stay.
  return install(std::move(settings));
}

Node::~Node() {
  close_all("node shutting down");
  alive_.reset();
}

const DomainIdentity* Node::identity(const std::string& domain) const {
  auto it = identities_.find(domain);
  return it == identities_.end() ? nullptr : &it->second;
}

PeerSession* Node::find(std::uint64_t id) const {
  auto it = sessions_.find(id);
  return it == sessions_.end() ? nullptr : it->second.get();
}

void Node::release_session(std::uint64_t id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  (void)it->second.release();  // the session deletes itself once its handles are closed
  sessions_.erase(it);
}

Status Node::listen(const std::string& address, int port) {
  sockaddr_storage addr{};
  if (uv_ip4_addr(address.c_str(), port, reinterpret_cast<sockaddr_in*>(&addr)) != 0 &&
      uv_ip6_addr(address.c_str(), port, reinterpret_cast<sockaddr_in6*>(&addr)) != 0) {
    return make_error("listen address '{}' is not an IP address", address);
  }
  listener_ = make_uv_handle<uv_tcp_t>();
  uv_tcp_init(loop_, listener_.get());
  listener_->data = this;
  if (int err = uv_tcp_bind(listener_.get(), reinterpret_cast<sockaddr*>(&addr), 0); err != 0) {
    listener_.reset();
    return make_error("cannot bind {}:{}: {}", address, port, uv_strerror(err));
  }
  if (int err = uv_listen(reinterpret_cast<uv_stream_t*>(listener_.get()), 128, &Node::on_connection); err != 0) {
    listener_.reset();
    return make_error("cannot listen on {}:{}: {}", address, port, uv_strerror(err));
  }
  sockaddr_storage bound{};
  int len = sizeof bound;
  uv_tcp_getsockname(listener_.get(), reinterpret_cast<sockaddr*>(&bound), &len);
  port_ = ntohs(bound.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&bound)->sin_port
                                           : reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
  log_at(LogLevel::Info, "listening on {}:{}", address, port_);
  return ok_status();
}

void Node::on_connection(uv_stream_t* server, int status) {
  auto* node = static_cast<Node*>(server->data);
  if (status < 0) {
    log_at(LogLevel::Warning, "accept failed: {}", uv_strerror(status));
    return;
  }
  std::uint64_t id = node->next_session_id_++;
  auto session = std::make_unique<PeerSession>(*node, id, Direction::Inbound);
  PeerSession* raw = session.get();
  node->sessions_.emplace(id, std::move(session));
  if (Status s = raw->accept_from(server); !s) {
    raw->close(s.error().message);
    return;
  }
  // docs/PROTOCOL.md §7: a flood of connections is cut off at max_sessions,
  // while the sessions already up go on.
  if (node->sessions_.size() > node->settings_.limits.max_sessions) {
    raw->close(fmt::format("too many sessions (max_sessions {})", node->settings_.limits.max_sessions));
  }
}

void Node::connect(const std::string& local_domain, const std::string& peer_domain, const std::string& address,
                   int port, ConnectCallback callback) {
  Result<std::string> peer = normalize_domain(peer_domain);
  if (!peer) return callback(peer.error());
  if (identity(local_domain) == nullptr) return callback(make_error("{} is not hosted by this node", local_domain));
  if (sessions_.size() >= settings_.limits.max_sessions) {
    return callback(make_error("too many sessions (max_sessions {})", settings_.limits.max_sessions));
  }
  std::uint64_t id = next_session_id_++;
  auto session = std::make_unique<PeerSession>(*this, id, Direction::Outbound);
  session->info.local_domain = local_domain;
  session->info.peer_domain = *peer;
  sessions_.emplace(id, std::move(session));
  // The target's keys first: the server found must hold one of them.
  std::weak_ptr<bool> alive = alive_;
  auto shared_callback = std::make_shared<ConnectCallback>(std::move(callback));
  cache_.lookup(*peer, [alive, this, id, address, port, shared_callback](std::shared_ptr<const CachedKeys> entry) {
    if (alive.expired()) return;
    PeerSession* pending = find(id);
    if (pending == nullptr || pending->closing()) return;
    // docs/POLICY.md §1: where the answer alone decides (bogus, temp-fail,
    // unusable, no-keys or insecure refused, a refused domain), the decision
    // is made before any connection: a deferred peer is not contacted.
    const DomainKeys& answer = entry->answer;
    PolicyVerdict early = decide(settings_.policy, Direction::Outbound, answer, {});
    if (!early.key_checked && !is_accepted(early.decision)) {
      pending->info.outcome = answer.outcome;
      pending->info.decision = early.decision;
      audit(*pending, "connect", early, answer.outcome);
      std::string reason = fmt::format("{} {}: {}", to_string(early.decision), pending->info.peer_domain, early.reason);
      ConnectCallback report = std::move(*shared_callback);
      pending->close(reason);
      report(make_error("{}", reason));
      return;
    }
    pending->connect_to(address, port, answer, std::move(*shared_callback));
  });
}

void Node::connect_domain(const std::string& local_domain, const std::string& peer_domain, ConnectCallback callback) {
  Result<std::string> peer = normalize_domain(peer_domain);
  if (!peer) return callback(peer.error());
  std::weak_ptr<bool> alive = alive_;
  discovery_->discover(*peer, [alive, this, local_domain, peer = *peer, callback](Result<DiscoveredServers> found) {
    if (alive.expired()) return;
    if (!found) return callback(make_error("discovery: {}", found.error().message));
    auto servers = std::make_shared<const std::vector<ServerAddress>>(found->servers);
    try_servers(local_domain, peer, servers, 0, "", callback);
  });
}

void Node::try_servers(const std::string& local_domain, const std::string& peer_domain,
                       std::shared_ptr<const std::vector<ServerAddress>> servers, std::size_t next,
                       std::string failures, ConnectCallback callback) {
  if (next == servers->size()) {
    return callback(make_error("no server of {} gave a session: {}", peer_domain, failures));
  }
  const ServerAddress& server = (*servers)[next];
  std::weak_ptr<bool> alive = alive_;
  connect(local_domain, peer_domain, server.address, server.port,
          [=, this](Result<SessionInfo> result) mutable {
            if (result || alive.expired()) return callback(std::move(result));
            failures += fmt::format("{}{} ({}:{}): {}", failures.empty() ? "" : "; ", server.host, server.address,
                                    server.port, result.error().message);
            try_servers(local_domain, peer_domain, servers, next + 1, std::move(failures), std::move(callback));
          });
}

Result<PeerSession*> Node::established(std::uint64_t session_id) const {
  PeerSession* session = find(session_id);
  if (session == nullptr || session->state() != PeerSession::State::Established) {
    return make_error("no established session {}", session_id);
  }
  return session;
}

Status Node::send_message(std::uint64_t session_id, std::vector<std::uint8_t> cpim, SendCallback callback) {
  Result<PeerSession*> session = established(session_id);
  if (!session) return session.error();
  (*session)->send_message(std::move(cpim), std::move(callback));
  return ok_status();
}

Status Node::send_presence(std::uint64_t session_id, FrameType type, const std::string& watcher,
                           const std::string& presentity) {
  Result<PeerSession*> session = established(session_id);
  if (!session) return session.error();
  (*session)->send_frame(encode_presence(type, {0, watcher, presentity}));
  return ok_status();
}

Status Node::subscribe(std::uint64_t session_id, const std::string& watcher, const std::string& presentity) {
  return send_presence(session_id, FrameType::Subscribe, watcher, presentity);
}

Status Node::unsubscribe(std::uint64_t session_id, const std::string& watcher, const std::string& presentity) {
  return send_presence(session_id, FrameType::Unsubscribe, watcher, presentity);
}

void Node::set_presence(const std::string& presentity, const std::string& document) {
  presence_[presentity] = document;
  for (auto& [id, session] : sessions_) {
    for (const auto& [watcher, watched] : session->subscriptions) {
      if (watched == presentity) {
        session->send_frame(encode_notify({presentity, document}));
        break;
      }
    }
  }
}

void Node::close_session(std::uint64_t session_id, const std::string& reason) {
  if (PeerSession* session = find(session_id)) session->close(reason, ErrorCode::Shutdown);
}

void Node::close_all(const std::string& reason) {
  std::vector<std::uint64_t> ids;
  for (const auto& [id, session] : sessions_) ids.push_back(id);
  for (std::uint64_t id : ids) close_session(id, reason);
}

std::vector<SessionInfo> Node::sessions() const {
  std::vector<SessionInfo> out;
  for (const auto& [id, session] : sessions_) out.push_back(session->info);
  return out;
}

std::optional<SessionInfo> Node::session(std::uint64_t id) const {
  PeerSession* s = find(id);
  if (s == nullptr) return std::nullopt;
  return s->info;
}

void Node::revalidate() {
  std::set<std::string> domains;
  for (const auto& [id, session] : sessions_) {
    if (session->info.established) domains.insert(session->info.peer_domain);
  }
  for (const std::string& domain : domains) cache_.lookup(domain, [](std::shared_ptr<const CachedKeys>) {});
}

// docs/POLICY.md §4: a key the domain no longer publishes ends the sessions
// it authenticated; a domain that starts publishing keys ends its
// unauthenticated sessions.
void Node::on_key_change(const KeySetChange& change) {
  std::vector<std::uint64_t> ids;
  for (const auto& [id, session] : sessions_) {
    if (session->info.established && session->info.peer_domain == change.domain) ids.push_back(id);
  }
  for (std::uint64_t id : ids) {
    PeerSession* session = find(id);
    if (session == nullptr) continue;
    const SessionInfo& info = session->info;
    std::string reason;
    if (info.peer_key) {
      for (const FederationKey& removed : change.removed) {
        if (removed.same_key(*info.peer_key)) {
          reason = fmt::format("key {} of {} is no longer published ({})", removed.key_tag, change.domain,
                               to_string(change.after->answer.outcome));
        }
      }
    } else if (info.decision == Decision::Unauthenticated && change.after->answer.outcome == DnsOutcome::Keys) {
      reason = fmt::format("{} now publishes keys; the unauthenticated session must end", change.domain);
    }
    if (reason.empty()) continue;
    audit(*session, "revoke", PolicyVerdict{Decision::Refuse, reason, info.peer_key}, change.after->answer.outcome);
    session->close(reason, ErrorCode::KeyRevoked);
  }
}

void Node::audit(const PeerSession& session, std::string_view event, const PolicyVerdict& verdict,
                 DnsOutcome outcome) {
  const SessionInfo& info = session.info;
  nlohmann::json line = {{"time", utc_now()},
                         {"event", event},
                         {"session", info.id},
                         {"direction", to_string(info.direction)},
                         {"peer_address", info.peer_address},
                         {"local_domain", info.local_domain},
                         {"claimed_domain", info.peer_domain},
                         {"outcome", to_string(outcome)},
                         {"decision", to_string(verdict.decision)},
                         {"reason", verdict.reason}};
  if (verdict.key) {
    line["key_tag"] = verdict.key->key_tag;
    line["spki_sha256"] = verdict.key->spki_sha256;
  }
  std::string text = line.dump();
  if (handlers_.audit) {
    handlers_.audit(text);
  } else {
    log_line(LogLevel::Info, "audit " + text);
  }
}

bool Node::take_message_token(const std::string& peer_domain) {
  std::uint64_t now = uv_now(loop_);
  const NodeLimits& limits = settings_.limits;
  auto [it, fresh] = buckets_.try_emplace(peer_domain, Bucket{limits.message_burst, now});
  Bucket& bucket = it->second;
  bucket.tokens = std::min(limits.message_burst,
                           bucket.tokens + static_cast<double>(now - bucket.last_ms) / 1000.0 * limits.message_rate);
  bucket.last_ms = now;
  if (bucket.tokens < 1.0) return false;
  bucket.tokens -= 1.0;
  return true;
}

}  // namespace keyfed
