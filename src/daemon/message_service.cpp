#include "daemon/message_service.h"

#include <openssl/rand.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <chrono>
#include <ctime>

#include "common/log.h"
#include "common/xml_text.h"

namespace keyfed {

namespace {

UnixMs now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string hex(const unsigned char* data, std::size_t size) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < size; ++i) {
    out += kDigits[data[i] >> 4];
    out += kDigits[data[i] & 15];
  }
  return out;
}

std::string new_message_id() {
  unsigned char random[16];
  if (RAND_bytes(random, sizeof random) != 1) {
    // The only failure is an unseeded generator: no id is better than a guessable one.
    throw std::runtime_error("RAND_bytes failed");
  }
  return hex(random, sizeof random);
}

// RFC 5438 §6.3 leaves the Message-ID's form to the sender; ours are
// printable tokens so that they can be shown, logged and used as keys.
bool valid_id(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           std::string_view("._~@+=-:/").find(c) != std::string_view::npos;
  });
}

std::string domain_of(const std::string& address) {
  auto at = address.find('@');
  return at == std::string::npos ? std::string() : address.substr(at + 1);
}

std::vector<std::uint8_t> bytes_of(std::string_view text) { return {text.begin(), text.end()}; }

/// Delivery notifications a peer domain's messages may make this node send
/// in a minute (docs/STORE.md, "Delivery notifications").
constexpr int kNoticesPerMinute = 600;

// A delivery notification of ours: its MIME object is message/imdn+xml.
bool is_notice(const std::vector<std::uint8_t>& cpim) {
  Result<CpimMessage> parsed = parse_cpim(cpim);
  if (!parsed) return false;
  auto body = parsed->mime_object(cpim);
  constexpr std::string_view kType = "Content-Type: message/imdn+xml\r\n";
  return body.size() >= kType.size() && std::equal(kType.begin(), kType.end(), body.begin());
}

/// Messages sent to one domain and not answered yet, at most.
constexpr std::size_t kMaxUnansweredPerDomain = 64;
/// How long a sent message may wait for its ACK or NACK.
constexpr std::chrono::milliseconds kAckTimeout{60000};

constexpr std::string_view kCountersKind = "peer-counters";  // domain -> "in out"
/// Peer domains counted at most (docs/SECURITY.md §3): each needs its own keys.
constexpr std::size_t kMaxCountedPeers = 10000;

}  // namespace

bool wants_notification(const CpimMessage& message, std::string_view kind) {
  const CpimHeader* header = message.find(kImdnNamespace, "Disposition-Notification");
  if (header == nullptr) return false;
  std::string_view rest = header->value;
  while (!rest.empty()) {
    auto comma = rest.find(',');
    std::string_view token = rest.substr(0, comma);
    while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
    while (!token.empty() && token.back() == ' ') token.remove_suffix(1);
    if (token.size() == kind.size() &&
        std::equal(token.begin(), token.end(), kind.begin(),
                   [](char a, char b) { return std::tolower(static_cast<unsigned char>(a)) == b; })) {
      return true;
    }
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  return false;
}

std::vector<std::uint8_t> make_delivery_notification(const CpimMessage& original, const std::string& original_id,
                                                      const std::string& recipient, std::string_view status,
                                                      const std::string& id) {
  std::time_t seconds = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  char now[32];
  std::strftime(now, sizeof now, "%Y-%m-%dT%H:%M:%SZ", &tm);
  std::string datetime = xml_text(original.datetime ? *original.datetime : std::string(now));
  std::string xml = fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n"
      "<imdn xmlns=\"urn:ietf:params:xml:ns:imdn\">\r\n"
      "<message-id>{}</message-id>\r\n"
      "<datetime>{}</datetime>\r\n"
      "<recipient-uri>{}</recipient-uri>\r\n"
      "<original-recipient-uri>{}</original-recipient-uri>\r\n"
      "<delivery-notification><status><{}/></status></delivery-notification>\r\n"
      "</imdn>\r\n",
      xml_text(original_id), datetime, xml_text(recipient), xml_text(recipient), status);
  // Addresses and ids passed the strict reader and valid_id(): nothing in
  // them ends a CPIM header (user parts may hold '&' and '\'', escaped above).
  std::string text = fmt::format(
      "From: <{}>\r\nTo: <{}>\r\nNS: imdn <urn:ietf:params:imdn>\r\nimdn.Message-ID: {}\r\nDateTime: {}\r\n\r\n"
      "Content-Type: message/imdn+xml\r\nContent-Disposition: notification\r\nContent-Length: {}\r\n\r\n{}",
      recipient, original.from.uri, id, now, xml.size(), xml);
  return bytes_of(text);
}

