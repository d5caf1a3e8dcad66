// Messages for the node's users (docs/STORE.md): a MESSAGE from a peer is
// committed to its recipients' inboxes before it is ACKed; a message a local
// user submits is committed to the outbound queue before the submitter hears
// "accepted", then delivered to each destination domain over a session
// opened on demand, retried with backoff and jitter while the domain cannot
// take it, marked delivered only by the peer's ACK, and given up after the
// delivery lifetime with a failure notice in the sender's inbox.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include <uv.h>

#include "common/result.h"
#include "common/uv_handle.h"
#include "config/node_config.h"
#include "daemon/access_lists.h"
#include "federation/node.h"
#include "store/store.h"

namespace keyfed {

/// The Message-ID of a message (RFC 5438 imdn.Message-ID, without the angle
/// brackets), if it has one.
std::optional<std::string> message_id(const CpimMessage& message);

/// Gives a submitted message its identity: unchanged if it has an
/// imdn.Message-ID already, else with "NS: imdn <urn:ietf:params:imdn>" and a
/// new imdn.Message-ID put before its first header. From then on its bytes
/// are fixed.
Result<std::vector<std::uint8_t>> with_message_id(std::vector<std::uint8_t> cpim, const CpimMessage& parsed);

/// RFC 5438 §7.1.3: does the message's imdn.Disposition-Notification ask
/// for `kind` ("positive-delivery", "negative-delivery")?
bool wants_notification(const CpimMessage& message, std::string_view kind);

/// The delivery notification (RFC 5438 §7.2.1.1, message/imdn+xml) that
/// `recipient` (an im: URI) sends back to the sender of `original` (whose
/// Message-ID is `original_id`): `status` is "delivered", "failed" or
/// "forbidden". Its own Message-ID is `id`; it asks for no notification.
std::vector<std::uint8_t> make_delivery_notification(const CpimMessage& original, const std::string& original_id,
                                                      const std::string& recipient, std::string_view status,
                                                      const std::string& id);

class MessageService {
 public:
  /// `access` (the inbox lists) must outlive the service; until it is
  /// loaded, inbound messages are answered TemporaryFailure.
  MessageService(uv_loop_t* loop, Node& node, MessageStore& store, const AccessLists& access,
                 const NodeConfig& config);
  ~MessageService();
  MessageService(const MessageService&) = delete;
  MessageService& operator=(const MessageService&) = delete;

  void reconfigure(const NodeConfig& config);

  /// A MESSAGE that passed sender binding; `reply` ACKs once it is committed.
  void accept_inbound(const DeliveredMessage& message, DeliveryReply reply);

  /// Why a submission was refused, for the control socket's "status".
  enum class Refusal { BadMessage, NotLocalUser, UnknownRecipient, Store, NotAuthorized, Starting };
  struct Submitted {
    std::string id;
    bool duplicate = false;
  };
  struct SubmitError {
    Refusal refusal;
    std::string message;
  };
  /// A message from a local user (its From must be one): committed, then
  /// delivered. `done` once committed, with the message's id.
  void submit(std::vector<std::uint8_t> cpim,
              std::function<void(std::variant<Submitted, SubmitError>)> done);

  /// Is `user@domain` a user of a hosted domain?
  bool is_local_user(const std::string& user, const std::string& domain) const;

  /// Opens a session as `local_domain` to `to_domain` ([[peers]] or
  /// discovery) unless one is up or being opened; presence uses it too.
  void open_session(const std::string& local_domain, const std::string& to_domain);

  /// Routes (local domain, peer domain) whose sessions stay open although
  /// idle (presence keeps its watched domains' sessions).
  void keep_open(std::function<bool(const std::string& local, const std::string& peer)> predicate) {
    keep_open_ = std::move(predicate);
  }

  /// Called by the daemon when a session is established or closed.
  void session_up(const SessionInfo& session);
  void session_closed(const SessionInfo& session);

  /// Messages accepted from and delivered to `domain` since the store was
  /// created (docs/STORE.md, "Per-peer counters"): (in, out).
  std::pair<std::uint64_t, std::uint64_t> peer_totals(const std::string& domain) const;

  /// Every new inbox entry, for "follow" (owner, entry).
  using InboxListener = std::function<void(const InboxMessage&)>;
  std::uint64_t listen_inbox(InboxListener listener);
  void stop_listening(std::uint64_t id);

 private:
  struct Route;
  void schedule_pass(std::chrono::milliseconds delay);
  void pass();
  void deliver(const QueueEntry& entry);
  void send_on(std::uint64_t session, const QueueEntry& entry);
  void retry_later(const QueueEntry& entry, const std::string& error);
  void fail(const QueueEntry& entry, const std::string& error);
  void connect(const std::string& local_domain, const std::string& to_domain);
  std::chrono::milliseconds backoff(int attempts);
  void announce(const std::vector<InboxMessage>& copies);
  void count(const std::string& domain, bool inbound);
  void start_idle_timer();
  void close_idle();
  void save_counters();
  /// Queues a message the node itself writes (a delivery notification) from
  /// `from`, a user of a hosted domain, without the checks a user's
  /// submission gets.
  bool may_notify(const DeliveredMessage& m) const;
  bool take_notice_budget(const std::string& peer_domain);
  void send_notice(const CpimMessage& original, const std::string& original_id, const std::string& recipient,
                   std::string_view status);
  /// Routes a message with a fixed identity: copies for local recipients,
  /// one queue entry per remote domain; then commits them.
  void enqueue(const std::string& id, const CpimMessage& message, const std::vector<std::uint8_t>& cpim,
               std::function<void(Result<Acceptance>, std::vector<InboxMessage>)> done);

  uv_loop_t* loop_;
  Node& node_;
  MessageStore& store_;
  const AccessLists& access_;
  std::map<std::string, std::vector<std::string>> users_;
  std::vector<StaticPeer> peers_;
  DeliverySettings delivery_;
  UvHandle<uv_timer_t> timer_;
  bool pass_running_ = false;
  bool pass_again_ = false;
  /// Outbound sessions by (local domain, peer domain).
  std::map<std::pair<std::string, std::string>, std::uint64_t> routes_;
  std::set<std::pair<std::string, std::string>> connecting_;
  struct InFlight {
    std::uint64_t session = 0;
    UnixMs sent = 0;
    bool answered = false;  ///< ACKed, its delivered mark not committed yet
  };
  /// (id, to_domain) sent, waiting for the ACK (or for the mark after it).
  std::map<std::pair<std::string, std::string>, InFlight> in_flight_;
  std::size_t unanswered_to(const std::string& domain) const;
  void expire_unanswered();
  std::map<std::uint64_t, InboxListener> listeners_;
  std::uint64_t next_listener_ = 1;
  std::mt19937_64 jitter_;
  std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> totals_;
  std::set<std::string> dirty_totals_;
  std::map<std::string, std::pair<UnixMs, int>> notice_budget_;
  /// Sessions this service opened (and closes when idle) -> last use.
  std::map<std::uint64_t, UnixMs> opened_;
  UvHandle<uv_timer_t> idle_timer_;
  std::function<bool(const std::string&, const std::string&)> keep_open_;  ///< peer domain -> (window start, notices)
  UvHandle<uv_timer_t> totals_timer_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  ///< for callbacks that outlive this
};

}  // namespace keyfed
