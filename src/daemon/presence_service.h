// Presence for the node's users (docs/STORE.md, "Presence"): a local user
// publishes a PIDF document (RFC 3863); watchers, local or of other domains,
// see it only while the user's presence list allows them (access_lists.h);
// a watcher whose authorization is withdrawn gets one final "closed" NOTIFY
// and nothing after. A local user may watch a remote presentity: the
// subscription is kept in the store and sent again over every new session
// to that domain, so it survives reconnects and restarts of either node;
// what that domain last NOTIFYed is kept too.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <uv.h>

#include "common/result.h"
#include "common/uv_handle.h"
#include "daemon/access_lists.h"
#include "daemon/message_service.h"
#include "federation/node.h"
#include "store/store.h"

namespace keyfed {

/// A PIDF document (RFC 3863) for `presentity` ("pres:alice@alpha.test"):
/// one tuple with basic status open or closed, and the note if not empty
/// (XML-escaped).
std::string make_pidf(const std::string& presentity, bool open, const std::string& note);

/// What a PIDF document says, read leniently for display (the document is
/// kept and shown verbatim too): "open", "closed" or empty; the first note.
struct PresenceSummary {
  std::string basic;
  std::string note;
};
PresenceSummary summarize_pidf(const std::string& document);

/// The longest note a user may publish, in bytes.
inline constexpr std::size_t kMaxPresenceNote = 1024;
/// The largest document from a peer that is kept (docs/SECURITY.md §3).
inline constexpr std::size_t kMaxRemotePresence = 16 * 1024;
/// At most this many remote presentities a node's users watch in all.
inline constexpr std::size_t kMaxWatches = 10000;

class PresenceService {
 public:
  PresenceService(uv_loop_t* loop, Node& node, MessageStore& store, MessageService& messages, AccessLists& access,
                  const NodeConfig& config);
  ~PresenceService();
  PresenceService(const PresenceService&) = delete;
  PresenceService& operator=(const PresenceService&) = delete;

  /// Reads presence, watches, lists and what peers last NOTIFYed from the
  /// store. Until it has, watchers are not authorized and inbound messages
  /// wait (ready()).
  void load(std::function<void(Status)> done);
  bool ready() const { return ready_; }
  /// The node is stopping: no more sessions are opened.
  void stop() { stopped_ = true; }
  void reconfigure(const NodeConfig& config);

  using Done = std::function<void(Status)>;
  /// Whether a note may be published / a watch taken (budgets, docs/STORE.md
  /// "Presence"): the refusals that are the requester's, not the store's.
  Status check_note(const std::string& note) const;
  Status check_watch(const std::string& watcher, const std::string& presentity) const;

  /// `user` is "alice@alpha.test", a local user.
  void publish(const std::string& user, bool open, const std::string& note, Done done);
  struct Seen {
    std::string document;
    UnixMs updated = 0;
  };
  /// A local presentity's document, or what a remote one's domain last
  /// NOTIFYed to us.
  std::optional<Seen> get(const std::string& presentity) const;

  /// `watcher` (a local user, pres: URI) watches / stops watching `presentity`.
  void watch(const std::string& watcher, const std::string& presentity, Done done);
  void unwatch(const std::string& watcher, const std::string& presentity, Done done);

  /// Sets or removes an entry of `owner`'s list; watchers who lose (or gain)
  /// the right to see `owner` are told at once.
  void change_access(const std::string& owner, AccessList list, const std::string& pattern,
                     std::optional<AccessVerdict> verdict, Done done);

  struct Watcher {
    std::string uri;
    bool remote = false;
    bool authorized = false;
  };
  /// Who watches `owner` ("alice@alpha.test"): local watches and peers'
  /// live subscriptions.
  std::vector<Watcher> watchers(const std::string& owner) const;
  /// What `watcher` (local) watches.
  std::vector<std::string> watching(const std::string& watcher) const;

  /// Does a watch of ours need a session from `local` to `peer`?
  bool needs_session(const std::string& local, const std::string& peer) const;
  /// For the node: may `watcher` see `presentity` now?
  bool may_watch(const std::string& watcher, const std::string& presentity) const;
  void session_up(const SessionInfo& session);
  void session_closed(const SessionInfo& session);
  void notify_received(const SessionInfo& session, const NotifyPayload& notify);

 private:
  void subscribe_all(const SessionInfo& session);
  void reconnect_pass();
  bool hosted(const std::string& domain) const;

  uv_loop_t* loop_;
  Node& node_;
  MessageStore& store_;
  MessageService& messages_;
  AccessLists& access_;
  std::set<std::string> domains_;
  std::chrono::seconds retry_first_{2};
  std::chrono::seconds retry_max_{300};
  bool ready_ = false;
  bool stopped_ = false;
  std::size_t max_watches_per_domain_ = 1000;
  std::map<std::string, Seen> published_;  ///< local presentities
  std::map<std::string, Seen> seen_;       ///< remote presentities: their last NOTIFY
  std::set<std::pair<std::string, std::string>> watches_;  ///< (watcher, presentity), pres: URIs
  /// Established sessions by (local domain, peer domain).
  std::map<std::pair<std::string, std::string>, std::set<std::uint64_t>> sessions_;
  /// Remote domains our watchers need a session with: when to try next, and the backoff.
  std::map<std::pair<std::string, std::string>, std::pair<UnixMs, std::chrono::milliseconds>> reconnect_;
  UvHandle<uv_timer_t> timer_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace keyfed