std::optional<std::string> message_id(const CpimMessage& message) {
  const CpimHeader* header = message.find(kImdnNamespace, "Message-ID");
  if (header == nullptr) return std::nullopt;
  std::string_view v = header->value;
  if (v.size() >= 2 && v.front() == '<' && v.back() == '>') v = v.substr(1, v.size() - 2);
  return std::string(v);
}

Result<std::vector<std::uint8_t>> with_message_id(std::vector<std::uint8_t> cpim, const CpimMessage& parsed) {
  if (auto id = message_id(parsed)) {
    if (!valid_id(*id)) return make_error("imdn.Message-ID must be 1 to 128 of A-Z a-z 0-9 . _ ~ @ + = - : /");
    return cpim;
  }
  bool declared = false;
  for (const CpimNamespace& ns : parsed.namespaces) {
    if (ns.prefix == "imdn") {
      if (ns.uri != kImdnNamespace) return make_error("the prefix 'imdn' is declared for another namespace");
      declared = true;
    }
  }
  std::string headers = fmt::format("{}imdn.Message-ID: {}\r\n",
                                    declared ? "" : "NS: imdn <urn:ietf:params:imdn>\r\n", new_message_id());
  // Before the first header: NS declarations apply to the lines after them.
  cpim.insert(cpim.begin(), headers.begin(), headers.end());
  return cpim;
}

MessageService::MessageService(uv_loop_t* loop, Node& node, MessageStore& store, const AccessLists& access,
                               const NodeConfig& config)
    : loop_(loop), node_(node), store_(store), access_(access), jitter_(std::random_device{}()) {
  reconfigure(config);
  timer_ = make_uv_handle<uv_timer_t>();
  uv_timer_init(loop, timer_.get());
  timer_->data = this;
  schedule_pass(std::chrono::milliseconds(0));  // what was queued before a restart
  idle_timer_ = make_uv_handle<uv_timer_t>();
  uv_timer_init(loop, idle_timer_.get());
  idle_timer_->data = this;
  totals_timer_ = make_uv_handle<uv_timer_t>();
  uv_timer_init(loop, totals_timer_.get());
  totals_timer_->data = this;
  store_.records(std::string(kCountersKind), [this, alive = alive_](auto records) {
    if (!*alive || !records) return;
    for (const auto& [domain, value] : *records) {
      unsigned long long in = 0, out = 0;
      if (std::sscanf(value.c_str(), "%llu %llu", &in, &out) == 2) {
        totals_[domain].first += in;
        totals_[domain].second += out;
      }
    }
  });
}

MessageService::~MessageService() {
  save_counters();  // queued to the store, which commits it before it closes
  *alive_ = false;
}

std::pair<std::uint64_t, std::uint64_t> MessageService::peer_totals(const std::string& domain) const {
  auto it = totals_.find(domain);
  return it == totals_.end() ? std::pair<std::uint64_t, std::uint64_t>{0, 0} : it->second;
}

// Counted in memory and written every few seconds: a counter is not worth a
// commit per message, and a crash loses at most those seconds of counting.
void MessageService::count(const std::string& domain, bool inbound) {
  if (totals_.size() >= kMaxCountedPeers && totals_.count(domain) == 0) return;
  auto& [in, out] = totals_[domain];
  ++(inbound ? in : out);
  dirty_totals_.insert(domain);
  if (!uv_is_active(reinterpret_cast<uv_handle_t*>(totals_timer_.get()))) {
    uv_timer_start(totals_timer_.get(), [](uv_timer_t* t) { static_cast<MessageService*>(t->data)->save_counters(); },
                   5000, 0);
  }
}

