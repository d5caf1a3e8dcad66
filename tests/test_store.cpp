// The embedded store on real SQLite files (docs/STORE.md): schema and its
// version, the lock, replay, inbox, queue states, and that what a completion
// reported committed is there after the store is closed and reopened.
#include <sys/stat.h>

#include <catch2/catch.hpp>

#include <set>
#include <sqlite3.h>

#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "harness.h"
#include "store/sqlite_store.h"

using namespace keyfed;
using namespace keyfed::test;

namespace {

std::vector<std::uint8_t> bytes(std::string_view text) { return {text.begin(), text.end()}; }

InboxMessage copy_for(std::string owner, std::string id, std::string body = "hi") {
  InboxMessage m;
  m.id = std::move(id);
  m.owner = owner;
  m.from = "im:bob@beta.test";
  m.to = "im:" + owner;
  m.peer_domain = "beta.test";
  m.decision = "authenticated";
  m.received = 1700000000000;
  m.cpim = bytes("From: <im:bob@beta.test>\r\nTo: <im:" + owner + ">\r\n\r\n" + body);
  return m;
}

// Runs one store call to completion on the loop.
template <typename T, typename Call>
Result<T> wait(TestLoop& loop, Call call) {
  std::optional<Result<T>> out;
  call([&](Result<T> r) { out.emplace(std::move(r)); });
  loop.run_until([&] { return out.has_value(); });
  return std::move(*out);
}

Status wait_status(TestLoop& loop, const std::function<void(MessageStore::DoneStatus)>& call) {
  return wait<std::monostate>(loop, call);
}

std::unique_ptr<MessageStore> open_store(TestLoop& loop, const std::filesystem::path& path) {
  auto store = open_sqlite_store(loop.get(), {.path = path});
  REQUIRE(store.ok());
  return std::move(store).value();
}

// Sets a PRAGMA on a closed store file with SQLite directly.
void poke(const std::filesystem::path& path, const std::string& sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  REQUIRE(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK);
  sqlite3_close(db);
}

}  // namespace

TEST_CASE("the store creates a private database with the current schema, and keeps what it committed",
          "[store]") {
  TempDir dir;
  TestLoop loop;
  auto path = dir.path() / "keyfed.db";
  {
    auto store = open_store(loop, path);
    auto r = wait<Acceptance>(loop, [&](auto done) {
      store->accept_inbound("beta.test", {copy_for("alice@alpha.test", "m1"), copy_for("carol@alpha.test", "m1")},
                            done);
    });
    REQUIRE(r.ok());
    CHECK(*r == Acceptance::Stored);
  }
  loop.run_until([] { return true; });
  struct stat st {};
  REQUIRE(stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);

  auto store = open_store(loop, path);
  auto inbox = wait<std::vector<InboxEntry>>(loop, [&](auto done) { store->inbox("alice@alpha.test", 0, done); });
  REQUIRE(inbox.ok());
  REQUIRE(inbox->size() == 1);
  CHECK(inbox->front().message.id == "m1");
  CHECK(inbox->front().message.cpim == copy_for("alice@alpha.test", "m1").cpim);  // byte for byte
  CHECK(inbox->front().message.decision == "authenticated");
  auto carol = wait<std::vector<InboxEntry>>(loop, [&](auto done) { store->inbox("carol@alpha.test", 0, done); });
  REQUIRE(carol.ok());
  CHECK(carol->size() == 1);
}

