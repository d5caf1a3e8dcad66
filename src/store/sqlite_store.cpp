#include "store/sqlite_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <sqlite3.h>

#include "common/c_handles.h"
#include "common/uv_handle.h"

namespace keyfed {

std::string_view queue_state_name(QueueState state) {
  switch (state) {
    case QueueState::Queued: return "queued";
    case QueueState::Delivered: return "delivered";
    case QueueState::Failed: return "failed";
  }
  return "queued";
}

namespace {

using SqlitePtr = CPtr<sqlite3, sqlite3_close_v2>;
using StmtPtr = CPtr<sqlite3_stmt, sqlite3_finalize>;

/// PRAGMA application_id of a keyfed store ("KFED"): another program's
/// SQLite file is refused rather than migrated.
constexpr std::int64_t kApplicationId = 0x4b464544;

// Schema migrations, docs/STORE.md "Schema": kMigrations[n] takes a
// database from version n to n + 1. Never edit one that has shipped; add one.
constexpr const char* kMigrations[] = {
    // 0 -> 1
    R"sql(
CREATE TABLE inbox (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  owner TEXT NOT NULL,
  id TEXT NOT NULL,
  from_uri TEXT NOT NULL,
  to_uri TEXT NOT NULL,
  peer_domain TEXT NOT NULL,
  decision TEXT NOT NULL,
  received INTEGER NOT NULL,
  cpim BLOB NOT NULL
);
CREATE INDEX inbox_by_owner ON inbox (owner, seq);
CREATE TABLE seen (
  sender_domain TEXT NOT NULL,
  id TEXT NOT NULL,
  accepted INTEGER NOT NULL,
  PRIMARY KEY (sender_domain, id)
) WITHOUT ROWID;
CREATE INDEX seen_by_time ON seen (accepted);
CREATE TABLE outbound (
  id TEXT NOT NULL,
  to_domain TEXT NOT NULL,
  sender TEXT NOT NULL,
  submitted INTEGER NOT NULL,
  expires INTEGER NOT NULL,
  state INTEGER NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt INTEGER NOT NULL,
  finished INTEGER NOT NULL DEFAULT 0,
  last_error TEXT NOT NULL DEFAULT '',
  cpim BLOB NOT NULL,
  PRIMARY KEY (id, to_domain)
);
CREATE INDEX outbound_due ON outbound (state, next_attempt);
CREATE TABLE records (
  kind TEXT NOT NULL,
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (kind, key)
) WITHOUT ROWID;
)sql",
};
static_assert(std::size(kMigrations) == kStoreSchemaVersion);

// One connection, used by one thread at a time, with its statements
// prepared once and kept.
class Db {
 public:
  Db(SqlitePtr db, std::filesystem::path path) : db_(std::move(db)), path_(std::move(path)) {}

  Error error(std::string_view what) const {
    return make_error("{}: {}: {}", path_.string(), what, sqlite3_errmsg(db_.get()));
  }
  int code() const { return sqlite3_extended_errcode(db_.get()); }

  Status exec(const char* sql, std::string_view what) {
    if (sqlite3_exec(db_.get(), sql, nullptr, nullptr, nullptr) != SQLITE_OK) return error(what);
    return ok_status();
  }

  // A statement ready to bind: reset, bindings cleared.
  Result<sqlite3_stmt*> statement(const char* sql) {
    auto it = statements_.find(sql);
    if (it == statements_.end()) {
      sqlite3_stmt* raw = nullptr;
      if (sqlite3_prepare_v3(db_.get(), sql, -1, SQLITE_PREPARE_PERSISTENT, &raw, nullptr) != SQLITE_OK) {
        return error("cannot prepare a statement");
      }
      it = statements_.emplace(sql, StmtPtr(raw)).first;
    }
    sqlite3_reset(it->second.get());
    sqlite3_clear_bindings(it->second.get());
    return it->second.get();
  }