void MessageService::save_counters() {
  for (const std::string& domain : dirty_totals_) {
    const auto& [in, out] = totals_[domain];
    store_.put_record(std::string(kCountersKind), domain, fmt::format("{} {}", in, out), [](Status s) {
      if (!s) log_at(LogLevel::Warning, "store: per-peer counters not saved: {}", s.error().message);
    });
  }
  dirty_totals_.clear();
}

void MessageService::reconfigure(const NodeConfig& config) {
  users_.clear();
  for (const HostedDomain& d : config.federation.domains) {
    auto it = config.users.find(d.domain);
    // No `users` list: any local part (docs/CONFIG.md, [[domains]] users).
    users_[d.domain] = it == config.users.end() ? std::vector<std::string>{std::string(kAnyUser)} : it->second;
  }
  peers_ = config.peers;
  delivery_ = config.delivery;
}

bool MessageService::is_local_user(const std::string& user, const std::string& domain) const {
  auto it = users_.find(domain);
  if (it == users_.end()) return false;
  return std::any_of(it->second.begin(), it->second.end(),
                     [&](const std::string& u) { return u == kAnyUser || u == user; });
}

void MessageService::accept_inbound(const DeliveredMessage& m, DeliveryReply reply) {
  if (!access_.loaded()) {
    return reply(NackPayload{0, NackCode::TemporaryFailure, "the node is starting: its lists are not read yet"});
  }
  std::string id;
  if (auto given = message_id(m.message); given && valid_id(*given)) {
    id = *given;
  } else if (given) {
    return reply(NackPayload{0, NackCode::MalformedMessage, "imdn.Message-ID is not a printable token"});
  } else {
    // A message without an identity still gets one for replay: its digest.
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256(m.cpim.data(), m.cpim.size(), digest);
    id = "sha256:" + hex(digest, sizeof digest);
  }
  // Each recipient is a user here whose inbox lets the sender in, or is
  // refused; the others get their copy (docs/STORE.md, "Inbox").
  std::vector<InboxMessage> copies;
  std::vector<std::pair<std::string, std::string>> refused;  // (recipient URI, status for IMDN)
  std::optional<NackPayload> refusal;
  std::set<std::string> owners;
  const CpimAddress& from = m.message.from;
  for (const auto* list : {&m.message.to, &m.message.cc}) {
    for (const CpimAddress& to : *list) {
      if (users_.count(to.domain) == 0) continue;  // another domain's: its own node takes it
      std::string owner = to.user + "@" + to.domain;
      if (!owners.insert(owner).second) continue;
      if (!is_local_user(to.user, to.domain)) {
        refused.emplace_back(to.uri, "failed");
        if (!refusal || refusal->code != NackCode::UnknownRecipient) {
          refusal = NackPayload{0, NackCode::UnknownRecipient, fmt::format("{} is not a user here", to.uri)};
        }
        continue;
      }
      if (!access_.allowed(owner, AccessList::Inbox, from.user, from.domain)) {
        refused.emplace_back(to.uri, "forbidden");
        if (!refusal) {
          refusal = NackPayload{0, NackCode::NotAuthorized,
                                fmt::format("{} does not take messages from {}", to.uri, from.uri)};
        }
        continue;
      }
      copies.push_back({id, owner, from.uri, to.uri, m.session.peer_domain,
                        std::string(to_string(m.session.decision)), now_ms(), m.cpim});
    }
  }
  // Refusals are told back as notifications when asked for (RFC 5438):
  // only to a peer that proved its key (a notice goes to the sender's domain
  // and must not be reflected to a domain someone merely claimed), only for
  // a message with an identity of its own (a notice names it), only "failed"
  // for a user we do not have (a refusal by the owner's list is not told:
  // nothing is sent to a sender the owner keeps out), within a budget per
  // peer domain (docs/STORE.md, "Delivery notifications").
  if (wants_notification(m.message, "negative-delivery") && may_notify(m)) {
    for (const auto& [recipient, status] : refused) {
      if (status == "failed" && take_notice_budget(m.session.peer_domain)) {
        send_notice(m.message, id, recipient, status);
      }
    }
  }
  if (copies.empty()) {
    log_at(LogLevel::Info, "message {} from {} refused: {}", id, from.uri, refusal->text);
    return reply(*refusal);
  }
  std::string to = copies.front().to, decision(to_string(m.session.decision));
  std::size_t size = m.cpim.size();
  bool positive = wants_notification(m.message, "positive-delivery") && may_notify(m);
  auto original = std::make_shared<CpimMessage>(m.message);
  store_.accept_inbound(
      m.session.peer_domain, copies,
      [this, alive = alive_, reply, copies, to, decision, size, positive, original, id](Result<Acceptance> r) {
        const std::string& sender = original->from.uri;
        if (!r) {
          log_at(LogLevel::Error, "message {} -> {} not stored: {}", sender, to, r.error().message);
          return reply(NackPayload{0, NackCode::TemporaryFailure, "the store cannot take it now"});
        }
        // Addresses passed the strict CPIM reader: a restricted alphabet.
        log_at(LogLevel::Info, "message {} -> {} ({} bytes, sender domain {}){}", sender, to, size, decision,
               *r == Acceptance::Duplicate ? ": a replay, not stored again" : "");
        reply(std::nullopt);
        if (!*alive || *r != Acceptance::Stored) return;
        count(copies.front().peer_domain, true);
        announce(copies);
        if (positive) {
          for (const InboxMessage& copy : copies) {
            if (take_notice_budget(copy.peer_domain)) send_notice(*original, id, copy.to, "delivered");
          }
        }
      });
}

