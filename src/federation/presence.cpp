#include "federation/presence.h"

namespace keyfed {

Status PresenceBook::subscribe(std::uint64_t session, const std::string& watcher, const std::string& presentity) {
  auto& held = by_session_[session];
  if (held.contains({watcher, presentity})) return ok_status();
  if (held.size() >= max_per_session_ || total_ >= max_total_) {
    bool session_full = held.size() >= max_per_session_;
    if (held.empty()) by_session_.erase(session);
    if (session_full) {
      return make_error("the session already holds {} subscriptions (max_subscriptions_per_session)",
                        max_per_session_);
    }
    return make_error("the node holds {} subscriptions (max_subscriptions)", max_total_);
  }
  held.emplace(watcher, presentity);
  ++total_;
  watching_[presentity].emplace(session, watcher);
  return ok_status();
}

void PresenceBook::unsubscribe(std::uint64_t session, const std::string& watcher, const std::string& presentity) {
  auto held = by_session_.find(session);
  if (held == by_session_.end() || held->second.erase({watcher, presentity}) == 0) return;
  --total_;
  if (held->second.empty()) by_session_.erase(held);
  auto sessions = watching_.find(presentity);
  if (sessions == watching_.end()) return;
  sessions->second.erase({session, watcher});
  if (sessions->second.empty()) watching_.erase(sessions);
}

void PresenceBook::drop_session(std::uint64_t session) {
  auto held = by_session_.find(session);
  if (held == by_session_.end()) return;
  total_ -= held->second.size();
  for (const auto& [watcher, presentity] : held->second) {
    auto sessions = watching_.find(presentity);
    if (sessions == watching_.end()) continue;
    sessions->second.erase({session, watcher});
    if (sessions->second.empty()) watching_.erase(sessions);
  }
  by_session_.erase(held);
}

void PresenceBook::publish(const std::string& presentity, std::string document) {
  documents_[presentity] = std::move(document);
}

std::vector<std::pair<std::uint64_t, std::string>> PresenceBook::watchers(const std::string& presentity) const {
  auto it = watching_.find(presentity);
  if (it == watching_.end()) return {};
  return {it->second.begin(), it->second.end()};
}

const std::string& PresenceBook::document(const std::string& presentity) const {
  static const std::string kNone;
  auto it = documents_.find(presentity);
  return it == documents_.end() ? kNone : it->second;
}

std::size_t PresenceBook::subscriptions_of(std::uint64_t session) const {
  auto it = by_session_.find(session);
  return it == by_session_.end() ? 0 : it->second.size();
}

}  // namespace keyfed
