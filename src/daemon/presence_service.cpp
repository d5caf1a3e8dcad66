#include "daemon/presence_service.h"

#include <algorithm>
#include <limits>

#include <nlohmann/json.hpp>

#include "common/log.h"
#include "common/xml_text.h"

namespace keyfed {

namespace {

constexpr std::string_view kPresenceKind = "presence";       // local presentity -> {document, updated}
constexpr std::string_view kSeenKind = "presence-seen";      // remote presentity -> {document, updated}
constexpr std::string_view kWatchKind = "watch";             // "watcher presentity" -> "1"

UnixMs now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string xml_unescape(std::string_view text) {
  static const std::pair<std::string_view, char> kEntities[] = {
      {"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
  std::string out;
  for (std::size_t i = 0; i < text.size();) {
    bool matched = false;
    for (const auto& [entity, c] : kEntities) {
      if (text.substr(i).starts_with(entity)) {
        out += c;
        i += entity.size();
        matched = true;
        break;
      }
    }
    if (!matched) out += text[i++];
  }
  return out;
}

std::string domain_of_uri(const std::string& uri) {
  auto at = uri.rfind('@');
  return at == std::string::npos ? std::string() : uri.substr(at + 1);
}

// "pres:alice@alpha.test" -> "alice@alpha.test"
std::string owner_of(const std::string& presentity) {
  return presentity.starts_with("pres:") ? presentity.substr(5) : presentity;
}

std::string seen_value(const PresenceService::Seen& seen) {
  return nlohmann::json{{"document", seen.document}, {"updated", seen.updated}}
      .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::optional<PresenceService::Seen> parse_seen(const std::string& value) {
  nlohmann::json j = nlohmann::json::parse(value, nullptr, false);
  if (!j.is_object() || !j.contains("document") || !j["document"].is_string() || !j.contains("updated") ||
      !j["updated"].is_number_integer()) {
    return std::nullopt;
  }
  return PresenceService::Seen{j["document"].get<std::string>(), j["updated"].get<UnixMs>()};
}

}  // namespace

std::string make_pidf(const std::string& presentity, bool open, const std::string& note) {
  std::string out = fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"{}\">\n"
      "  <tuple id=\"keyfed\">\n"
      "    <status><basic>{}</basic></status>\n",
      xml_text(presentity), open ? "open" : "closed");
  if (!note.empty()) out += fmt::format("    <note>{}</note>\n", xml_text(note));
  out += "  </tuple>\n</presence>\n";
  return out;
}

PresenceSummary summarize_pidf(const std::string& document) {
  PresenceSummary out;
  auto between = [&](std::string_view open_tag, std::string_view close_tag) -> std::optional<std::string> {
    auto start = document.find(open_tag);
    if (start == std::string::npos) return std::nullopt;
    start = document.find('>', start);
    if (start == std::string::npos) return std::nullopt;
    auto end = document.find(close_tag, start + 1);
    if (end == std::string::npos) return std::nullopt;
    return document.substr(start + 1, end - start - 1);
  };
  if (auto basic = between("<basic", "</basic>"); basic && (*basic == "open" || *basic == "closed")) out.basic = *basic;
  if (auto note = between("<note", "</note>")) out.note = xml_unescape(*note);
  return out;
}

PresenceService::PresenceService(uv_loop_t* loop, Node& node, MessageStore& store, MessageService& messages,
                                 AccessLists& access, const NodeConfig& config)
    : loop_(loop), node_(node), store_(store), messages_(messages), access_(access) {
  reconfigure(config);
  timer_ = make_uv_handle<uv_timer_t>();
  uv_timer_init(loop, timer_.get());
  timer_->data = this;
}

PresenceService::~PresenceService() { *alive_ = false; }

void PresenceService::reconfigure(const NodeConfig& config) {
  domains_.clear();
  for (const HostedDomain& d : config.federation.domains) domains_.insert(d.domain);
  retry_first_ = config.delivery.retry_first;
  retry_max_ = config.delivery.retry_max;
  access_.set_defaults(config.access);
  // A peer holds at most this many of our subscriptions on one session.
  max_watches_per_domain_ = config.federation.limits.max_subscriptions_per_session;
}

bool PresenceService::hosted(const std::string& domain) const { return domains_.count(domain) != 0; }

void PresenceService::load(std::function<void(Status)> done) {
  auto alive = alive_;
  // Four reads, one after another; the lists first (they gate everything).
  store_.records(std::string(AccessLists::kRecordKind), [this, alive, done](auto acl) {
    if (!*alive) return;
    if (!acl) return done(acl.error());
    for (const std::string& e : access_.load(*acl)) log_at(LogLevel::Warning, "store: {}", e);
    store_.records(std::string(kPresenceKind), [this, alive, done](auto presence) {
      if (!*alive) return;
      if (!presence) return done(presence.error());
      for (const auto& [presentity, value] : *presence) {
        if (auto seen = parse_seen(value)) {
          published_[presentity] = *seen;
          node_.set_presence(presentity, seen->document);
        }
      }
      store_.records(std::string(kSeenKind), [this, alive, done](auto seen_records) {
        if (!*alive) return;
        if (!seen_records) return done(seen_records.error());
        for (const auto& [presentity, value] : *seen_records) {
          if (auto seen = parse_seen(value)) seen_[presentity] = *seen;
        }
        store_.records(std::string(kWatchKind), [this, alive, done](auto watches) {
          if (!*alive) return;
          if (!watches) return done(watches.error());
          for (const auto& [key, value] : *watches) {
            auto space = key.find(' ');
            if (space != std::string::npos) watches_.emplace(key.substr(0, space), key.substr(space + 1));
          }
          ready_ = true;
          // Peers' watchers that subscribed while the lists were being read
          // got no NOTIFY (nobody is authorized before): the authorized ones
          // get the current state now.
          for (const auto& [presentity, seen] : published_) {
            for (const auto& [session, watcher] : node_.watchers(presentity)) {
              if (may_watch(watcher, presentity)) (void)node_.notify(session, watcher, presentity, seen.document);
            }
          }
          // Sessions that came up while loading get their subscriptions now.
          for (const auto& s : node_.sessions()) {
            if (s.established) session_up(s);
          }
          reconnect_pass();
          done(ok_status());
        });
      });
    });
  });
}

Status PresenceService::check_note(const std::string& note) const {
  if (note.size() > kMaxPresenceNote) return make_error("the note is longer than {} bytes", kMaxPresenceNote);
  if (escape_text(note) != note) return make_error("the note holds control characters or is not UTF-8");
  return ok_status();
}

void PresenceService::publish(const std::string& user, bool open, const std::string& note, Done done) {
  if (Status s = check_note(note); !s) return done(s);
  std::string presentity = "pres:" + user;
  Seen seen{make_pidf(presentity, open, note), now_ms()};
  store_.put_record(std::string(kPresenceKind), presentity, seen_value(seen),
                    [this, alive = alive_, presentity, seen, done](Status s) {
                      if (!s) return done(s);
                      if (*alive) {
                        published_[presentity] = seen;
                        node_.set_presence(presentity, seen.document);  // authorized watchers only
                      }
                      done(ok_status());
                    });
}

std::optional<PresenceService::Seen> PresenceService::get(const std::string& presentity) const {
  const auto& book = hosted(domain_of_uri(presentity)) ? published_ : seen_;
  auto it = book.find(presentity);
  if (it == book.end()) return std::nullopt;
  return it->second;
}

bool PresenceService::needs_session(const std::string& local, const std::string& peer) const {
  return std::any_of(watches_.begin(), watches_.end(), [&](const auto& w) {
    return domain_of_uri(w.first) == local && domain_of_uri(w.second) == peer;
  });
}

bool PresenceService::may_watch(const std::string& watcher, const std::string& presentity) const {
  if (!ready_) return false;
  auto w = parse_user_uri(watcher, UriScheme::Pres);
  if (!w) return false;
  return access_.allowed(owner_of(presentity), AccessList::Presence, w->user, w->domain);
}

Status PresenceService::check_watch(const std::string& watcher, const std::string& presentity) const {
  if (watches_.count({watcher, presentity}) != 0) return ok_status();
  if (watches_.size() >= kMaxWatches) {
    return make_error("the node's users watch {} presentities already (the most it keeps)", kMaxWatches);
  }
  std::string local = domain_of_uri(watcher), remote = domain_of_uri(presentity);
  auto same_route = std::count_if(watches_.begin(), watches_.end(), [&](const auto& w) {
    return domain_of_uri(w.first) == local && domain_of_uri(w.second) == remote;
  });
  if (!hosted(remote) && static_cast<std::size_t>(same_route) >= max_watches_per_domain_) {
    return make_error("{} watches {} presentities of {} already (the most it keeps: max_subscriptions_per_session)",
                      local, same_route, remote);
  }
  return ok_status();
}

void PresenceService::watch(const std::string& watcher, const std::string& presentity, Done done) {
  if (watches_.count({watcher, presentity}) != 0) return done(ok_status());
  if (Status s = check_watch(watcher, presentity); !s) return done(s);
  std::string local = domain_of_uri(watcher), remote = domain_of_uri(presentity);
  store_.put_record(std::string(kWatchKind), watcher + " " + presentity, "1",
                    [this, alive = alive_, watcher, presentity, local, remote, done](Status s) {
                      if (!s) return done(s);
                      if (!*alive) return done(ok_status());
                      watches_.emplace(watcher, presentity);
                      if (!hosted(remote)) {
                        auto it = sessions_.find({local, remote});
                        if (it != sessions_.end() && !it->second.empty()) {
                          (void)node_.subscribe(*it->second.begin(), watcher, presentity);
                        } else {
                          reconnect_[{local, remote}] = {0, std::chrono::milliseconds(0)};
                          reconnect_pass();
                        }
                      }
                      done(ok_status());
                    });
}

void PresenceService::unwatch(const std::string& watcher, const std::string& presentity, Done done) {
  store_.put_record(std::string(kWatchKind), watcher + " " + presentity, "",
                    [this, alive = alive_, watcher, presentity, done](Status s) {
                      if (!s) return done(s);
                      if (!*alive) return done(ok_status());
                      watches_.erase({watcher, presentity});
                      auto it = sessions_.find({domain_of_uri(watcher), domain_of_uri(presentity)});
                      if (it != sessions_.end()) {
                        for (std::uint64_t id : it->second) (void)node_.unsubscribe(id, watcher, presentity);
                      }
                      done(ok_status());
                    });
}

void PresenceService::change_access(const std::string& owner, AccessList list, const std::string& pattern,
                                    std::optional<AccessVerdict> verdict, Done done) {
  store_.put_record(std::string(AccessLists::kRecordKind), AccessLists::record_key(owner, list, pattern),
                    AccessLists::record_value(verdict),
                    [this, alive = alive_, owner, list, pattern, verdict, done](Status s) {
                      if (!s) return done(s);
                      if (!*alive) return done(ok_status());
                      // Who may see the owner, just before and just after the
                      // change (on the loop: nobody subscribes in between).
                      std::string presentity = "pres:" + owner;
                      auto remote = node_.watchers(presentity);
                      std::vector<bool> before;
                      for (const auto& [session, watcher] : remote) before.push_back(may_watch(watcher, presentity));
                      access_.set(owner, list, pattern, verdict);
                      if (list == AccessList::Presence) {
                        auto current = published_.find(presentity);
                        for (std::size_t i = 0; i < remote.size(); ++i) {
                          const auto& [session, watcher] = remote[i];
                          bool now = may_watch(watcher, presentity);
                          if (before[i] && !now) {
                            // Withdrawn: one last NOTIFY, closed, then nothing.
                            (void)node_.notify(session, watcher, presentity, make_pidf(presentity, false, ""));
                            log_at(LogLevel::Info, "presence: {} may no longer see {}", watcher, presentity);
                          } else if (!before[i] && now && current != published_.end()) {
                            (void)node_.notify(session, watcher, presentity, current->second.document);
                          }
                        }
                      }
                      done(ok_status());
                    });
}

std::vector<PresenceService::Watcher> PresenceService::watchers(const std::string& owner) const {
  std::string presentity = "pres:" + owner;
  std::vector<Watcher> out;
  std::set<std::string> listed;
  for (const auto& [watcher, watched] : watches_) {
    if (watched == presentity && listed.insert(watcher).second) {
      out.push_back({watcher, false, may_watch(watcher, presentity)});
    }
  }
  for (const auto& [session, watcher] : node_.watchers(presentity)) {
    if (listed.insert(watcher).second) out.push_back({watcher, true, may_watch(watcher, presentity)});
  }
  return out;
}

std::vector<std::string> PresenceService::watching(const std::string& watcher) const {
  std::vector<std::string> out;
  for (const auto& [w, presentity] : watches_) {
    if (w == watcher) out.push_back(presentity);
  }
  return out;
}

void PresenceService::session_up(const SessionInfo& session) {
  sessions_[{session.local_domain, session.peer_domain}].insert(session.id);
  // The backoff is kept: a peer that accepts and then drops sessions at
  // once is not tried every retry_first_s (reconnect_pass forgets it once
  // no watch needs the domain).
  if (auto it = reconnect_.find({session.local_domain, session.peer_domain}); it != reconnect_.end()) {
    it->second.first = std::numeric_limits<UnixMs>::max();
  }
  if (ready_) subscribe_all(session);
}

void PresenceService::subscribe_all(const SessionInfo& session) {
  for (const auto& [watcher, presentity] : watches_) {
    if (domain_of_uri(watcher) == session.local_domain && domain_of_uri(presentity) == session.peer_domain) {
      (void)node_.subscribe(session.id, watcher, presentity);
    }
  }
}

void PresenceService::session_closed(const SessionInfo& session) {
  auto key = std::make_pair(session.local_domain, session.peer_domain);
  auto it = sessions_.find(key);
  if (it == sessions_.end()) return;
  it->second.erase(session.id);
  if (!it->second.empty()) return;
  sessions_.erase(it);
  // Our watchers still need that domain: a new session, after a backoff.
  bool needed = std::any_of(watches_.begin(), watches_.end(), [&](const auto& w) {
    return domain_of_uri(w.first) == key.first && domain_of_uri(w.second) == key.second;
  });
  if (!needed || stopped_) return;
  auto first = std::chrono::duration_cast<std::chrono::milliseconds>(retry_first_);
  auto& [at, backoff] = reconnect_[key];
  backoff = std::max(backoff, first);
  at = now_ms() + backoff.count();
  reconnect_pass();
}

// Opens a session to every remote domain our watchers need and have none
// with, each on its own backoff (docs/STORE.md, "Presence").
void PresenceService::reconnect_pass() {
  if (!ready_ || stopped_) return;
  // Domains no watch needs any more (unwatched) are not tried again.
  std::erase_if(reconnect_, [&](const auto& entry) {
    return std::none_of(watches_.begin(), watches_.end(), [&](const auto& w) {
      return domain_of_uri(w.first) == entry.first.first && domain_of_uri(w.second) == entry.first.second;
    });
  });
  for (const auto& [watcher, presentity] : watches_) {
    std::pair<std::string, std::string> key{domain_of_uri(watcher), domain_of_uri(presentity)};
    if (hosted(key.second) || sessions_.count(key) != 0 || reconnect_.count(key) != 0) continue;
    reconnect_[key] = {0, std::chrono::milliseconds(0)};
  }
  UnixMs now = now_ms();
  std::optional<UnixMs> next;
  auto cap = std::chrono::duration_cast<std::chrono::milliseconds>(retry_max_);
  auto first = std::chrono::duration_cast<std::chrono::milliseconds>(retry_first_);
  for (auto& [key, when] : reconnect_) {
    auto& [at, backoff] = when;
    if (sessions_.count(key) != 0) continue;  // up: nothing to open
    if (at <= now) {
      messages_.open_session(key.first, key.second);
      backoff = std::min(cap, backoff.count() == 0 ? first : backoff * 2);
      at = now + backoff.count();
    }
    next = next ? std::min(*next, at) : at;
  }
  if (next) {
    uv_timer_start(timer_.get(), [](uv_timer_t* t) { static_cast<PresenceService*>(t->data)->reconnect_pass(); },
                   static_cast<std::uint64_t>(std::max<UnixMs>(100, *next - now)), 0);
  }
}

void PresenceService::notify_received(const SessionInfo& session, const NotifyPayload& notify) {
  // Only what one of our users asked for is kept: a peer cannot fill the
  // store with presentities nobody watches.
  if (watches_.count({notify.watcher, notify.presentity}) == 0) {
    log_at(LogLevel::Debug, "presence: NOTIFY of {} for {} from {}: not watched, dropped", untrusted(notify.presentity),
           untrusted(notify.watcher), session.peer_domain);
    return;
  }
  if (notify.document.size() > kMaxRemotePresence) {
    log_at(LogLevel::Warning, "presence: NOTIFY of {} from {}: {} bytes, more than {} kept; dropped",
           untrusted(notify.presentity), session.peer_domain, notify.document.size(), kMaxRemotePresence);
    return;
  }
  Seen seen{notify.document, now_ms()};
  seen_[notify.presentity] = seen;
  store_.put_record(std::string(kSeenKind), notify.presentity, seen_value(seen), [](Status s) {
    if (!s) log_at(LogLevel::Error, "presence: cannot keep a NOTIFY: {}", s.error().message);
  });
}

}  // namespace keyfed