void MessageService::submit(std::vector<std::uint8_t> cpim,
                            std::function<void(std::variant<Submitted, SubmitError>)> done) {
  auto refuse = [&](Refusal why, std::string text) { done(SubmitError{why, std::move(text)}); };
  if (!access_.loaded()) return refuse(Refusal::Starting, "the node is starting: try again in a moment");
  Result<CpimMessage> parsed = parse_cpim(cpim);
  if (!parsed) return refuse(Refusal::BadMessage, "not a valid message/cpim: " + parsed.error().message);
  if (Status s = check_required(*parsed, imdn_header_names()); !s) return refuse(Refusal::BadMessage, s.error().message);
  const CpimAddress& from = parsed->from;
  if (!is_local_user(from.user, from.domain)) {
    return refuse(Refusal::NotLocalUser, fmt::format("{} is not a local user of this node", from.uri));
  }
  auto fixed = with_message_id(std::move(cpim), *parsed);
  if (!fixed) return refuse(Refusal::BadMessage, fixed.error().message);
  // A MESSAGE frame holds a 4-byte id and the bytes; one that a peer would
  // refuse as too large could never be delivered (docs/STORE.md, "Submission").
  if (std::size_t most = node_.settings().limits.max_frame_size - 4; fixed->size() > most) {
    return refuse(Refusal::BadMessage,
                  fmt::format("the message is {} bytes with its Message-ID; a MESSAGE frame carries at most {}",
                              fixed->size(), most));
  }
  Result<CpimMessage> final_form = parse_cpim(*fixed);
  if (!final_form) return refuse(Refusal::BadMessage, "not a valid message/cpim: " + final_form.error().message);
  std::string id = *message_id(*final_form);
  for (const auto* list : {&final_form->to, &final_form->cc}) {
    for (const CpimAddress& to : *list) {
      if (users_.count(to.domain) == 0) continue;
      if (!is_local_user(to.user, to.domain)) {
        return refuse(Refusal::UnknownRecipient, fmt::format("{} is not a user here", to.uri));
      }
      if (!access_.allowed(to.user + "@" + to.domain, AccessList::Inbox, from.user, from.domain)) {
        return refuse(Refusal::NotAuthorized, fmt::format("{} does not take messages from {}", to.uri, from.uri));
      }
    }
  }
  auto original = std::make_shared<CpimMessage>(*final_form);
  enqueue(id, *final_form, *fixed,
          [this, alive = alive_, id, original, done](Result<Acceptance> r, std::vector<InboxMessage> local) {
            if (!r) return done(SubmitError{Refusal::Store, r.error().message});
            done(Submitted{id, *r == Acceptance::Duplicate});
            if (!*alive || *r == Acceptance::Duplicate) return;
            if (wants_notification(*original, "positive-delivery")) {
              for (const InboxMessage& copy : local) send_notice(*original, id, copy.to, "delivered");
            }
          });
}

