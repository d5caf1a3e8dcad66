// The store: what the node must never lose (docs/STORE.md). Messages
// received for local users (inboxes), messages submitted by local users and
// not yet delivered (the outbound queue), and the message identities already
// accepted (replay). The interface says nothing about SQL: the embedded
// SQLite store (sqlite_store.h) is one implementation, a shared database for
// a domain served by several nodes would be another.
//
// Every call is made on the loop thread and answers on the loop thread,
// later: an implementation may do the work on another thread, and must never
// make the loop wait on the disk. A completion with a value means the change
// is committed (as durable as docs/STORE.md says for the configured
// synchronous mode); an Error means nothing of that call was applied.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace keyfed {

/// Milliseconds since the Unix epoch (the store's only time unit).
using UnixMs = std::int64_t;

/// MessageStore::due() gives at most this many entries of one domain:
/// twice the delivery window (message_service.cpp), so that a pass sees the
/// next messages of a domain beside those still waiting for their marks.
inline constexpr std::size_t kMaxDuePerDomain = 128;

/// One copy of a message in one local user's inbox.
struct InboxMessage {
  std::string id;           ///< imdn.Message-ID, without the angle brackets
  std::string owner;        ///< the local user whose inbox it is: "alice@alpha.test"
  std::string from;         ///< the From URI: "im:bob@beta.test"
  std::string to;           ///< the To/cc URI that named the owner
  std::string peer_domain;  ///< the peer it came from; the local domain for local mail
  std::string decision;     ///< how the peer was authenticated (decision_name), or "local"
  UnixMs received = 0;
  std::vector<std::uint8_t> cpim;  ///< verbatim, as received or submitted
};

/// An inbox entry as read back: the message and its position.
struct InboxEntry {
  std::int64_t seq = 0;  ///< increasing in arrival order, never reused
  InboxMessage message;
};

/// One message on its way to one remote domain.
struct OutboundMessage {
  std::string id;         ///< imdn.Message-ID
  std::string sender;     ///< the local user who submitted it: "bob@beta.test"
  std::string to_domain;  ///< the destination domain (one entry per domain)
  UnixMs submitted = 0;
  UnixMs expires = 0;     ///< given up after this ([delivery] lifetime_s)
  std::vector<std::uint8_t> cpim;
};

enum class QueueState { Queued, Delivered, Failed };
std::string_view queue_state_name(QueueState state);

struct QueueEntry {
  OutboundMessage message;
  QueueState state = QueueState::Queued;
  int attempts = 0;         ///< connection or delivery tries so far
  UnixMs next_attempt = 0;  ///< for Queued
  UnixMs finished = 0;      ///< when Delivered or Failed
  std::string last_error;
};

/// Whether a message was new, or its identity had been accepted before
/// (replay): a duplicate is answered like the first time and stored once.
enum class Acceptance { Stored, Duplicate };

class MessageStore {
 public:
  template <typename T>
  using Done = std::function<void(Result<T>)>;
  using DoneStatus = std::function<void(Status)>;

  virtual ~MessageStore() = default;

  /// A MESSAGE from a peer: every copy (one per local recipient) is
  /// committed, and the identity (`sender_domain`, id) remembered, in one
  /// transaction; Duplicate (nothing stored) if that identity was accepted
  /// before. The node ACKs only after this completes.
  virtual void accept_inbound(std::string sender_domain, std::vector<InboxMessage> copies,
                              Done<Acceptance> done) = 0;

  /// A message submitted by a local user: the copies for local recipients and
  /// one queue entry per remote domain, in one transaction, and the identity
  /// (the sender's domain, id) remembered; Duplicate if it was submitted
  /// before. The submitter is told "accepted" only after this completes.
  virtual void submit(std::string sender_domain, std::string id, std::vector<InboxMessage> local_copies,
                      std::vector<OutboundMessage> outbound, Done<Acceptance> done) = 0;

  /// Queued entries whose next attempt is due at `now`, oldest first, at
  /// most `max`, and at most kMaxDuePerDomain of any one domain (so that a
  /// domain with a backlog it does not take does not hide the others); with
  /// `domain`, only that domain's (flushed when a session to it comes up,
  /// whatever their next attempt).
  virtual void due(UnixMs now, std::size_t max, std::optional<std::string> domain,
                   Done<std::vector<QueueEntry>> done) = 0;
  /// When the next queued entry is due (nullopt: nothing queued).
  virtual void next_due(Done<std::optional<UnixMs>> done) = 0;
  /// The peer ACKed: the entry is Delivered. Only this marks it so.
  virtual void mark_delivered(std::string id, std::string to_domain, UnixMs now, DoneStatus done) = 0;
  /// A failed try: attempts + 1, the next try at `next_attempt`.
  virtual void defer(std::string id, std::string to_domain, UnixMs next_attempt, std::string error,
                     DoneStatus done) = 0;
  /// Given up (lifetime over, or refused for good): Failed, and `notice` (the
  /// failure notice for the sender) committed to the sender's inbox in the
  /// same transaction; none when `notice.owner` is empty.
  virtual void give_up(std::string id, std::string to_domain, UnixMs now, std::string error,
                       InboxMessage notice, DoneStatus done) = 0;
  /// Every queue entry, oldest first (delivered and failed ones are kept for
  /// `retention` after they finish, then purged).
  virtual void queue(Done<std::vector<QueueEntry>> done) = 0;

  /// `owner`'s inbox after `after_seq`, oldest first.
  virtual void inbox(std::string owner, std::int64_t after_seq, Done<std::vector<InboxEntry>> done) = 0;
  /// Removes `owner`'s entries up to and including `through_seq`; the count.
  virtual void take(std::string owner, std::int64_t through_seq, Done<std::size_t> done) = 0;

  /// Small durable records other modules keep (presence, lists,
  /// subscriptions): (kind, key) -> value; an empty value deletes.
  virtual void put_record(std::string kind, std::string key, std::string value, DoneStatus done) = 0;
  virtual void records(std::string kind, Done<std::vector<std::pair<std::string, std::string>>> done) = 0;

  /// Waits for everything submitted so far to be committed, then answers.
  virtual void flush(DoneStatus done) = 0;
};

}  // namespace keyfed