TEST_CASE("a message identity accepted once is stored once", "[store]") {
  TempDir dir;
  TestLoop loop;
  auto store = open_store(loop, dir.path() / "keyfed.db");
  auto first = wait<Acceptance>(loop, [&](auto done) {
    store->accept_inbound("beta.test", {copy_for("alice@alpha.test", "same")}, done);
  });
  auto again = wait<Acceptance>(loop, [&](auto done) {
    store->accept_inbound("beta.test", {copy_for("alice@alpha.test", "same", "other bytes")}, done);
  });
  // The same id from another domain is another message.
  auto other = wait<Acceptance>(loop, [&](auto done) {
    store->accept_inbound("gamma.test", {copy_for("alice@alpha.test", "same")}, done);
  });
  REQUIRE(first.ok());
  REQUIRE(again.ok());
  REQUIRE(other.ok());
  CHECK(*first == Acceptance::Stored);
  CHECK(*again == Acceptance::Duplicate);
  CHECK(*other == Acceptance::Stored);
  auto inbox = wait<std::vector<InboxEntry>>(loop, [&](auto done) { store->inbox("alice@alpha.test", 0, done); });
  REQUIRE(inbox.ok());
  REQUIRE(inbox->size() == 2);
  CHECK(inbox->front().message.cpim == copy_for("alice@alpha.test", "same").cpim);

  // take removes through a position, and no more.
  auto taken = wait<std::size_t>(loop, [&](auto done) { store->take("alice@alpha.test", inbox->front().seq, done); });
  REQUIRE(taken.ok());
  CHECK(*taken == 1);
  auto left = wait<std::vector<InboxEntry>>(loop, [&](auto done) { store->inbox("alice@alpha.test", 0, done); });
  REQUIRE(left.ok());
  CHECK(left->size() == 1);
}

TEST_CASE("the outbound queue: due, deferred, delivered only by an ACK, given up once with a notice", "[store]") {
  TempDir dir;
  TestLoop loop;
  auto store = open_store(loop, dir.path() / "keyfed.db");
  auto out = [](std::string id, std::string domain) {
    OutboundMessage m;
    m.id = std::move(id);
    m.sender = "bob@beta.test";
    m.to_domain = std::move(domain);
    m.submitted = 1000;
    m.expires = 5000;
    m.cpim = bytes("From: <im:bob@beta.test>\r\nTo: <im:alice@alpha.test>\r\n\r\nhi");
    return m;
  };
  auto submitted = wait<Acceptance>(loop, [&](auto done) {
    store->submit("beta.test", "q1", {}, {out("q1", "alpha.test"), out("q1", "gamma.test")}, done);
  });
  REQUIRE(submitted.ok());
  CHECK(*submitted == Acceptance::Stored);
  auto twice = wait<Acceptance>(loop, [&](auto done) {
    store->submit("beta.test", "q1", {}, {out("q1", "alpha.test")}, done);
  });
  REQUIRE(twice.ok());
  CHECK(*twice == Acceptance::Duplicate);

  auto due = wait<std::vector<QueueEntry>>(loop, [&](auto done) { store->due(1000, 10, std::nullopt, done); });
  REQUIRE(due.ok());
  CHECK(due->size() == 2);
  REQUIRE(wait_status(loop, [&](auto done) { store->defer("q1", "alpha.test", 3000, "connection refused", done); }).ok());
  due = wait<std::vector<QueueEntry>>(loop, [&](auto done) { store->due(2000, 10, std::nullopt, done); });
  REQUIRE(due.ok());
  REQUIRE(due->size() == 1);
  CHECK(due->front().message.to_domain == "gamma.test");
  // A session to alpha.test came up: its queue is flushed whatever the time.
  due = wait<std::vector<QueueEntry>>(loop, [&](auto done) { store->due(2000, 10, "alpha.test", done); });
  REQUIRE(due.ok());
  REQUIRE(due->size() == 1);
  CHECK(due->front().attempts == 1);
  CHECK(due->front().last_error == "connection refused");
  auto next = wait<std::optional<UnixMs>>(loop, [&](auto done) { store->next_due(done); });
  REQUIRE(next.ok());
  CHECK(*next == std::optional<UnixMs>(1000));

  REQUIRE(wait_status(loop, [&](auto done) { store->mark_delivered("q1", "alpha.test", 2500, done); }).ok());
  InboxMessage notice = copy_for("bob@beta.test", "notice-1");
  REQUIRE(wait_status(loop, [&](auto done) { store->give_up("q1", "gamma.test", 6000, "lifetime over", notice, done); })
              .ok());
  REQUIRE(wait_status(loop, [&](auto done) { store->give_up("q1", "gamma.test", 6001, "again", notice, done); }).ok());
  // Delivered stays delivered: a late defer does not requeue it.
  REQUIRE(wait_status(loop, [&](auto done) { store->defer("q1", "alpha.test", 9000, "late", done); }).ok());

  auto queue = wait<std::vector<QueueEntry>>(loop, [&](auto done) { store->queue(done); });
  REQUIRE(queue.ok());
  REQUIRE(queue->size() == 2);
  for (const QueueEntry& e : *queue) {
    if (e.message.to_domain == "alpha.test") {
      CHECK(e.state == QueueState::Delivered);
      CHECK(e.finished == 2500);
    } else {
      CHECK(e.state == QueueState::Failed);
      CHECK(e.last_error == "lifetime over");
    }
  }
  auto bob = wait<std::vector<InboxEntry>>(loop, [&](auto done) { store->inbox("bob@beta.test", 0, done); });
  REQUIRE(bob.ok());
  CHECK(bob->size() == 1);  // one notice, not two
  next = wait<std::optional<UnixMs>>(loop, [&](auto done) { store->next_due(done); });
  REQUIRE(next.ok());
  CHECK_FALSE(next->has_value());
}