void MessageService::enqueue(const std::string& id, const CpimMessage& message, const std::vector<std::uint8_t>& cpim,
                             std::function<void(Result<Acceptance>, std::vector<InboxMessage>)> done) {
  UnixMs now = now_ms();
  const CpimAddress& from = message.from;
  std::vector<InboxMessage> local;
  std::map<std::string, OutboundMessage> remote;
  std::set<std::string> owners;
  for (const auto* list : {&message.to, &message.cc}) {
    for (const CpimAddress& to : *list) {
      if (users_.count(to.domain) != 0) {
        std::string owner = to.user + "@" + to.domain;
        if (is_local_user(to.user, to.domain) && owners.insert(owner).second) {
          local.push_back({id, owner, from.uri, to.uri, from.domain, "local", now, cpim});
        }
      } else if (remote.count(to.domain) == 0) {
        remote[to.domain] = {id, from.user + "@" + from.domain, to.domain, now,
                             now + std::chrono::duration_cast<std::chrono::milliseconds>(delivery_.lifetime).count(),
                             cpim};
      }
    }
  }
  std::vector<OutboundMessage> outbound;
  for (auto& [domain, m] : remote) outbound.push_back(std::move(m));
  store_.submit(from.domain, id, local, outbound, [this, alive = alive_, local, done](Result<Acceptance> r) {
    if (r && *alive && *r == Acceptance::Stored) {
      announce(local);
      schedule_pass(std::chrono::milliseconds(0));
    }
    done(std::move(r), local);
  });
}

bool MessageService::may_notify(const DeliveredMessage& m) const {
  return proved_key(m.session.decision) && message_id(m.message).has_value();
}

bool MessageService::take_notice_budget(const std::string& peer_domain) {
  UnixMs now = now_ms();
  if (notice_budget_.size() > 1000) {
    std::erase_if(notice_budget_, [&](const auto& e) { return now - e.second.first >= 60000; });
  }
  if (notice_budget_.size() > 1000 && notice_budget_.count(peer_domain) == 0) return false;
  auto& [window, used] = notice_budget_[peer_domain];
  if (now - window >= 60000) {
    window = now;
    used = 0;
  }
  return used++ < kNoticesPerMinute;
}

void MessageService::send_notice(const CpimMessage& original, const std::string& original_id,
                                 const std::string& recipient, std::string_view status) {
  std::string notice_id = new_message_id();
  std::vector<std::uint8_t> cpim = make_delivery_notification(original, original_id, recipient, status, notice_id);
  Result<CpimMessage> parsed = parse_cpim(cpim);
  if (!parsed) {  // our own bytes: a bug, not an input
    log_at(LogLevel::Error, "delivery notification for {} does not parse: {}", original_id, parsed.error().message);
    return;
  }
  enqueue(notice_id, *parsed, cpim, [notice_id, original_id, status = std::string(status)](Result<Acceptance> r, auto) {
    if (!r) {
      log_at(LogLevel::Error, "delivery notification {} ({}) for {} not queued: {}", notice_id, status, original_id,
             r.error().message);
    }
  });
}

void MessageService::announce(const std::vector<InboxMessage>& copies) {
  auto listeners = listeners_;  // a listener may stop listening while called
  for (const InboxMessage& m : copies) {
    for (auto& [id, listener] : listeners) listener(m);
  }
}

std::uint64_t MessageService::listen_inbox(InboxListener listener) {
  listeners_[next_listener_] = std::move(listener);
  return next_listener_++;
}

void MessageService::stop_listening(std::uint64_t id) { listeners_.erase(id); }

void MessageService::schedule_pass(std::chrono::milliseconds delay) {
  uv_timer_start(timer_.get(), [](uv_timer_t* t) { static_cast<MessageService*>(t->data)->pass(); },
                 static_cast<std::uint64_t>(std::max<std::int64_t>(0, delay.count())), 0);
}

