// Presence as the federation core keeps it, in memory: the documents of
// hosted presentities, and which watcher on which peer session watches which
// presentity (docs/PROTOCOL.md §5). Subscriptions per session are bounded
// (docs/SECURITY.md, "Budgets"), and a change reaches exactly the sessions
// watching the presentity, without walking the others.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/result.h"

namespace keyfed {

class PresenceBook {
 public:
  PresenceBook(std::size_t max_per_session, std::size_t max_total)
      : max_per_session_(max_per_session), max_total_(max_total) {}

  /// Adds a subscription; an error when the session, or the book, already
  /// holds its maximum.
  /// Subscribing twice is not an error and counts once.
  Status subscribe(std::uint64_t session, const std::string& watcher, const std::string& presentity);
  void unsubscribe(std::uint64_t session, const std::string& watcher, const std::string& presentity);
  /// Forgets every subscription of a session that closed.
  void drop_session(std::uint64_t session);

  /// Sets a presentity's document.
  void publish(const std::string& presentity, std::string document);
  /// Who watches `presentity`: (session, watcher) pairs.
  std::vector<std::pair<std::uint64_t, std::string>> watchers(const std::string& presentity) const;
  /// The current document, or empty when none was published.
  const std::string& document(const std::string& presentity) const;

  std::size_t subscriptions_of(std::uint64_t session) const;
  std::size_t subscriptions() const { return total_; }
  void set_limits(std::size_t max_per_session, std::size_t max_total) {
    max_per_session_ = max_per_session;
    max_total_ = max_total;
  }

 private:
  std::size_t max_per_session_;
  std::size_t max_total_;
  std::size_t total_ = 0;
  std::map<std::string, std::string> documents_;
  // presentity -> (session, watcher)
  std::unordered_map<std::string, std::set<std::pair<std::uint64_t, std::string>>> watching_;
  // session -> (watcher, presentity)
  std::unordered_map<std::uint64_t, std::set<std::pair<std::string, std::string>>> by_session_;
};

}  // namespace keyfed
