#include "federation/node.h"

#include <csignal>

#include "common/log.h"
#include "dnskey/domain_name.h"
#include "federation/audit.h"
#include "federation/session.h"

namespace keyfed {
namespace {

// Logs of refused connections are throttled to one line a second: a flood of
// connections must not become a flood of log lines (docs/SECURITY.md).
constexpr std::uint64_t kRefusalLogIntervalMs = 1000;
constexpr std::uint64_t kHousekeepingMs = 5000;

}  // namespace

Node::Node(uv_loop_t* loop, KeyCache& cache, Handlers handlers)
    : loop_(loop),
      cache_(cache),
      handlers_(std::move(handlers)),
      message_rate_(1, 1, 1),
      connection_rate_(1, 1, 1),
      lookup_rate_(1, 1, 1),
      lookup_rate_total_(1, 1, 1),
      presence_(1, 1) {}

Result<std::unique_ptr<Node>> Node::create(uv_loop_t* loop, KeyCache& cache, NodeSettings settings,
                                           Handlers handlers) {
  // libuv writes to sockets with write(2): a peer that vanishes mid-write
  // would kill the process with SIGPIPE. Ignore it unless the program chose
  // a handler of its own.
  struct sigaction current {};
  if (sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) signal(SIGPIPE, SIG_IGN);
  auto node = std::unique_ptr<Node>(new Node(loop, cache, std::move(handlers)));
  Result<Plan> plan = node->prepare(std::move(settings));
  if (!plan) return plan.error();
  const NodeLimits& limits = plan->settings.limits;
  node->message_rate_ = RateLimiter(limits.message_rate, limits.message_burst, limits.max_tracked_sources);
  node->connection_rate_ =
      RateLimiter(limits.connection_rate_per_source, limits.connection_burst_per_source, limits.max_tracked_sources);
  node->lookup_rate_ =
      RateLimiter(limits.lookup_rate_per_source, limits.lookup_burst_per_source, limits.max_tracked_sources);
  node->lookup_rate_total_ = RateLimiter(limits.lookup_rate_total, limits.lookup_burst_total, 1);
  node->discovery_ = std::make_unique<Discovery>(cache.resolver(), plan->settings.default_port);
  node->commit(std::move(plan).value());
  std::weak_ptr<bool> alive = node->alive_;
  Node* raw = node.get();
  cache.add_answer_listener([alive, raw](const std::string& domain, const std::shared_ptr<const CachedKeys>& entry) {
    if (!alive.expired()) raw->on_answer(domain, entry);
  });
  return node;
}

Node::~Node() {
  close_all("node shutting down");
  alive_.reset();
}

// ---- configuration ------------------------------------------------------------

Result<Node::Plan> Node::prepare(NodeSettings settings) const {
  if (settings.domains.empty()) return make_error("the node hosts no domain");
  if (Status s = check_node_limits(settings.limits); !s) return s.error();
  if (settings.default_port < 1 || settings.default_port > 65535) return make_error("default_port must be 1..65535");
  auto identities = std::make_shared<IdentitySet>();
  for (const HostedDomain& hosted : settings.domains) {
    if (hosted.key_files.empty()) return make_error("domain {} has no key file", hosted.domain);
    if (identities->by_domain.contains(hosted.domain)) return make_error("domain {} is listed twice", hosted.domain);
    // Every listed key is loaded, so the next key of a rollover is known good
    // before the switch (docs/KEYS.md, "Rolling and revoking keys"); the first
    // one is presented.
    for (std::size_t i = hosted.key_files.size(); i-- > 0;) {
      Result<DomainIdentity> identity = load_domain_identity(hosted.domain, hosted.key_files[i]);
      if (!identity) return identity.error();
      log_at(LogLevel::Info, "{}: key {} ({}): {}", hosted.domain, identity->public_key.key_tag,
             i == 0 ? "presented" : "held for rollover", key_record_text(hosted.domain, identity->public_key, 300));
      if (i == 0) {
        auto shared = std::make_shared<const DomainIdentity>(std::move(identity).value());
        identities->by_domain.emplace(hosted.domain, shared);
        if (!identities->first) identities->first = shared;
      }
    }
  }
  Result<std::shared_ptr<const TlsContexts>> tls =
      TlsContexts::create(std::move(identities), admits_unauthenticated(settings.policy));
  if (!tls) return tls.error();
  return Plan{std::move(settings), std::move(tls).value()};
}

void Node::commit(Plan plan) {
  NodeSettings previous = std::exchange(settings_, std::move(plan.settings));
  tls_ = std::move(plan.tls);
  const NodeLimits& limits = settings_.limits;
  message_rate_.configure(limits.message_rate, limits.message_burst, limits.max_tracked_sources);
  connection_rate_.configure(limits.connection_rate_per_source, limits.connection_burst_per_source,
                             limits.max_tracked_sources);
  lookup_rate_.configure(limits.lookup_rate_per_source, limits.lookup_burst_per_source, limits.max_tracked_sources);
  lookup_rate_total_.configure(limits.lookup_rate_total, limits.lookup_burst_total, 1);
  presence_.set_limits(limits.max_subscriptions_per_session, limits.max_subscriptions);
  if (discovery_) discovery_->set_default_port(settings_.default_port);
  if (!revalidate_timer_ || previous.revalidate_interval != settings_.revalidate_interval) start_timers();

  // Sessions of a domain no longer hosted end now; every other session is
  // judged again, under the new policy, against the last answer it was
  // judged on (a new `refuse` override applies at once).
  std::vector<std::uint64_t> ids;
  for (const auto& [id, session] : sessions_) ids.push_back(id);
  for (std::uint64_t id : ids) {
    PeerSession* session = find(id);
    if (session == nullptr || session->closing()) continue;
    const SessionInfo& info = session->info();
    if (!info.local_domain.empty() && !tls_->identities().find(info.local_domain)) {
      session->close(fmt::format("{} is no longer hosted by this node (reload)", info.local_domain),
                     ErrorCode::Shutdown);
      continue;
    }
    if (session->authentication() && session->last_answer()) judge(*session, session->last_answer());
  }
}

Status Node::reload(NodeSettings settings) {
  Result<Plan> plan = prepare(std::move(settings));
  if (!plan) return plan.error();
  commit(std::move(plan).value());
  return ok_status();
}

void Node::start_timers() {
  if (!housekeeping_timer_) {
    housekeeping_timer_ = make_uv_handle<uv_timer_t>();
    uv_timer_init(loop_, housekeeping_timer_.get());
    housekeeping_timer_->data = this;
    uv_timer_start(housekeeping_timer_.get(), [](uv_timer_t* t) { static_cast<Node*>(t->data)->housekeeping(); },
                   kHousekeepingMs, kHousekeepingMs);
    uv_unref(reinterpret_cast<uv_handle_t*>(housekeeping_timer_.get()));  // does not keep the loop alive
  }
  if (!revalidate_timer_) {
    revalidate_timer_ = make_uv_handle<uv_timer_t>();
    uv_timer_init(loop_, revalidate_timer_.get());
    revalidate_timer_->data = this;
    uv_unref(reinterpret_cast<uv_handle_t*>(revalidate_timer_.get()));
  }
  uv_timer_stop(revalidate_timer_.get());
  if (settings_.revalidate_interval.count() > 0) {
    auto every = static_cast<std::uint64_t>(settings_.revalidate_interval.count());
    uv_timer_start(revalidate_timer_.get(), [](uv_timer_t* t) { static_cast<Node*>(t->data)->revalidate(); }, every,
                   every);
  }
}

void Node::housekeeping() {
  std::uint64_t now = uv_now(loop_);
  message_rate_.prune(now);
  connection_rate_.prune(now);
  lookup_rate_.prune(now);
  lookup_rate_total_.prune(now);
}

// ---- listening and admission ------------------------------------------------------

Result<Node::Listener> Node::open_listener(const std::string& address, int port) {
  sockaddr_storage addr{};
  if (uv_ip4_addr(address.c_str(), port, reinterpret_cast<sockaddr_in*>(&addr)) != 0 &&
      uv_ip6_addr(address.c_str(), port, reinterpret_cast<sockaddr_in6*>(&addr)) != 0) {
    return make_error("listen address '{}' is not an IP address", address);
  }
  Listener listener;
  listener.address = address;
  listener.handle = make_uv_handle<uv_tcp_t>();
  uv_tcp_init(loop_, listener.handle.get());
  listener.handle->data = this;
  if (int err = uv_tcp_bind(listener.handle.get(), reinterpret_cast<sockaddr*>(&addr), 0); err != 0) {
    return make_error("cannot bind {}:{}: {}", address, port, uv_strerror(err));
  }
  if (int err = uv_listen(reinterpret_cast<uv_stream_t*>(listener.handle.get()), 511, &Node::on_connection);
      err != 0) {
    return make_error("cannot listen on {}:{}: {}", address, port, uv_strerror(err));
  }
  sockaddr_storage bound{};
  int len = sizeof bound;
  uv_tcp_getsockname(listener.handle.get(), reinterpret_cast<sockaddr*>(&bound), &len);
  listener.port = ntohs(bound.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&bound)->sin_port
                                                   : reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
  return listener;
}

void Node::use_listener(Listener listener) {
  listener_ = std::move(listener);
  log_at(LogLevel::Info, "listening on {}:{}", listener_.address, listener_.port);
}

Status Node::listen(const std::string& address, int port) {
  Result<Listener> listener = open_listener(address, port);
  if (!listener) return listener.error();
  use_listener(std::move(listener).value());
  return ok_status();
}

void Node::on_connection(uv_stream_t* server, int status) {
  auto* node = static_cast<Node*>(server->data);
  if (status < 0) {
    log_at(LogLevel::Warning, "accept failed: {}", uv_strerror(status));
    return;
  }
  Result<std::unique_ptr<TcpTransport>> transport = TcpTransport::accept(node->loop_, server);
  if (!transport) {
    log_at(LogLevel::Warning, "{}", transport.error().message);
    return;
  }
  node->serve(std::move(transport).value());
}

void Node::serve(std::unique_ptr<Transport> transport) {
  if (!admit_connection(transport->source())) {
    transport->close(std::chrono::milliseconds(0));
    return;
  }
  std::uint64_t id = next_session_id_++;
  auto session = std::make_unique<PeerSession>(static_cast<SessionHost&>(*this), id, Direction::Inbound);
  PeerSession* raw = session.get();
  sessions_.emplace(id, std::move(session));
  count(id, {Account::Kind::Stranger, transport->source(), ""});
  raw->accept(std::move(transport));
}

void Node::refuse_connection(const std::string& source, const std::string& why) {
  ++stats_.refused_connections;
  std::uint64_t now = uv_now(loop_);
  if (now - refusals_logged_ms_ < kRefusalLogIntervalMs && refusals_logged_ms_ != 0) {
    ++refusals_unlogged_;
    return;
  }
  log_at(LogLevel::Warning, "refused a connection from {}: {}{}", source, why,
         refusals_unlogged_ > 0 ? fmt::format(" ({} more refusals not logged)", refusals_unlogged_) : "");
  refusals_logged_ms_ = now;
  refusals_unlogged_ = 0;
}

bool Node::admit_connection(const std::string& source) {
  const NodeLimits& limits = settings_.limits;
  // docs/PROTOCOL.md §7: a flood of connections is cut off at max_sessions,
  // while the sessions already up go on.
  if (sessions_.size() >= limits.max_sessions) {
    refuse_connection(source, fmt::format("too many sessions (max_sessions {})", limits.max_sessions));
    return false;
  }
  // docs/SECURITY.md, "Budgets": new connections from one source are
  // rate-limited (given back when they authenticate); then the oldest
  // unauthenticated sessions give way, first the source's own, then those of
  // the source holding most.
  if (!connection_rate_.take(source, uv_now(loop_))) {
    refuse_connection(source, fmt::format("more than {} new connections per second from this source "
                                          "(connection_rate_per_source)",
                                          limits.connection_rate_per_source));
    return false;
  }
  if (auto held = strangers_by_source_.find(source);
      held != strangers_by_source_.end() && held->second >= limits.max_unauthenticated_per_source) {
    evict_oldest_unauthenticated(source, fmt::format("{} has {} unauthenticated sessions "
                                                     "(max_unauthenticated_per_source)",
                                                     source, limits.max_unauthenticated_per_source));
  } else if (strangers_ >= limits.max_inbound_unauthenticated) {
    // A connection that has sent nothing goes first, whoever holds it: an
    // attacker spread over many addresses cannot cut off handshakes in
    // progress. Then the oldest of the source holding the most.
    auto biggest = std::max_element(strangers_by_source_.begin(), strangers_by_source_.end(),
                                    [](const auto& a, const auto& b) { return a.second < b.second; });
    evict_oldest_unauthenticated(biggest->first,
                                 fmt::format("{} unauthenticated sessions (max_inbound_unauthenticated)",
                                             limits.max_inbound_unauthenticated),
                                 true);
  }
  return true;
}

void Node::evict_oldest_unauthenticated(const std::string& source, const std::string& why, bool silent_first) {
  // Among candidates, one that has sent nothing yet goes before one that
  // has, then the oldest.
  PeerSession* victim = nullptr;
  auto better = [](PeerSession* a, PeerSession* b) {
    if (b == nullptr) return true;
    bool a_silent = a->bytes_received() == 0, b_silent = b->bytes_received() == 0;
    if (a_silent != b_silent) return a_silent;
    return a->started_ms() < b->started_ms();
  };
  for (const auto& [id, account] : accounts_) {
    if (account.kind != Account::Kind::Stranger) continue;
    PeerSession* session = find(id);
    if (session == nullptr || session->closing()) continue;
    bool candidate = account.source == source || (silent_first && session->bytes_received() == 0);
    if (candidate && better(session, victim)) victim = session;
  }
  if (victim == nullptr) return;
  ++stats_.evicted;
  victim->close(fmt::format("evicted to admit a newer connection: {}", why), ErrorCode::Timeout);
}

// ---- sessions: the SessionHost side ---------------------------------------------

std::shared_ptr<const DomainIdentity> Node::identity(std::string_view domain) const {
  return tls_->identities().find(domain);
}

Result<KeyCache::LookupId> Node::lookup_claimed_keys(const SessionInfo& session, const std::string& source,
                                                     KeyCache::Callback callback) {
  const std::string& domain = session.peer_domain;
  if (cache_.is_fresh(domain)) return cache_.lookup(domain, std::move(callback));
  // docs/SECURITY.md, "Budgets": a claim that needs DNS costs its source a
  // lookup token (given back if it authenticates), within a bound on the
  // lookups waiting at once.
  const NodeLimits& limits = settings_.limits;
  if (claim_lookups_.size() >= limits.max_pending_lookups) {
    ++stats_.refused_lookups;
    return make_error("too many key lookups pending (max_pending_lookups {})", limits.max_pending_lookups);
  }
  std::uint64_t now = uv_now(loop_);
  if (!lookup_rate_.take(source, now)) {
    ++stats_.refused_lookups;
    return make_error("more than {} key lookups per second from {} (lookup_rate_per_source)",
                      limits.lookup_rate_per_source, source);
  }
  if (!lookup_rate_total_.take("*", now)) {
    ++stats_.refused_lookups;
    return make_error("more than {} key lookups per second from all sources (lookup_rate_total)",
                      limits.lookup_rate_total);
  }
  (void)session;
  auto slot = std::make_shared<KeyCache::LookupId>(0);
  std::weak_ptr<bool> alive = alive_;
  KeyCache::LookupId id =
      cache_.lookup(domain, [this, alive, slot, callback = std::move(callback)](std::shared_ptr<const CachedKeys> e) {
        if (alive.expired()) return;
        claim_lookups_.erase(*slot);
        callback(std::move(e));
      });
  if (id == 0) return id;  // answered meanwhile
  *slot = id;
  claim_lookups_.insert(id);
  return id;
}

void Node::cancel_lookup(KeyCache::LookupId id) {
  claim_lookups_.erase(id);
  cache_.cancel(id);
}

PolicyVerdict Node::admit(const SessionInfo& info, AuditEvent event, const DomainKeys& answer,
                          std::span<const std::uint8_t> peer_spki) {
  PolicyVerdict verdict = decide(settings_.policy, info.direction, answer, peer_spki);
  const NodeLimits& limits = settings_.limits;
  if (proved_key(verdict.decision) && info.direction == Direction::Inbound) {
    // docs/SECURITY.md, "Budgets": authenticated peers have their own budget,
    // and one peer domain (or one wildcard, or one alias target) cannot take
    // all of it.
    std::string over;
    std::string principal = key_principal(answer);
    auto held = peers_by_principal_.find(principal);
    if (peers_ >= limits.max_inbound_authenticated) {
      over = fmt::format("too many authenticated inbound sessions (max_inbound_authenticated {})",
                         limits.max_inbound_authenticated);
    } else if (held != peers_by_principal_.end() && held->second >= limits.max_sessions_per_peer_domain) {
      over = fmt::format("{} already has {} sessions (max_sessions_per_peer_domain)", principal,
                         limits.max_sessions_per_peer_domain);
    }
    if (!over.empty()) verdict = PolicyVerdict{Decision::Refuse, over, verdict.key, verdict.key_checked};
  }
  write_audit(info, event, verdict, answer.outcome);
  return verdict;
}

void Node::audit(const SessionInfo& info, AuditEvent event, const PolicyVerdict& verdict) {
  write_audit(info, event, verdict, std::nullopt);
}

void Node::write_audit(const SessionInfo& info, AuditEvent event, const PolicyVerdict& verdict,
                       std::optional<DnsOutcome> outcome) {
  std::string line = audit_json(info, event, verdict, outcome);
  if (handlers_.audit) {
    handlers_.audit(line);
  } else {
    log_audit(line);
  }
}

void Node::count(std::uint64_t id, Account account) {
  switch (account.kind) {
    case Account::Kind::Stranger:
      ++strangers_;
      ++strangers_by_source_[account.source];
      break;
    case Account::Kind::Peer:
      ++peers_;
      ++peers_by_principal_[account.principal];
      break;
    case Account::Kind::Outbound: ++outbound_; break;
  }
  accounts_[id] = std::move(account);
}

void Node::uncount(std::uint64_t id) {
  auto it = accounts_.find(id);
  if (it == accounts_.end()) return;
  const Account& account = it->second;
  auto drop = [](std::unordered_map<std::string, std::size_t>& counts, const std::string& key) {
    if (auto c = counts.find(key); c != counts.end() && --c->second == 0) counts.erase(c);
  };
  switch (account.kind) {
    case Account::Kind::Stranger:
      --strangers_;
      drop(strangers_by_source_, account.source);
      break;
    case Account::Kind::Peer:
      --peers_;
      drop(peers_by_principal_, account.principal);
      break;
    case Account::Kind::Outbound: --outbound_; break;
  }
  accounts_.erase(it);
}

void Node::established(PeerSession& session) {
  const SessionInfo& info = session.info();
  // A session admitted without a proved key (no-keys or insecure peers the
  // policy accepts) stays a stranger for the budgets, and pays as one.
  if (info.direction == Direction::Inbound && proved_key(info.decision) && session.last_answer()) {
    uncount(info.id);
    count(info.id, {Account::Kind::Peer, session.source(), key_principal(session.last_answer()->answer)});
    // The connection was legitimate work: its token goes back.
    connection_rate_.refund(session.source());
  }
  if (handlers_.on_established) {
    SessionInfo copy = info;  // the handler may close the session
    handlers_.on_established(copy);
  }
}

void Node::closed(PeerSession& session, const std::string& reason) {
  auto it = sessions_.find(session.info().id);
  if (it == sessions_.end()) return;
  const SessionInfo& info = session.info();
  uncount(info.id);
  presence_.drop_session(info.id);
  (void)it->second.release();  // the session frees itself once its transport has closed
  sessions_.erase(it);
  if (handlers_.on_session_closed) handlers_.on_session_closed(info, reason);
}

bool Node::take_message_token(const SessionInfo& session) {
  auto account = accounts_.find(session.id);
  bool peer = account != accounts_.end() && account->second.kind == Account::Kind::Peer;
  return message_rate_.take(peer ? account->second.principal : session.peer_domain, uv_now(loop_));
}

void Node::deliver(const SessionInfo& session, CpimMessage message, std::vector<std::uint8_t> cpim,
                   DeliveryReply reply) {
  // docs/PROTOCOL.md §5: at least one recipient (To or cc) is hosted here.
  // A message to users of several domains goes, whole, to each of them;
  // each takes it for its own users and leaves the others to theirs.
  bool hosted = false;
  for (const auto* list : {&message.to, &message.cc}) {
    for (const CpimAddress& recipient : *list) hosted = hosted || identity(recipient.domain) != nullptr;
  }
  if (!hosted) {
    return reply(NackPayload{0, NackCode::UnknownRecipient,
                             fmt::format("no recipient is hosted here (first: {})", message.to.front().uri)});
  }
  // RFC 3862 §3.3.11: a header the sender requires and we do not implement
  // refuses the message (docs/PROTOCOL.md §5.1).
  if (Status s = check_required(message, imdn_header_names()); !s) {
    return reply(NackPayload{0, NackCode::MalformedMessage, s.error().message});
  }
  if (handlers_.deliver) return handlers_.deliver({session, std::move(message), std::move(cpim)}, std::move(reply));
  if (handlers_.on_message) handlers_.on_message({session, std::move(message), std::move(cpim)});
  reply(std::nullopt);
}

std::optional<NackPayload> Node::presence_request(const SessionInfo& session, FrameType type,
                                                  const PresenceRequest& request) {
  auto watcher = parse_user_uri(request.watcher, UriScheme::Pres);
  auto presentity = parse_user_uri(request.presentity, UriScheme::Pres);
  // The presentity is of the domain this session speaks for: a peer of one
  // hosted domain learns nothing of the others the node hosts.
  if (!watcher || !presentity || watcher->domain != session.peer_domain || presentity->domain != session.local_domain ||
      !identity(presentity->domain)) {
    return NackPayload{0, NackCode::NotAuthorized,
                       "watcher must be of the peer domain and presentity of the domain this session speaks for"};
  }
  if (type == FrameType::Unsubscribe) {
    presence_.unsubscribe(session.id, request.watcher, request.presentity);
    return std::nullopt;
  }
  if (Status s = presence_.subscribe(session.id, request.watcher, request.presentity); !s) {
    return NackPayload{0, NackCode::LimitExceeded, s.error().message};
  }
  return std::nullopt;
}

std::optional<std::string> Node::notify_document(const std::string& watcher, const std::string& presentity) {
  if (handlers_.may_watch && !handlers_.may_watch(watcher, presentity)) {
    if (handlers_.withheld_document) return handlers_.withheld_document(presentity);
    return std::nullopt;
  }
  return presence_.document(presentity);
}

void Node::notify_received(const SessionInfo& session, const NotifyPayload& notify) {
  if (handlers_.on_notify) handlers_.on_notify(session, notify);
}

// ---- revocation (docs/POLICY.md §4) -------------------------------------------------

void Node::on_answer(const std::string& domain, const std::shared_ptr<const CachedKeys>& entry) {
  std::vector<std::uint64_t> ids;
  for (const auto& [id, session] : sessions_) {
    if (!session->closing() && session->info().peer_domain == domain) ids.push_back(id);
  }
  for (std::uint64_t id : ids) {
    PeerSession* session = find(id);
    if (session == nullptr || session->closing()) continue;
    if (session->authentication()) {
      judge(*session, entry);
    } else {
      session->update_target_keys(entry);  // an outbound session not decided yet uses the newest answer
    }
  }
  if (entry->answer.outcome == DnsOutcome::TempFail) end_stale_sessions();
}

void Node::judge(PeerSession& session, const std::shared_ptr<const CachedKeys>& entry) {
  RecheckVerdict verdict = recheck(settings_.policy, *session.authentication(), entry->answer);
  if (!verdict.keep) return revoke(session, verdict.reason, entry->answer.outcome);
  if (verdict.confirmed) session.confirm(entry);
}

void Node::revoke(PeerSession& session, const std::string& reason, std::optional<DnsOutcome> outcome) {
  ++stats_.revoked;
  write_audit(session.info(), AuditEvent::Revoke, PolicyVerdict{Decision::Refuse, reason, session.info().peer_key},
              outcome);
  session.close(reason, ErrorCode::KeyRevoked);
}

void Node::end_stale_sessions() {
  TimePoint now = cache_.now();
  std::vector<std::uint64_t> stale;
  for (const auto& [id, session] : sessions_) {
    if (!session->closing() && session->authentication() &&
        now > session->confirmed_until() + settings_.policy.max_key_staleness) {
      stale.push_back(id);
    }
  }
  for (std::uint64_t id : stale) {
    PeerSession* session = find(id);
    if (session == nullptr || session->closing()) continue;
    revoke(*session,
           fmt::format("the keys of {} could not be confirmed for more than {} s after they expired "
                       "(max_key_staleness_s): every lookup since failed",
                       session->info().peer_domain, settings_.policy.max_key_staleness.count()),
           DnsOutcome::TempFail);
  }
}

void Node::forget_answers() {
  for (const auto& [id, session] : sessions_) session->forget_target_keys();
}

void Node::revalidate() {
  // Every session with a peer domain, decided or not: an outbound handshake
  // still running gets the fresh answer too (after a reload's flush).
  std::set<std::string> domains;
  for (const auto& [id, session] : sessions_) {
    if (!session->closing() && !session->info().peer_domain.empty()) domains.insert(session->info().peer_domain);
  }
  for (const std::string& domain : domains) cache_.lookup(domain, [](std::shared_ptr<const CachedKeys>) {});
  end_stale_sessions();
}

// ---- outbound -------------------------------------------------------------------

void Node::connect(const std::string& local_domain, const std::string& peer_domain, const std::string& address,
                   int port, ConnectCallback callback) {
  Result<std::string> peer = normalize_domain(peer_domain);
  if (!peer) return callback(peer.error());
  if (!identity(local_domain)) return callback(make_error("{} is not hosted by this node", local_domain));
  const NodeLimits& limits = settings_.limits;
  if (outbound_ >= limits.max_outbound) {
    return callback(make_error("too many outbound sessions (max_outbound {})", limits.max_outbound));
  }
  if (sessions_.size() >= limits.max_sessions) {
    return callback(make_error("too many sessions (max_sessions {})", limits.max_sessions));
  }
  std::uint64_t id = next_session_id_++;
  auto owned = std::make_unique<PeerSession>(static_cast<SessionHost&>(*this), id, Direction::Outbound);
  PeerSession* session = owned.get();
  sessions_.emplace(id, std::move(owned));
  count(id, {Account::Kind::Outbound, "", ""});
  session->await_keys(local_domain, *peer, std::move(callback));
  // The target's keys first: the server found must hold one of them.
  std::weak_ptr<bool> alive = alive_;
  KeyCache::LookupId lookup =
      cache_.lookup(*peer, [alive, this, id, address, port](std::shared_ptr<const CachedKeys> entry) {
        if (alive.expired()) return;
        PeerSession* pending = find(id);
        if (pending == nullptr || pending->closing()) return;
        pending->set_lookup(0);
        // docs/POLICY.md §1: where the answer alone decides (bogus, temp-fail,
        // unusable, no-keys or insecure refused, a refused domain), the
        // decision is made before any connection: a deferred peer is not contacted.
        PolicyVerdict early = decide(settings_.policy, Direction::Outbound, entry->answer, {});
        if (!early.key_checked && !is_accepted(early.decision)) {
          write_audit(pending->info(), AuditEvent::Connect, early, entry->answer.outcome);
          return pending->fail_connect(
              fmt::format("{} {}: {}", to_string(early.decision), pending->info().peer_domain, early.reason));
        }
        Result<std::unique_ptr<TcpTransport>> transport = TcpTransport::connect(loop_, address, port);
        if (!transport) return pending->fail_connect(transport.error().message);
        pending->connect(std::move(transport).value(), entry);
      });
  if (PeerSession* pending = find(id); pending != nullptr && pending->state() == PeerSession::State::AwaitKeys) {
    pending->set_lookup(lookup);
  }
}

void Node::connect_domain(const std::string& local_domain, const std::string& peer_domain, ConnectCallback callback) {
  Result<std::string> peer = normalize_domain(peer_domain);
  if (!peer) return callback(peer.error());
  std::weak_ptr<bool> alive = alive_;
  // docs/POLICY.md §1: where the answer alone decides, no server is looked
  // for or tried (a domain's DNS must not make the node walk its addresses).
  cache_.lookup(*peer, [alive, this, local_domain, peer = *peer, callback](std::shared_ptr<const CachedKeys> entry) {
    if (alive.expired()) return;
    PolicyVerdict early = decide(settings_.policy, Direction::Outbound, entry->answer, {});
    if (!early.key_checked && !is_accepted(early.decision)) {
      SessionInfo info;
      info.direction = Direction::Outbound;
      info.local_domain = local_domain;
      info.peer_domain = peer;
      write_audit(info, AuditEvent::Connect, early, entry->answer.outcome);
      return callback(make_error("{} {}: {}", to_string(early.decision), peer, early.reason));
    }
    discovery_->discover(peer, [alive, this, local_domain, peer, callback](Result<DiscoveredServers> found) {
      if (alive.expired()) return;
      if (!found) return callback(make_error("discovery: {}", found.error().message));
      auto servers = std::make_shared<const std::vector<ServerAddress>>(found->servers);
      try_servers(local_domain, peer, servers, 0, "", callback);
    });
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
  // At most kMaxServers tries, one after the other.
  connect(local_domain, peer_domain, server.address, server.port,
          [=, this](Result<SessionInfo> result) mutable {
            if (result || alive.expired()) return callback(std::move(result));
            failures += fmt::format("{}{} ({}:{}): {}", failures.empty() ? "" : "; ", server.host, server.address,
                                    server.port, result.error().message.substr(0, 200));
            try_servers(local_domain, peer_domain, servers, next + 1, std::move(failures), std::move(callback));
          });
}

// ---- using sessions ---------------------------------------------------------------

PeerSession* Node::find(std::uint64_t id) const {
  auto it = sessions_.find(id);
  return it == sessions_.end() ? nullptr : it->second.get();
}

Result<PeerSession*> Node::established_session(std::uint64_t session_id) const {
  PeerSession* session = find(session_id);
  if (session == nullptr || session->state() != PeerSession::State::Established) {
    return make_error("no established session {}", session_id);
  }
  return session;
}

Status Node::send_message(std::uint64_t session_id, std::vector<std::uint8_t> cpim, SendCallback callback) {
  Result<PeerSession*> session = established_session(session_id);
  if (!session) return session.error();
  (*session)->send_message(std::move(cpim), std::move(callback));
  return ok_status();
}

Status Node::subscribe(std::uint64_t session_id, const std::string& watcher, const std::string& presentity) {
  Result<PeerSession*> session = established_session(session_id);
  if (!session) return session.error();
  (*session)->send_frame(encode_presence(FrameType::Subscribe, {0, watcher, presentity}));
  return ok_status();
}

Status Node::unsubscribe(std::uint64_t session_id, const std::string& watcher, const std::string& presentity) {
  Result<PeerSession*> session = established_session(session_id);
  if (!session) return session.error();
  (*session)->send_frame(encode_presence(FrameType::Unsubscribe, {0, watcher, presentity}));
  return ok_status();
}

void Node::set_presence(const std::string& presentity, const std::string& document) {
  presence_.publish(presentity, document);
  for (const auto& [id, watcher] : presence_.watchers(presentity)) {
    if (handlers_.may_watch && !handlers_.may_watch(watcher, presentity)) continue;
    if (PeerSession* session = find(id)) session->send_frame(encode_notify({watcher, presentity, document}));
  }
}

std::vector<std::pair<std::uint64_t, std::string>> Node::watchers(const std::string& presentity) const {
  return presence_.watchers(presentity);
}

Status Node::notify(std::uint64_t session_id, const std::string& watcher, const std::string& presentity,
                    const std::string& document) {
  Result<PeerSession*> session = established_session(session_id);
  if (!session) return session.error();
  (*session)->send_frame(encode_notify({watcher, presentity, document}));
  return ok_status();
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
  for (const auto& [id, session] : sessions_) out.push_back(session->info());
  return out;
}

std::optional<SessionInfo> Node::session(std::uint64_t id) const {
  PeerSession* s = find(id);
  if (s == nullptr) return std::nullopt;
  return s->info();
}

}  // namespace keyfed