// One pass over the due queue entries; then the timer is set for the next
// one due (at least 200 ms on: entries in flight or waiting on a connection
// are due but taken care of).
void MessageService::pass() {
  if (pass_running_) {
    pass_again_ = true;  // asked for while one runs: another at once after it
    return;
  }
  pass_running_ = true;
  pass_again_ = false;
  expire_unanswered();
  store_.due(now_ms(), 256, std::nullopt, [this, alive = alive_](Result<std::vector<QueueEntry>> due) {
    if (!*alive) return;
    if (!due) log_at(LogLevel::Error, "delivery: cannot read the queue: {}", due.error().message);
    if (due) {
      for (const QueueEntry& entry : *due) deliver(entry);
    }
    store_.next_due([this, alive](Result<std::optional<UnixMs>> next) {
      if (!*alive) return;
      pass_running_ = false;
      std::int64_t wait = 5000;
      if (next && next->has_value()) wait = std::clamp<std::int64_t>(**next - now_ms(), 200, 5000);
      if (pass_again_) wait = 0;
      schedule_pass(std::chrono::milliseconds(wait));
    });
  });
}

void MessageService::deliver(const QueueEntry& entry) {
  const OutboundMessage& m = entry.message;
  if (in_flight_.count({m.id, m.to_domain}) != 0) return;
  if (now_ms() >= m.expires) {
    return fail(entry, entry.last_error.empty() ? "not delivered within the delivery lifetime"
                                                : "not delivered within the delivery lifetime; last error: " +
                                                      entry.last_error);
  }
  // A window per domain: a backlog goes out as ACKs come back, never all at
  // once into a session's write queue (docs/STORE.md, "Budgets").
  if (unanswered_to(m.to_domain) >= kMaxUnansweredPerDomain) return;
  std::pair<std::string, std::string> route{domain_of(m.sender), m.to_domain};
  if (auto it = routes_.find(route); it != routes_.end()) return send_on(it->second, entry);
  if (connecting_.count(route) == 0) connect(route.first, route.second);
}

std::size_t MessageService::unanswered_to(const std::string& domain) const {
  return static_cast<std::size_t>(std::count_if(in_flight_.begin(), in_flight_.end(), [&](const auto& f) {
    return f.first.second == domain && !f.second.answered;
  }));
}

// A peer that keeps its session up (it answers PINGs) but never ACKs holds
// the messages sent to it: after kAckTimeout its session is closed, and what
// it held is tried again (docs/STORE.md, "Outbound queue and delivery").
void MessageService::expire_unanswered() {
  UnixMs now = now_ms();
  std::set<std::uint64_t> stuck;
  for (const auto& [key, f] : in_flight_) {
    if (!f.answered && now - f.sent >= kAckTimeout.count()) stuck.insert(f.session);
  }
  for (std::uint64_t session : stuck) {
    log_at(LogLevel::Warning, "delivery: no ACK on session {} for {} s; closing it, the messages go again", session,
           kAckTimeout.count() / 1000);
    node_.close_session(session, "no ACK in time");
  }
}

void MessageService::start_idle_timer() {
  if (uv_is_active(reinterpret_cast<uv_handle_t*>(idle_timer_.get()))) return;
  auto idle = std::chrono::duration_cast<std::chrono::milliseconds>(delivery_.idle_close).count();
  auto period = static_cast<std::uint64_t>(std::clamp<std::int64_t>(idle / 4, 250, 10000));
  uv_timer_start(idle_timer_.get(), [](uv_timer_t* t) { static_cast<MessageService*>(t->data)->close_idle(); },
                 period, period);
}