  Result<std::int64_t> pragma_int(const char* sql) {
    sqlite3_stmt* raw = nullptr;
    if (sqlite3_prepare_v2(db_.get(), sql, -1, &raw, nullptr) != SQLITE_OK) return error("cannot read the database");
    StmtPtr stmt(raw);
    int rc = sqlite3_step(stmt.get());
    if (rc != SQLITE_ROW) return error("cannot read the database");
    return sqlite3_column_int64(stmt.get(), 0);
  }

  int changes() const { return sqlite3_changes(db_.get()); }
  const std::filesystem::path& path() const { return path_; }

 private:
  SqlitePtr db_;
  std::filesystem::path path_;
  std::map<const char*, StmtPtr> statements_;  // keyed by the SQL literal's address
};

// Binding and stepping one statement. Text and blobs are copied by SQLite
// (SQLITE_TRANSIENT), so the arguments may be temporaries.
class Query {
 public:
  Query(Db& db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}
  ~Query() { sqlite3_reset(stmt_); }
  Query(const Query&) = delete;
  Query& operator=(const Query&) = delete;

  Query& bind(std::string_view text) {
    sqlite3_bind_text(stmt_, ++index_, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Query& bind(const std::vector<std::uint8_t>& blob) {
    sqlite3_bind_blob(stmt_, ++index_, blob.empty() ? "" : static_cast<const void*>(blob.data()),
                      static_cast<int>(blob.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Query& bind(std::int64_t value) {
    sqlite3_bind_int64(stmt_, ++index_, value);
    return *this;
  }
  /// true: a row is ready; false: done.
  Result<bool> step(std::string_view what) {
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return db_.error(what);
  }
  Status run(std::string_view what) {
    auto r = step(what);
    if (!r) return r.error();
    return ok_status();
  }
  std::int64_t integer(int column) const { return sqlite3_column_int64(stmt_, column); }
  bool null(int column) const { return sqlite3_column_type(stmt_, column) == SQLITE_NULL; }
  std::string text(int column) const {
    const auto* p = sqlite3_column_text(stmt_, column);
    return p == nullptr ? std::string() : std::string(reinterpret_cast<const char*>(p),
                                                      static_cast<std::size_t>(sqlite3_column_bytes(stmt_, column)));
  }
  std::vector<std::uint8_t> blob(int column) const {
    const auto* p = static_cast<const std::uint8_t*>(sqlite3_column_blob(stmt_, column));
    return p == nullptr ? std::vector<std::uint8_t>()
                        : std::vector<std::uint8_t>(p, p + sqlite3_column_bytes(stmt_, column));
  }

 private:
  Db& db_;
  sqlite3_stmt* stmt_;
  int index_ = 0;
};

Result<Query*> prepare(Db& db, std::optional<Query>& slot, const char* sql) {
  auto stmt = db.statement(sql);
  if (!stmt) return stmt.error();
  slot.emplace(db, *stmt);
  return &*slot;
}

// The identity (sender domain, id) is new: remember it. false: seen before.
Result<bool> remember(Db& db, const std::string& sender_domain, const std::string& id, UnixMs now) {
  std::optional<Query> q;
  auto r = prepare(db, q, "INSERT OR IGNORE INTO seen (sender_domain, id, accepted) VALUES (?, ?, ?)");
  if (!r) return r.error();
  if (Status s = (*r)->bind(sender_domain).bind(id).bind(now).run("cannot record a message identity"); !s) {
    return s.error();
  }
  return db.changes() > 0;
}

Status insert_inbox(Db& db, const InboxMessage& m) {
  std::optional<Query> q;
  auto r = prepare(db, q,
                   "INSERT INTO inbox (owner, id, from_uri, to_uri, peer_domain, decision, received, cpim) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
  if (!r) return r.error();
  return (*r)->bind(m.owner).bind(m.id).bind(m.from).bind(m.to).bind(m.peer_domain).bind(m.decision)
      .bind(m.received).bind(m.cpim).run("cannot store a message in an inbox");
}

Status insert_outbound(Db& db, const OutboundMessage& m) {
  std::optional<Query> q;
  auto r = prepare(db, q,
                   "INSERT INTO outbound (id, to_domain, sender, submitted, expires, state, next_attempt, cpim) "
                   "VALUES (?, ?, ?, ?, ?, 0, ?, ?)");
  if (!r) return r.error();
  return (*r)->bind(m.id).bind(m.to_domain).bind(m.sender).bind(m.submitted).bind(m.expires).bind(m.submitted)
      .bind(m.cpim).run("cannot queue a message");
}

constexpr const char* kQueueColumns =
    "id, to_domain, sender, submitted, expires, state, attempts, next_attempt, finished, last_error, cpim";

QueueEntry read_queue_entry(const Query& q) {
  QueueEntry e;
  e.message.id = q.text(0);
  e.message.to_domain = q.text(1);
  e.message.sender = q.text(2);
  e.message.submitted = q.integer(3);
  e.message.expires = q.integer(4);
  std::int64_t state = q.integer(5);
  e.state = state == 1 ? QueueState::Delivered : state == 2 ? QueueState::Failed : QueueState::Queued;
  e.attempts = static_cast<int>(q.integer(6));
  e.next_attempt = q.integer(7);
  e.finished = q.integer(8);
  e.last_error = q.text(9);
  e.message.cpim = q.blob(10);
  return e;
}

// Every row of a query over kQueueColumns.
Result<std::vector<QueueEntry>> read_queue_entries(Query& q) {
  std::vector<QueueEntry> out;
  for (;;) {
    auto row = q.step("cannot read the queue");
    if (!row) return row.error();
    if (!*row) return out;
    out.push_back(read_queue_entry(q));
  }
}

UnixMs wall_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

class SqliteStore final : public MessageStore {
 public:
  SqliteStore(uv_loop_t* loop, std::unique_ptr<Db> db, const SqliteStoreOptions& options)
      : db_(std::move(db)), options_(options) {
    async_ = make_uv_handle<uv_async_t>();
    uv_async_init(loop, async_.get(), [](uv_async_t* handle) { static_cast<SqliteStore*>(handle->data)->complete(); });
    async_->data = this;
    worker_ = std::thread([this] { work(); });
  }

  // Everything queued is still committed (nothing accepted is lost); the
  // completions of calls not yet answered are not called.
  ~SqliteStore() override {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_one();
    worker_.join();
    async_->data = nullptr;
  }

  void accept_inbound(std::string sender_domain, std::vector<InboxMessage> copies, Done<Acceptance> done) override {
    post_value<Acceptance>(
        [sender_domain = std::move(sender_domain), copies = std::move(copies)](Db& db) -> Result<Acceptance> {
          if (copies.empty()) return make_error("a message without a recipient");
          auto fresh = remember(db, sender_domain, copies.front().id, wall_now());
          if (!fresh) return fresh.error();
          if (!*fresh) return Acceptance::Duplicate;
          for (const InboxMessage& m : copies) {
            if (Status s = insert_inbox(db, m); !s) return s.error();
          }
          return Acceptance::Stored;
        },
        std::move(done));
  }

  void submit(std::string sender_domain, std::string id, std::vector<InboxMessage> local_copies,
              std::vector<OutboundMessage> outbound, Done<Acceptance> done) override {
    post_value<Acceptance>(
        [sender_domain = std::move(sender_domain), id = std::move(id), local = std::move(local_copies),
         outbound = std::move(outbound)](Db& db) -> Result<Acceptance> {
          auto fresh = remember(db, sender_domain, id, wall_now());
          if (!fresh) return fresh.error();
          if (!*fresh) return Acceptance::Duplicate;
          for (const InboxMessage& m : local) {
            if (Status s = insert_inbox(db, m); !s) return s.error();
          }
          for (const OutboundMessage& m : outbound) {
            if (Status s = insert_outbound(db, m); !s) return s.error();
          }
          return Acceptance::Stored;
        },
        std::move(done));
  }

  void due(UnixMs now, std::size_t max, std::optional<std::string> domain,
           Done<std::vector<QueueEntry>> done) override {
    post_value<std::vector<QueueEntry>>(
        [now, max, domain = std::move(domain)](Db& db) -> Result<std::vector<QueueEntry>> {
          // At most kMaxDuePerDomain per domain: one domain's backlog never
          // hides the others' entries behind it.
          static const std::string by_time = fmt::format(
              "SELECT {0} FROM (SELECT {0}, rowid AS r, ROW_NUMBER() OVER (PARTITION BY to_domain "
              "ORDER BY submitted, rowid) AS n FROM outbound WHERE state = 0 AND next_attempt <= ?) "
              "WHERE n <= ? ORDER BY submitted, r LIMIT ?",
              kQueueColumns);
          static const std::string by_domain = fmt::format(
              "SELECT {} FROM outbound WHERE state = 0 AND to_domain = ? ORDER BY submitted, rowid LIMIT ?",
              kQueueColumns);
          std::optional<Query> q;
          auto r = prepare(db, q, domain ? by_domain.c_str() : by_time.c_str());
          if (!r) return r.error();
          if (domain) {
            (*r)->bind(*domain);
          } else {
            (*r)->bind(now).bind(static_cast<std::int64_t>(kMaxDuePerDomain));
          }
          (*r)->bind(static_cast<std::int64_t>(max));
          return read_queue_entries(**r);
        },
        std::move(done));
  }

  void next_due(Done<std::optional<UnixMs>> done) override {
    post_value<std::optional<UnixMs>>(
        [](Db& db) -> Result<std::optional<UnixMs>> {
          std::optional<Query> q;
          auto r = prepare(db, q, "SELECT MIN(next_attempt) FROM outbound WHERE state = 0");
          if (!r) return r.error();
          auto row = (*r)->step("cannot read the queue");
          if (!row) return row.error();
          if (!*row || (*r)->null(0)) return std::optional<UnixMs>{};
          return std::optional<UnixMs>{(*r)->integer(0)};
        },
        std::move(done));
  }

  void mark_delivered(std::string id, std::string to_domain, UnixMs now, DoneStatus done) override {
    post([id = std::move(id), to_domain = std::move(to_domain), now](Db& db) -> Status {
      std::optional<Query> q;
      auto r = prepare(db, q,
                       "UPDATE outbound SET state = 1, finished = ?, last_error = '' "
                       "WHERE id = ? AND to_domain = ? AND state = 0");
      if (!r) return r.error();
      return (*r)->bind(now).bind(id).bind(to_domain).run("cannot mark a message delivered");
    }, std::move(done));
  }

  void defer(std::string id, std::string to_domain, UnixMs next_attempt, std::string error,
             DoneStatus done) override {
    post([id = std::move(id), to_domain = std::move(to_domain), next_attempt,
          error = std::move(error)](Db& db) -> Status {
      std::optional<Query> q;
      auto r = prepare(db, q,
                       "UPDATE outbound SET attempts = attempts + 1, next_attempt = ?, last_error = ? "
                       "WHERE id = ? AND to_domain = ? AND state = 0");
      if (!r) return r.error();
      return (*r)->bind(next_attempt).bind(error).bind(id).bind(to_domain).run("cannot defer a message");
    }, std::move(done));
  }

  void give_up(std::string id, std::string to_domain, UnixMs now, std::string error, InboxMessage notice,
               DoneStatus done) override {
    post([id = std::move(id), to_domain = std::move(to_domain), now, error = std::move(error),
          notice = std::move(notice)](Db& db) -> Status {
      std::optional<Query> q;
      auto r = prepare(db, q,
                       "UPDATE outbound SET state = 2, finished = ?, last_error = ? "
                       "WHERE id = ? AND to_domain = ? AND state = 0");
      if (!r) return r.error();
      if (Status s = (*r)->bind(now).bind(error).bind(id).bind(to_domain).run("cannot give up a message"); !s) {
        return s;
      }
      if (db.changes() == 0) return ok_status();  // already finished: one notice only
      if (notice.owner.empty()) return ok_status();  // a notice about a notice: none
      return insert_inbox(db, notice);
    }, std::move(done));
  }

  void queue(Done<std::vector<QueueEntry>> done) override {
    post_value<std::vector<QueueEntry>>(
        [](Db& db) -> Result<std::vector<QueueEntry>> {
          static const std::string sql = fmt::format("SELECT {} FROM outbound ORDER BY submitted, rowid", kQueueColumns);
          std::optional<Query> q;
          auto r = prepare(db, q, sql.c_str());
          if (!r) return r.error();
          return read_queue_entries(**r);
        },
        std::move(done));
  }

  void inbox(std::string owner, std::int64_t after_seq, Done<std::vector<InboxEntry>> done) override {
    post_value<std::vector<InboxEntry>>(
        [owner = std::move(owner), after_seq](Db& db) -> Result<std::vector<InboxEntry>> {
          std::optional<Query> q;
          auto r = prepare(db, q,
                           "SELECT seq, owner, id, from_uri, to_uri, peer_domain, decision, received, cpim "
                           "FROM inbox WHERE owner = ? AND seq > ? ORDER BY seq");
          if (!r) return r.error();
          (*r)->bind(owner).bind(after_seq);
          std::vector<InboxEntry> out;
          for (;;) {
            auto row = (*r)->step("cannot read an inbox");
            if (!row) return row.error();
            if (!*row) break;
            const Query& x = **r;
            out.push_back({x.integer(0), {x.text(2), x.text(1), x.text(3), x.text(4), x.text(5), x.text(6),
                                           x.integer(7), x.blob(8)}});
          }
          return out;
        },
        std::move(done));
  }

  void take(std::string owner, std::int64_t through_seq, Done<std::size_t> done) override {
    post_value<std::size_t>(
        [owner = std::move(owner), through_seq](Db& db) -> Result<std::size_t> {
          std::optional<Query> q;
          auto r = prepare(db, q, "DELETE FROM inbox WHERE owner = ? AND seq <= ?");
          if (!r) return r.error();
          if (Status s = (*r)->bind(owner).bind(through_seq).run("cannot remove messages from an inbox"); !s) {
            return s.error();
          }
          return static_cast<std::size_t>(db.changes());
        },
        std::move(done));
  }

  void put_record(std::string kind, std::string key, std::string value, DoneStatus done) override {
    post([kind = std::move(kind), key = std::move(key), value = std::move(value)](Db& db) -> Status {
      std::optional<Query> q;
      if (value.empty()) {
        auto r = prepare(db, q, "DELETE FROM records WHERE kind = ? AND key = ?");
        if (!r) return r.error();
        return (*r)->bind(kind).bind(key).run("cannot delete a record");
      }
      auto r = prepare(db, q, "INSERT OR REPLACE INTO records (kind, key, value) VALUES (?, ?, ?)");
      if (!r) return r.error();
      return (*r)->bind(kind).bind(key).bind(value).run("cannot write a record");
    }, std::move(done));
  }

  void records(std::string kind, Done<std::vector<std::pair<std::string, std::string>>> done) override {
    post_value<std::vector<std::pair<std::string, std::string>>>(
        [kind = std::move(kind)](Db& db) -> Result<std::vector<std::pair<std::string, std::string>>> {
          std::optional<Query> q;
          auto r = prepare(db, q, "SELECT key, value FROM records WHERE kind = ? ORDER BY key");
          if (!r) return r.error();
          (*r)->bind(kind);
          std::vector<std::pair<std::string, std::string>> out;
          for (;;) {
            auto row = (*r)->step("cannot read records");
            if (!row) return row.error();
            if (!*row) break;
            out.emplace_back((*r)->text(0), (*r)->text(1));
          }
          return out;
        },
        std::move(done));
  }

  void flush(DoneStatus done) override {
    post([](Db&) { return ok_status(); }, std::move(done));
  }

 private:
  struct Job {
    std::function<Status(Db&)> run;       // on the writer thread, in the batch's transaction
    std::function<void(Status)> complete; // on the loop, with the job's status or the commit's
  };

  void post(std::function<Status(Db&)> run, std::function<void(Status)> complete) {
    bool full = false;
    {
      std::lock_guard lock(mutex_);
      full = jobs_.size() >= options_.max_pending;
      if (!full) jobs_.push_back({std::move(run), std::move(complete)});
    }
    if (full) {
      // Answered on the loop like any call, never from inside the caller.
      {
        std::lock_guard lock(done_mutex_);
        done_.emplace_back(std::move(complete),
                           make_error("the store is behind: {} calls wait for the disk (max_pending)",
                                      options_.max_pending));
      }
      uv_async_send(async_.get());
      return;
    }
    wake_.notify_one();
  }

  template <typename T>
  void post_value(std::function<Result<T>(Db&)> run, Done<T> done) {
    auto out = std::make_shared<std::optional<Result<T>>>();
    post(
        [run = std::move(run), out](Db& db) -> Status {
          out->emplace(run(db));
          if (!**out) return (**out).error();
          return ok_status();
        },
        [out, done = std::move(done)](Status status) {
          if (!status) return done(status.error());
          done(std::move(**out));
        });
  }

  // The writer thread: takes everything queued, runs it in one transaction
  // (each call in its own savepoint, so one failing call does not undo the
  // others), commits, and hands the completions to the loop.
  void work() {
    for (;;) {
      std::vector<Job> batch;
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
        if (jobs_.empty()) return;  // stopping, and everything queued is done
        while (!jobs_.empty() && batch.size() < options_.max_batch) {
          batch.push_back(std::move(jobs_.front()));
          jobs_.pop_front();
        }
      }
      std::vector<Status> results(batch.size(), ok_status());
      if (Status begin = db_->exec("BEGIN IMMEDIATE", "cannot begin a transaction"); !begin) {
        for (Status& r : results) r = begin;
      } else {
        for (std::size_t i = 0; i < batch.size(); ++i) {
          (void)db_->exec("SAVEPOINT job", "cannot begin a savepoint");
          results[i] = batch[i].run(*db_);
          if (!results[i]) (void)db_->exec("ROLLBACK TO job", "cannot roll back a savepoint");
          (void)db_->exec("RELEASE job", "cannot release a savepoint");
        }
        purge_if_due();
        if (Status commit = db_->exec("COMMIT", "cannot commit"); !commit) {
          (void)db_->exec("ROLLBACK", "cannot roll back");
          for (Status& r : results) {
            if (r) r = commit;
          }
        }
      }
      {
        std::lock_guard lock(done_mutex_);
        for (std::size_t i = 0; i < batch.size(); ++i) done_.emplace_back(std::move(batch[i].complete), results[i]);
      }
      uv_async_send(async_.get());
    }
  }

  // Finished queue entries and replay identities older than the retention.
  void purge_if_due() {
    auto now = std::chrono::steady_clock::now();
    if (now - last_purge_ < std::chrono::minutes(1)) return;
    last_purge_ = now;
    UnixMs before = wall_now() - std::chrono::duration_cast<std::chrono::milliseconds>(options_.retention).count();
    for (const char* sql : {"DELETE FROM outbound WHERE state != 0 AND finished < ?",
                            "DELETE FROM seen WHERE accepted < ?"}) {
      std::optional<Query> q;
      if (auto r = prepare(*db_, q, sql); r) (void)(*r)->bind(before).run("cannot purge");
    }
  }

  void complete() {
    std::vector<std::pair<std::function<void(Status)>, Status>> done;
    {
      std::lock_guard lock(done_mutex_);
      done.swap(done_);
    }
    for (auto& [callback, status] : done) {
      if (callback) callback(std::move(status));
    }
  }

  std::unique_ptr<Db> db_;  // the writer thread's, after construction
  SqliteStoreOptions options_;
  std::chrono::steady_clock::time_point last_purge_{};
  UvHandle<uv_async_t> async_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Job> jobs_;
  bool stopping_ = false;
  std::mutex done_mutex_;
  std::vector<std::pair<std::function<void(Status)>, Status>> done_;
  std::thread worker_;  // last: started once everything above exists
};

// Creates the file 0600 if it does not exist (SQLite would use the umask;
// its -wal file takes the database file's mode).
Status create_private_file(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0600);
  if (fd < 0) return make_error("{}: cannot open the store: {}", path.string(), std::strerror(errno));
  struct stat st {};
  int rc = fstat(fd, &st);
  ::close(fd);
  if (rc != 0 || !S_ISREG(st.st_mode)) return make_error("{}: the store is not a regular file", path.string());
  if ((st.st_mode & 077) != 0) {
    return make_error("{}: the store is accessible by group or others (mode {:o}); chmod 600 it",
                      path.string(), st.st_mode & 0777);
  }
  return ok_status();
}

Status migrate(Db& db) {
  auto app = db.pragma_int("PRAGMA application_id");
  if (!app) return app.error();
  auto version = db.pragma_int("PRAGMA user_version");
  if (!version) return version.error();
  if (*app != kApplicationId && !(*app == 0 && *version == 0)) {
    return make_error("{}: not a keyfed store (application_id {:#x})", db.path().string(), *app);
  }
  if (*version > kStoreSchemaVersion) {
    return make_error("{}: the store's schema version {} is newer than this keyfed's ({}); use a newer keyfed",
                      db.path().string(), *version, kStoreSchemaVersion);
  }
  if (*app == 0) {
    // A file with no keyfed schema must be empty, not another program's.
    auto tables = db.pragma_int("SELECT count(*) FROM sqlite_schema");
    if (!tables) return tables.error();
    if (*tables != 0) return make_error("{}: not a keyfed store (it has other tables)", db.path().string());
  }
  for (auto v = *version; v < kStoreSchemaVersion; ++v) {
    if (Status s = db.exec(kMigrations[v], "cannot migrate the schema"); !s) return s;
    if (Status s = db.exec(fmt::format("PRAGMA user_version = {}", v + 1).c_str(), "cannot migrate the schema");
        !s) {
      return s;
    }
  }
  return db.exec(fmt::format("PRAGMA application_id = {}", kApplicationId).c_str(), "cannot migrate the schema");
}

}  // namespace

Result<std::unique_ptr<MessageStore>> open_sqlite_store(uv_loop_t* loop, const SqliteStoreOptions& options) {
  if (Status s = create_private_file(options.path); !s) return s.error();
  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(options.path.c_str(), &raw,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOFOLLOW | SQLITE_OPEN_FULLMUTEX, nullptr);
  SqlitePtr handle(raw);
  if (rc != SQLITE_OK) {
    return make_error("{}: cannot open the store: {}", options.path.string(),
                      raw != nullptr ? sqlite3_errmsg(raw) : "out of memory");
  }
  sqlite3_extended_result_codes(raw, 1);
  auto db = std::make_unique<Db>(std::move(handle), options.path);
  // One node per file: the lock is taken by the first write and kept.
  const char* setup[] = {"PRAGMA locking_mode = EXCLUSIVE", "PRAGMA journal_mode = WAL",
                         options.synchronous == StoreSync::Full ? "PRAGMA synchronous = FULL"
                                                                : "PRAGMA synchronous = NORMAL",
                         "PRAGMA foreign_keys = OFF"};
  auto busy = [&](Status s) -> Error {
    if ((db->code() & 0xff) == SQLITE_BUSY) {
      return make_error("{}: the store is in use by another process (one node per store file)",
                        options.path.string());
    }
    return s.error();
  };
  for (const char* sql : setup) {
    if (Status s = db->exec(sql, "cannot open the store"); !s) return busy(s);
  }
  if (Status s = db->exec("BEGIN IMMEDIATE", "cannot lock the store"); !s) return busy(s);
  if (Status s = migrate(*db); !s) {
    (void)db->exec("ROLLBACK", "cannot roll back");
    return s.error();
  }
  if (Status s = db->exec("COMMIT", "cannot migrate the schema"); !s) return s.error();
  // A damaged file is found here rather than on the first message.
  auto check = db->pragma_int("SELECT count(*) FROM inbox");
  if (!check) return check.error();
  return std::unique_ptr<MessageStore>(std::make_unique<SqliteStore>(loop, std::move(db), options));
}

}  // namespace keyfed