TEST_CASE("the store refuses a newer schema, another program's database, a locked or damaged file", "[store]") {
  TempDir dir;
  TestLoop loop;
  auto path = dir.path() / "keyfed.db";
  { auto store = open_store(loop, path); }
  loop.run_until([] { return true; });

  SECTION("newer schema") {
    poke(path, "PRAGMA user_version = 99");
    auto store = open_sqlite_store(loop.get(), {.path = path});
    REQUIRE_FALSE(store.ok());
    CHECK_THAT(store.error().message, Catch::Contains("schema version 99 is newer"));
    CHECK_THAT(store.error().message, Catch::Contains(path.string()));
  }
  SECTION("another program's database") {
    auto other = dir.path() / "other.db";
    poke(other, "CREATE TABLE t (x)");
    chmod(other.c_str(), 0600);
    auto store = open_sqlite_store(loop.get(), {.path = other});
    REQUIRE_FALSE(store.ok());
    CHECK_THAT(store.error().message, Catch::Contains("not a keyfed store"));
  }
  SECTION("not a database at all") {
    auto junk = dir.path() / "junk.db";
    std::ofstream(junk) << std::string(8192, 'x');
    chmod(junk.c_str(), 0600);
    auto store = open_sqlite_store(loop.get(), {.path = junk});
    REQUIRE_FALSE(store.ok());
    CHECK_THAT(store.error().message, Catch::Contains("junk.db"));
    CHECK_THAT(store.error().message, Catch::Contains("not a database"));
  }
  SECTION("in use by another node") {
    auto first = open_store(loop, path);
    auto second = open_sqlite_store(loop.get(), {.path = path});
    REQUIRE_FALSE(second.ok());
    CHECK_THAT(second.error().message, Catch::Contains("in use by another process"));
  }
  SECTION("readable by others") {
    chmod(path.c_str(), 0644);
    auto store = open_sqlite_store(loop.get(), {.path = path});
    REQUIRE_FALSE(store.ok());
    CHECK_THAT(store.error().message, Catch::Contains("accessible by group or others"));
  }
  loop.run_until([] { return true; });
}