// docs/STORE.md, "Outbound queue and delivery": a session this service
// opened is closed once nothing was sent on it for idle_close_s, nothing
// waits for an ACK on it, and nobody else needs it (presence watches).
void MessageService::close_idle() {
  if (opened_.empty()) {
    uv_timer_stop(idle_timer_.get());
    return;
  }
  UnixMs now = now_ms();
  auto idle = std::chrono::duration_cast<std::chrono::milliseconds>(delivery_.idle_close).count();
  std::vector<std::pair<std::uint64_t, std::pair<std::string, std::string>>> closing;
  // A session of ours that another (a [[peers]] link's) replaced as the
  // route carries nothing: closed at once.
  std::set<std::uint64_t> routed;
  for (const auto& entry : routes_) routed.insert(entry.second);
  for (const auto& entry : opened_) {
    bool waiting = std::any_of(in_flight_.begin(), in_flight_.end(),
                               [&](const auto& f) { return f.second.session == entry.first; });
    if (routed.count(entry.first) == 0 && !waiting) closing.emplace_back(entry.first, std::make_pair("", "another session"));
  }
  for (const auto& [route, session] : routes_) {
    auto used = opened_.find(session);
    if (used == opened_.end()) continue;
    const std::string& to_domain = route.second;  // (clang 14 cannot capture a structured binding)
    bool waiting = std::any_of(in_flight_.begin(), in_flight_.end(),
                               [&](const auto& f) { return f.first.second == to_domain; });
    if (waiting) used->second = now;
    if (now - used->second < idle || (keep_open_ && keep_open_(route.first, route.second))) continue;
    closing.emplace_back(session, route);
  }
  for (const auto& [session, route] : closing) {
    log_at(LogLevel::Info, "delivery: closing the idle session {} to {} (nothing sent for {} s)", session,
           route.second, idle / 1000);
    node_.close_session(session, "idle: nothing to deliver");
  }
}

void MessageService::open_session(const std::string& local_domain, const std::string& to_domain) {
  std::pair<std::string, std::string> route{local_domain, to_domain};
  if (routes_.count(route) != 0 || connecting_.count(route) != 0) return;
  connect(local_domain, to_domain);
}

void MessageService::connect(const std::string& local_domain, const std::string& to_domain) {
  std::pair<std::string, std::string> route{local_domain, to_domain};
  connecting_.insert(route);
  auto done = [this, alive = alive_, route](Result<SessionInfo> r) {
    if (!*alive) return;
    connecting_.erase(route);
    std::string error = r ? std::string() : r.error().message;
    if (r) {
      routes_[route] = r->id;
      opened_[r->id] = now_ms();  // ours to close when idle
      start_idle_timer();
    }
    // Either way, the domain's entries move: sent now, or deferred.
    store_.due(now_ms(), 256, route.second, [this, alive, route, error](Result<std::vector<QueueEntry>> due) {
      if (!*alive || !due) return;
      for (const QueueEntry& entry : *due) {
        if (domain_of(entry.message.sender) != route.first) continue;
        if (error.empty()) {
          deliver(entry);
        } else if (in_flight_.count({entry.message.id, entry.message.to_domain}) == 0) {
          retry_later(entry, error);
        }
      }
    });
  };
  auto peer = std::find_if(peers_.begin(), peers_.end(), [&](const StaticPeer& p) { return p.domain == to_domain; });
  if (peer != peers_.end()) {
    node_.connect(local_domain, to_domain, peer->address, peer->port, done);
  } else {
    node_.connect_domain(local_domain, to_domain, done);
  }
}

void MessageService::send_on(std::uint64_t session, const QueueEntry& entry) {
  const OutboundMessage& m = entry.message;
  in_flight_[{m.id, m.to_domain}] = {session, now_ms(), false};
  if (auto used = opened_.find(session); used != opened_.end()) used->second = now_ms();
  auto alive = alive_;
  Status sent = node_.send_message(session, m.cpim, [this, alive, entry](Status r) {
    if (!*alive) return;
    const OutboundMessage& msg = entry.message;
    bool window_was_full = unanswered_to(msg.to_domain) >= kMaxUnansweredPerDomain;
    if (auto it = in_flight_.find({msg.id, msg.to_domain}); it != in_flight_.end()) it->second.answered = true;
    // A place in the domain's window is free: whatever waits goes now.
    if (window_was_full) schedule_pass(std::chrono::milliseconds(0));
    if (r) {
      count(msg.to_domain, false);
      // Still in flight until the mark is committed: a pass that reads the
      // entry as queued meanwhile must not send it a second time.
      store_.mark_delivered(msg.id, msg.to_domain, now_ms(),
                            [this, alive, id = msg.id, to = msg.to_domain](Status s) {
                              if (*alive) {
                                in_flight_.erase({id, to});
                                // Its place in the window is free: the next
                                // pass goes now, not at the pass timer's pace.
                                schedule_pass(std::chrono::milliseconds(0));
                              }
                              if (!s) {
                                log_at(LogLevel::Error, "delivery: {} to {} ACKed but not marked: {}", id, to,
                                       s.error().message);
                              }
                            });
      return;
    }
    in_flight_.erase({msg.id, msg.to_domain});
    const std::string& text = r.error().message;
    // NACK RateLimited (4) and TemporaryFailure (7), and a session that
    // closed before answering, are tried again; any other NACK is final.
    bool final_refusal = text.starts_with("NACK ") && !text.starts_with("NACK 4:") && !text.starts_with("NACK 7:");
    if (final_refusal) return fail(entry, fmt::format("refused by {}: {}", msg.to_domain, text));
    retry_later(entry, text);
  });
  if (!sent) {
    in_flight_.erase({m.id, m.to_domain});
    std::erase_if(routes_, [&](const auto& r) { return r.second == session; });
    retry_later(entry, sent.error().message);
  }
}