TEST_CASE("many calls queued at once are committed together, each answered", "[store]") {
  TempDir dir;
  TestLoop loop;
  auto store = open_store(loop, dir.path() / "keyfed.db");
  constexpr int kMessages = 2000;
  int stored = 0, failed = 0;
  for (int i = 0; i < kMessages; ++i) {
    store->accept_inbound("beta.test", {copy_for("alice@alpha.test", "bulk-" + std::to_string(i))},
                          [&](Result<Acceptance> r) { (r.ok() && *r == Acceptance::Stored ? stored : failed)++; });
  }
  loop.run_until([&] { return stored + failed == kMessages; });
  CHECK(failed == 0);
  auto inbox = wait<std::vector<InboxEntry>>(loop, [&](auto done) { store->inbox("alice@alpha.test", 0, done); });
  REQUIRE(inbox.ok());
  CHECK(inbox->size() == static_cast<std::size_t>(kMessages));
  // In arrival order.
  CHECK(inbox->front().message.id == "bulk-0");
  CHECK(inbox->back().message.id == "bulk-" + std::to_string(kMessages - 1));
}

TEST_CASE("calls beyond max_pending are refused at once, answered on the loop, and nothing accepted is lost",
          "[store]") {
  TempDir dir;
  TestLoop loop;
  auto opened = open_sqlite_store(loop.get(), {.path = dir.path() / "keyfed.db", .max_pending = 8});
  REQUIRE(opened.ok());
  auto store = std::move(opened).value();
  constexpr int kMessages = 2000;
  int stored = 0, refused = 0, answered_inside = 0;
  std::set<std::string> accepted;
  std::vector<char> returned(kMessages, 0);  // call i has returned to its caller
  for (int i = 0; i < kMessages; ++i) {
    std::string id = "burst-" + std::to_string(i);
    store->accept_inbound("beta.test", {copy_for("alice@alpha.test", id)}, [&, id, i](Result<Acceptance> r) {
      if (!returned[i]) ++answered_inside;
      if (r.ok()) {
        ++stored;
        accepted.insert(id);
      } else {
        ++refused;
        CHECK_THAT(r.error().message, Catch::Contains("max_pending"));
      }
    });
    returned[i] = 1;
  }
  loop.run_until([&] { return stored + refused == kMessages; });
  CHECK(answered_inside == 0);  // never from inside the call
  CHECK(refused > 0);           // 2000 calls in one turn of the loop overrun 8
  CHECK(stored > 0);
  auto inbox = wait<std::vector<InboxEntry>>(loop, [&](auto done) { store->inbox("alice@alpha.test", 0, done); });
  REQUIRE(inbox.ok());
  CHECK(inbox->size() == accepted.size());  // exactly what was answered stored
  for (const InboxEntry& e : *inbox) CHECK(accepted.count(e.message.id) == 1);
}

TEST_CASE("durable records: replaced by key, deleted by an empty value, kept across a reopen", "[store]") {
  TempDir dir;
  TestLoop loop;
  auto path = dir.path() / "keyfed.db";
  {
    auto store = open_store(loop, path);
    REQUIRE(wait_status(loop, [&](auto done) { store->put_record("acl", "alice|inbox|*@evil.test", "deny", done); }).ok());
    REQUIRE(wait_status(loop, [&](auto done) { store->put_record("acl", "alice|inbox|*@evil.test", "allow", done); }).ok());
    REQUIRE(wait_status(loop, [&](auto done) { store->put_record("acl", "alice|inbox|x@y.test", "deny", done); }).ok());
    REQUIRE(wait_status(loop, [&](auto done) { store->put_record("acl", "alice|inbox|x@y.test", "", done); }).ok());
  }
  loop.run_until([] { return true; });
  auto store = open_store(loop, path);
  auto records = wait<std::vector<std::pair<std::string, std::string>>>(
      loop, [&](auto done) { store->records("acl", done); });
  REQUIRE(records.ok());
  REQUIRE(records->size() == 1);
  CHECK(records->front().first == "alice|inbox|*@evil.test");
  CHECK(records->front().second == "allow");
}