std::chrono::milliseconds MessageService::backoff(int attempts) {
  using std::chrono::milliseconds;
  auto first = std::chrono::duration_cast<milliseconds>(delivery_.retry_first);
  auto cap = std::chrono::duration_cast<milliseconds>(delivery_.retry_max);
  milliseconds base = first;
  for (int i = 0; i < attempts && base < cap; ++i) base *= 2;
  base = std::min(base, cap);
  // Jitter: between half and all of it, so that retries of many messages
  // (and of many nodes) spread out.
  std::uniform_int_distribution<std::int64_t> spread(base.count() / 2, base.count());
  return milliseconds(spread(jitter_));
}

void MessageService::retry_later(const QueueEntry& entry, const std::string& error) {
  UnixMs next = now_ms() + backoff(entry.attempts).count();
  store_.defer(entry.message.id, entry.message.to_domain, next, error, [id = entry.message.id](Status s) {
    if (!s) log_at(LogLevel::Error, "delivery: cannot defer {}: {}", id, s.error().message);
  });
}

void MessageService::fail(const QueueEntry& entry, const std::string& error) {
  const OutboundMessage& m = entry.message;
  std::string local_domain = domain_of(m.sender);
  std::string notice_id = new_message_id();
  std::string reason = escape_text(error);
  std::string text = fmt::format(
      "From: <im:postmaster@{0}>\r\nTo: <im:{1}>\r\nNS: imdn <urn:ietf:params:imdn>\r\nimdn.Message-ID: {2}\r\n"
      "Subject: Delivery failed\r\n\r\nContent-Type: text/plain;charset=utf-8\r\n\r\n"
      "Your message {3} to {4} was not delivered: {5}\r\n",
      local_domain, m.sender, notice_id, m.id, m.to_domain, reason);
  InboxMessage notice{notice_id, m.sender, "im:postmaster@" + local_domain, "im:" + m.sender, local_domain, "local",
                      now_ms(), bytes_of(text)};
  // A delivery notification that could not be delivered is dropped without
  // a notice: its sender is the node, on behalf of a recipient.
  if (is_notice(m.cpim)) notice.owner.clear();
  log_at(LogLevel::Warning, "delivery: gave up {} to {}: {}", m.id, m.to_domain, reason);
  store_.give_up(m.id, m.to_domain, now_ms(), error, notice, [this, alive = alive_, notice](Status s) {
    if (!s) return log_at(LogLevel::Error, "delivery: cannot record a failure: {}", s.error().message);
    if (*alive && !notice.owner.empty()) announce({notice});
  });
}

void MessageService::session_up(const SessionInfo& session) {
  if (session.direction != Direction::Outbound) return;
  routes_[{session.local_domain, session.peer_domain}] = session.id;
  // Flushed at once: whatever the backoff said.
  store_.due(now_ms(), 256, session.peer_domain, [this, alive = alive_, session](Result<std::vector<QueueEntry>> due) {
    if (!*alive || !due) return;
    for (const QueueEntry& entry : *due) {
      if (domain_of(entry.message.sender) == session.local_domain) deliver(entry);
    }
  });
}

void MessageService::session_closed(const SessionInfo& session) {
  std::erase_if(routes_, [&](const auto& r) { return r.second == session.id; });
  opened_.erase(session.id);
}

}  // namespace keyfed
