// The store under load, end to end, as ratios against the same run
// (docs/BENCH.md, "bench_store").
//
//   bench_store TESTBED_DIR [--quick] [--json]
//
// Two in-process daemons (`keyfed run`'s Daemon), each on its own loop and
// thread, each with its SQLite store (WAL, synchronous = full) in a scratch
// directory beside the system's temporary files: alpha.test (users: bob)
// has beta.test as a [[peers]] entry; beta.test (users: alice) receives.
//
// durable message e2e: N messages from bob@alpha.test to alice@beta.test
//     submitted through alpha's control socket by a client on its own
//     thread (C connections, one request in flight on each, as the
//     protocol asks), timed from the first request until the N-th copy is
//     committed in beta's inbox (MessageService's inbox listener, which
//     runs after the commit completed). Baseline: bare SQLite on the same
//     file system, same pragmas, same schema (a fresh store file), the
//     receiver's rows of the same size (a `seen` and an `inbox` row per
//     message) in transactions of exactly the sizes beta's store committed
//     in that run (observed through SQLite hooks, below). A second baseline
//     replays both stores' writes: alpha's submissions (seen + outbound),
//     its delivered marks (UPDATE), and beta's rows, batch for batch.
// handshake: bench_federation's authenticated handshake (a bare node on the
//     main thread's loop opens a session to beta's daemon as alpha.test,
//     then closes it), idle, and again while a second load of N messages
//     runs (back to back, for as long as it runs); vs. bare OpenSSL (same
//     keys), and loaded vs. idle. Also printed: beta's reactor seen from
//     inside, the longest gap between ticks of a 1 ms timer on its loop.
//
// The batch sizes are observed without touching the store: an SQLite auto
// extension puts a commit hook and an update hook on every connection the
// process opens, and counts, per database file and per committed
// transaction, the rows inserted into `inbox` and `outbound` and the
// `outbound` rows updated.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <sqlite3.h>
#include <uv.h>

#include "common/log.h"
#include "config/node_config.h"
#include "daemon/daemon.h"
#include "fed_bench.h"
#include "report.h"
#include "store/sqlite_store.h"

using namespace keyfed;
using bench::die;
using bench::Figure;
using Clock = std::chrono::steady_clock;

namespace {

// ---- what each store commits (SQLite hooks) --------------------------------

struct TxnRows {
  int inbox_inserts = 0;
  int outbound_inserts = 0;
  int outbound_updates = 0;
  bool empty() const { return inbox_inserts == 0 && outbound_inserts == 0 && outbound_updates == 0; }
};

// One database connection's committed transactions. Written by the store's
// writer thread (the hooks run there), read by the main thread under mutex.
struct CommitLog {
  std::string file;
  std::mutex mutex;
  TxnRows current;           // the open transaction (writer thread only)
  std::vector<TxnRows> commits;  // with at least one row changed
  long empty_commits = 0;    // reads (due, next_due, inbox) and flushes

  std::vector<TxnRows> take() {
    std::lock_guard lock(mutex);
    std::vector<TxnRows> out;
    out.swap(commits);
    empty_commits = 0;
    return out;
  }
};

std::atomic<std::int64_t> g_last_tick{0}, g_longest_gap{0};  // beta's loop, in ns

std::mutex g_logs_mutex;
std::vector<std::unique_ptr<CommitLog>> g_logs;

void on_update(void* arg, int op, const char*, const char* table, sqlite3_int64) {
  auto* log = static_cast<CommitLog*>(arg);
  std::string_view t = table;
  if (t == "inbox" && op == SQLITE_INSERT) ++log->current.inbox_inserts;
  if (t == "outbound" && op == SQLITE_INSERT) ++log->current.outbound_inserts;
  if (t == "outbound" && op == SQLITE_UPDATE) ++log->current.outbound_updates;
}

int on_commit(void* arg) {
  auto* log = static_cast<CommitLog*>(arg);
  std::lock_guard lock(log->mutex);
  if (log->current.empty()) {
    ++log->empty_commits;
  } else {
    log->commits.push_back(log->current);
  }
  log->current = {};
  return 0;  // go on with the commit
}

void on_rollback(void* arg) { static_cast<CommitLog*>(arg)->current = {}; }

int watch_connection(sqlite3* db, char**, const sqlite3_api_routines*) {
  const char* name = sqlite3_db_filename(db, "main");
  auto log = std::make_unique<CommitLog>();
  log->file = name != nullptr ? name : "";
  sqlite3_update_hook(db, on_update, log.get());
  sqlite3_commit_hook(db, on_commit, log.get());
  sqlite3_rollback_hook(db, on_rollback, log.get());
  std::lock_guard lock(g_logs_mutex);
  g_logs.push_back(std::move(log));
  return SQLITE_OK;
}

// The log of the last connection opened on `path`.
CommitLog& log_of(const std::filesystem::path& path) {
  std::lock_guard lock(g_logs_mutex);
  for (auto it = g_logs.rbegin(); it != g_logs.rend(); ++it) {
    std::error_code ec;
    if ((*it)->file == path.string() || std::filesystem::equivalent((*it)->file, path, ec)) return **it;
  }
  die("no SQLite connection seen on " + path.string());
}

// ---- the two daemons -------------------------------------------------------

// A daemon on its own loop and thread.
struct DaemonThread {
  uv_loop_t loop{};
  std::unique_ptr<Daemon> daemon;
  uv_async_t stop{};
  uv_timer_t* tick = nullptr;  // closed with the daemon
  std::thread thread;

  void start(const std::filesystem::path& config, Node::Handlers handlers) {
    uv_loop_init(&loop);
    auto cfg = load_node_config(config);
    if (!cfg) die(cfg.error().message);
    auto d = Daemon::start(&loop, std::move(cfg).value(), std::move(handlers));
    if (!d) die(d.error().message);
    daemon = std::move(d).value();
    uv_async_init(&loop, &stop, [](uv_async_t* a) {
      auto* self = static_cast<DaemonThread*>(a->data);
      self->daemon.reset();  // on its loop's thread
      uv_close(reinterpret_cast<uv_handle_t*>(a), nullptr);
      if (self->tick != nullptr) uv_close(reinterpret_cast<uv_handle_t*>(self->tick), nullptr);
    });
    stop.data = this;
  }
  void run() {
    thread = std::thread([this] { uv_run(&loop, UV_RUN_DEFAULT); });
  }
  void finish() {
    uv_async_send(&stop);
    thread.join();
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0) std::fprintf(stderr, "bench: a daemon left handles open\n");
  }
};

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The testbed's resolver sections (paths made absolute), then `rest`.
std::filesystem::path write_config(const std::filesystem::path& dir, const std::filesystem::path& testbed,
                                   const std::string& name, const std::string& rest) {
  std::string base = read_file(testbed / "keyfed.toml");
  base = std::regex_replace(base, std::regex("\"([a-z0-9][a-z0-9.-]*\\.(ds|signed|zone))\""),
                            "\"" + testbed.string() + "/$1\"");
  auto path = dir / (name + ".toml");
  std::ofstream(path) << base << "\n[log]\nlevel = \"error\"\n" << rest;
  return path;
}

std::string node_config(const std::filesystem::path& dir, const std::filesystem::path& testbed,
                        const std::string& name, const std::string& domain, const std::string& key,
                        const std::string& user) {
  return "[node]\nlisten = \"127.0.0.1\"\nport = 0\n\n"
         "[[domains]]\nname = \"" + domain + "\"\nkeys = [\"" + (testbed / "fedkeys" / key).string() +
         "\"]\nusers = [\"" + user + "\"]\n\n"
         "[store]\npath = \"" + (dir / (name + ".db")).string() + "\"\nsynchronous = \"full\"\n\n"
         "[control]\nsocket = \"" + (dir / (name + ".sock")).string() + "\"\n\n"
         // The per-peer message budget (100/s by default) would be measured instead of the store.
         "[limits]\nmessage_rate = 1000000\nmessage_burst = 1000000\n\n"
         "[delivery]\nretry_first_s = 1\nretry_max_s = 2\n\n";
}

// ---- a control socket client -----------------------------------------------

std::string json_request(const std::string& cpim) {
  return nlohmann::json{{"command", "submit"}, {"cpim", cpim}}.dump() + "\n";
}

struct SubmitRun {
  Clock::time_point started, answered;  // first request sent, last answer read
};

// Submits `count` messages on `connections` connections to the socket, one
// request in flight on each; blocking, on the calling thread.
SubmitRun submit_all(const std::filesystem::path& socket, long count, int connections, const std::string& request) {
  struct Conn {
    int fd = -1;
    std::string in;
  };
  std::vector<Conn> conns(static_cast<std::size_t>(connections));
  for (Conn& c : conns) {
    c.fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", socket.c_str());
    if (::connect(c.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) die("cannot connect to " + socket.string());
  }
  auto send_one = [&](Conn& c) {
    std::size_t off = 0;
    while (off < request.size()) {
      ssize_t n = ::send(c.fd, request.data() + off, request.size() - off, MSG_NOSIGNAL);
      if (n <= 0) die("control socket write failed");
      off += static_cast<std::size_t>(n);
    }
  };
  SubmitRun run;
  run.started = Clock::now();
  long sent = 0, answered = 0;
  for (Conn& c : conns) {
    if (sent < count) {
      send_one(c);
      ++sent;
    }
  }
  std::vector<pollfd> fds(conns.size());
  char buf[65536];
  while (answered < count) {
    for (std::size_t i = 0; i < conns.size(); ++i) fds[i] = {conns[i].fd, POLLIN, 0};
    if (::poll(fds.data(), fds.size(), 30000) <= 0) die("no answer from the control socket in 30 s");
    for (std::size_t i = 0; i < conns.size(); ++i) {
      if ((fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      Conn& c = conns[i];
      ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
      if (n <= 0) die("the control socket closed");
      c.in.append(buf, static_cast<std::size_t>(n));
      for (std::size_t nl; (nl = c.in.find('\n')) != std::string::npos;) {
        auto answer = nlohmann::json::parse(c.in.substr(0, nl), nullptr, false);
        c.in.erase(0, nl + 1);
        if (!answer.is_object() || answer.value("ok", false) != true) die("submit refused: " + answer.dump());
        ++answered;
        if (sent < count) {
          send_one(c);
          ++sent;
        }
      }
    }
  }
  run.answered = Clock::now();
  for (Conn& c : conns) ::close(c.fd);
  return run;
}

// ---- bare SQLite baseline --------------------------------------------------

struct RawDb {
  sqlite3* db = nullptr;
  std::map<std::string, sqlite3_stmt*> statements;

  // A fresh store file (the store's own schema, made by opening it once),
  // opened again bare with the store's pragmas.
  explicit RawDb(const std::filesystem::path& path) {
    {
      uv_loop_t loop;
      uv_loop_init(&loop);
      auto store = open_sqlite_store(&loop, {.path = path, .synchronous = StoreSync::Full});
      if (!store) die(store.error().message);
      store->reset();
      uv_run(&loop, UV_RUN_DEFAULT);
      uv_loop_close(&loop);
    }
    if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK) die("cannot open " + path.string());
    for (const char* sql : {"PRAGMA locking_mode = EXCLUSIVE", "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = FULL", "PRAGMA foreign_keys = OFF"}) {
      exec(sql);
    }
  }
  ~RawDb() {
    for (auto& [sql, stmt] : statements) sqlite3_finalize(stmt);
    sqlite3_close_v2(db);
  }
  void exec(const char* sql) {
    if (sqlite3_exec(db, sql, nullptr, nullptr, nullptr) != SQLITE_OK) die(std::string(sql) + ": " + sqlite3_errmsg(db));
  }
  sqlite3_stmt* statement(const std::string& sql) {
    auto it = statements.find(sql);
    if (it == statements.end()) {
      sqlite3_stmt* s = nullptr;
      if (sqlite3_prepare_v3(db, sql.c_str(), -1, SQLITE_PREPARE_PERSISTENT, &s, nullptr) != SQLITE_OK) {
        die(sql + ": " + sqlite3_errmsg(db));
      }
      it = statements.emplace(sql, s).first;
    }
    sqlite3_reset(it->second);
    return it->second;
  }
  void done(sqlite3_stmt* s) {
    if (sqlite3_step(s) != SQLITE_DONE) die(std::string("step: ") + sqlite3_errmsg(db));
  }
};

void bind_text(sqlite3_stmt* s, int i, const std::string& text) {
  sqlite3_bind_text(s, i, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
}

// The rows one message costs, the same sizes as the store's: the message's
// bytes as delivered (with the identity the origin added), its id, the
// addresses and domains.
struct Rows {
  std::string cpim;
  long next = 0;  // ids made so far
  std::string id(long n) const {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%032lx", n);
    return buf;
  }
  UnixMs now() const {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
  void seen(RawDb& db, const std::string& domain, const std::string& id) {
    sqlite3_stmt* s = db.statement("INSERT OR IGNORE INTO seen (sender_domain, id, accepted) VALUES (?, ?, ?)");
    bind_text(s, 1, domain);
    bind_text(s, 2, id);
    sqlite3_bind_int64(s, 3, now());
    db.done(s);
  }
  void inbox(RawDb& db) {
    std::string i = id(next++);
    seen(db, "alpha.test", i);
    sqlite3_stmt* s = db.statement(
        "INSERT INTO inbox (owner, id, from_uri, to_uri, peer_domain, decision, received, cpim) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
    bind_text(s, 1, "alice@beta.test");
    bind_text(s, 2, i);
    bind_text(s, 3, "im:bob@alpha.test");
    bind_text(s, 4, "im:alice@beta.test");
    bind_text(s, 5, "alpha.test");
    bind_text(s, 6, "authenticated");
    sqlite3_bind_int64(s, 7, now());
    sqlite3_bind_blob(s, 8, cpim.data(), static_cast<int>(cpim.size()), SQLITE_TRANSIENT);
    db.done(s);
  }
  void outbound(RawDb& db) {
    std::string i = id(next++);
    seen(db, "alpha.test", i);
    sqlite3_stmt* s = db.statement(
        "INSERT INTO outbound (id, to_domain, sender, submitted, expires, state, next_attempt, cpim) "
        "VALUES (?, ?, ?, ?, ?, 0, ?, ?)");
    bind_text(s, 1, i);
    bind_text(s, 2, "beta.test");
    bind_text(s, 3, "bob@alpha.test");
    sqlite3_bind_int64(s, 4, now());
    sqlite3_bind_int64(s, 5, now() + 259200000);
    sqlite3_bind_int64(s, 6, now());
    sqlite3_bind_blob(s, 7, cpim.data(), static_cast<int>(cpim.size()), SQLITE_TRANSIENT);
    db.done(s);
  }
  long delivered = 0;  // the oldest outbound rows are delivered first
  void mark_delivered(RawDb& db) {
    sqlite3_stmt* s = db.statement(
        "UPDATE outbound SET state = 1, finished = ?, last_error = '' WHERE id = ? AND to_domain = ? AND state = 0");
    sqlite3_bind_int64(s, 1, now());
    bind_text(s, 2, id(delivered++));
    bind_text(s, 3, "beta.test");
    db.done(s);
  }
};

// Replays `commits` on a fresh file: one transaction per commit, the same
// rows in it. The time taken.
Clock::duration replay(const std::filesystem::path& path, const std::vector<TxnRows>& commits,
                       const std::string& cpim) {
  RawDb db(path);
  Rows rows{cpim};
  auto start = Clock::now();
  for (const TxnRows& t : commits) {
    db.exec("BEGIN IMMEDIATE");
    for (int i = 0; i < t.outbound_inserts; ++i) rows.outbound(db);
    for (int i = 0; i < t.outbound_updates; ++i) rows.mark_delivered(db);
    for (int i = 0; i < t.inbox_inserts; ++i) rows.inbox(db);
    db.exec("COMMIT");
  }
  return Clock::now() - start;
}

// ---- figures ---------------------------------------------------------------

double ns(Clock::duration d) { return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()); }

struct Latencies {
  std::vector<double> ns;
  double mean() const {
    double sum = 0;
    for (double v : ns) sum += v;
    return ns.empty() ? 0 : sum / static_cast<double>(ns.size());
  }
  double pct(double p) const {
    if (ns.empty()) return 0;
    std::vector<double> v = ns;
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())))];
  }
};

struct BatchStats {
  long commits = 0, rows = 0, biggest = 0;
};

BatchStats batches(const std::vector<TxnRows>& commits, int TxnRows::*field) {
  BatchStats b;
  for (const TxnRows& t : commits) {
    if (t.*field == 0) continue;
    ++b.commits;
    b.rows += t.*field;
    b.biggest = std::max<long>(b.biggest, t.*field);
  }
  return b;
}

std::string fs_type(const std::filesystem::path& dir) {
  struct statfs st {};
  if (statfs(dir.c_str(), &st) != 0) return "?";
  switch (static_cast<unsigned long>(st.f_type)) {
    case 0xEF53: return "ext4";
    case 0x01021994: return "tmpfs";
    case 0x58465342: return "xfs";
    case 0x9123683E: return "btrfs";
    case 0x794c7630: return "overlayfs";
    default: {
      char buf[32];
      std::snprintf(buf, sizeof buf, "0x%lx", static_cast<unsigned long>(st.f_type));
      return buf;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bench::Options options = bench::parse_options(argc, argv, "bench_store");
  const bool quick = options.quick;
  set_log_level(LogLevel::Error);
  const std::filesystem::path tb = std::filesystem::absolute(options.testbed);
  auto base = load_node_config(tb / "keyfed.toml");
  if (!base) die(base.error().message);
  const long messages = quick ? 300 : 20000;
  const int connections = 32;
  const long idle_handshakes = quick ? 20 : 500;

  sqlite3_auto_extension(reinterpret_cast<void (*)()>(watch_connection));

  // Scratch directory: the stores and the baseline's files, one file system.
  std::string pattern = (std::filesystem::temp_directory_path() / "keyfed-bench-store.XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr) die("mkdtemp failed");
  const std::filesystem::path dir = pattern;

  // The message: bench_federation's, with bob and alice.
  const std::string cpim = "From: <im:bob@alpha.test>\r\nTo: <im:alice@beta.test>\r\n\r\nContent-Type: text/plain\r\n\r\n" +
                           std::string(160, 'x');
  const std::string request = json_request(cpim);

  // beta.test receives; alpha.test sends to it ([[peers]]).
  std::atomic<long> received{0}, stored{0}, target{0};
  std::atomic<std::int64_t> last_stored_ns{0};
  DaemonThread beta, alpha;
  {
    Node::Handlers handlers;
    handlers.on_message = [&](const DeliveredMessage&) { received.fetch_add(1); };
    handlers.audit = [](const std::string&) {};
    beta.start(write_config(dir, tb, "beta", node_config(dir, tb, "beta", "beta.test", "beta-new.pem", "alice")),
               handlers);
    beta.daemon->messages().listen_inbox([&](const InboxMessage&) {
      long n = stored.fetch_add(1) + 1;
      if (n == target.load()) last_stored_ns = Clock::now().time_since_epoch().count();
    });
  }
  const int beta_port = beta.daemon->node().port();
  {
    Node::Handlers handlers;
    handlers.audit = [](const std::string&) {};
    alpha.start(write_config(dir, tb, "alpha",
                             node_config(dir, tb, "alpha", "alpha.test", "alpha-1.pem", "bob") +
                                 "[[peers]]\ndomain = \"beta.test\"\naddress = \"127.0.0.1\"\nport = " +
                                 std::to_string(beta_port) + "\n"),
                handlers);
  }
  // beta's reactor, watched from inside: a 1 ms repeating timer, and the
  // longest gap between two of its ticks (reset at each load's start).
  uv_timer_t tick;
  uv_timer_init(&beta.loop, &tick);
  uv_timer_start(&tick, [](uv_timer_t*) {
    std::int64_t now = Clock::now().time_since_epoch().count();
    std::int64_t last = g_last_tick.exchange(now);
    if (last != 0 && now - last > g_longest_gap) g_longest_gap = now - last;
  }, 1, 1);
  beta.tick = &tick;
  beta.run();
  alpha.run();

  // The prober: bench_federation's client node, here as alpha.test (its
  // own loop, on this thread) against beta's daemon.
  uv_loop_t loop;
  uv_loop_init(&loop);
  std::vector<Figure> figures;
  Latencies idle, loaded;
  SubmitRun first{}, second{};
  Clock::duration first_e2e{}, second_e2e{};
  std::vector<TxnRows> alpha_commits, beta_commits;
  long first_received = 0, second_received = 0;
  double first_gap = 0, second_gap = 0;
  {
    bench::Side prober = bench::make_side(&loop, *base, "alpha.test", tb / "fedkeys" / "alpha-1.pem");
    auto handshake = [&](Latencies& into) {
      // This loop sleeps while a load runs alone: its cached time would be
      // that old, and the connect time out at once.
      uv_update_time(&loop);
      auto start = Clock::now();
      SessionInfo s = bench::connect_once(&loop, prober, beta_port, "alpha.test", "beta.test");
      prober.node->close_session(s.id, "bench");
      into.ns.push_back(ns(Clock::now() - start));
    };
    Latencies warm;
    handshake(warm);  // warms both key caches

    // Each load: `messages` submitted on alpha; done when all are in beta's inbox.
    auto load = [&](bool probe, SubmitRun& submitted, Clock::duration& e2e, long& got, double& gap) {
      long before_stored = stored.load(), before_received = received.load();
      g_last_tick = 0;
      g_longest_gap = 0;
      target = before_stored + messages;
      std::thread client([&] { submitted = submit_all(dir / "alpha.sock", messages, connections, request); });
      if (probe) {
        // Handshakes for as long as the load runs (only those that began
        // before the last message was committed count).
        while (stored.load() < target.load()) {
          Latencies one;
          handshake(one);
          if (stored.load() < target.load()) loaded.ns.push_back(one.ns.front());
        }
      } else {
        while (stored.load() < target.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      client.join();
      e2e = Clock::time_point(Clock::duration(last_stored_ns.load())) - submitted.started;
      got = received.load() - before_received;
      gap = static_cast<double>(g_longest_gap.load());
    };

    for (long i = 0; i < idle_handshakes; ++i) handshake(idle);

    // Every commit of both stores from here on is logged.
    const auto alpha_db = dir / "alpha.db", beta_db = dir / "beta.db";
    log_of(alpha_db).take();
    log_of(beta_db).take();
    load(false, first, first_e2e, first_received, first_gap);
    // The delivered marks of the last ACKs may still be on their way.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    alpha_commits = log_of(alpha_db).take();
    beta_commits = log_of(beta_db).take();

    load(true, second, second_e2e, second_received, second_gap);

    // Bare OpenSSL, the same keys (bench_federation's baseline), in this run.
    auto alpha_id = load_domain_identity("alpha.test", tb / "fedkeys" / "alpha-1.pem");
    auto beta_id = load_domain_identity("beta.test", tb / "fedkeys" / "beta-new.pem");
    if (!alpha_id || !beta_id) die("cannot load testbed keys");
    SslCtxPtr client_ctx = bench::bare_ctx(false, *alpha_id), server_ctx = bench::bare_ctx(true, *beta_id);
    auto start = Clock::now();
    for (long i = 0; i < idle_handshakes; ++i) bench::BarePair(client_ctx.get(), server_ctx.get()).handshake();
    const double bare_hs = ns(Clock::now() - start) / static_cast<double>(idle_handshakes);

    // Bare SQLite: beta's batches, then both stores' batches, on fresh files.
    const double raw_beta = ns(replay(dir / "raw-beta.db", beta_commits, cpim));
    const double raw_both = raw_beta + ns(replay(dir / "raw-alpha.db", alpha_commits, cpim));

    const double e2e_ns = ns(first_e2e) / static_cast<double>(messages);
    figures.push_back({"durable message e2e", e2e_ns, raw_beta / static_cast<double>(messages), messages,
                       "bare SQLite: the receiver's rows (seen + inbox), its batches"});
    figures.push_back({"e2e vs both stores' rows", e2e_ns, raw_both / static_cast<double>(messages), messages,
                       "bare SQLite: both stores' rows (submit, inbox, delivered), their batches"});
    figures.push_back({"handshake idle", idle.mean(), bare_hs, static_cast<long>(idle.ns.size())});
    figures.push_back({"handshake under load", loaded.mean(), bare_hs, static_cast<long>(loaded.ns.size())});
    figures.push_back({"handshake loaded vs idle", loaded.mean(), idle.mean(), static_cast<long>(loaded.ns.size()),
                       "the idle handshake, same run"});
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  alpha.finish();
  beta.finish();

  bench::report(figures, options.json, "bare OpenSSL (same keys, TLS 1.3, both certificates)");
  if (!options.json) {
    auto per_s = [&](Clock::duration d) { return static_cast<double>(messages) / (ns(d) / 1e9); };
    BatchStats inbox = batches(beta_commits, &TxnRows::inbox_inserts);
    BatchStats submits = batches(alpha_commits, &TxnRows::outbound_inserts);
    BatchStats marks = batches(alpha_commits, &TxnRows::outbound_updates);
    std::printf("\n%ld messages of %zu bytes, %d control connections; stores in %s (%s), synchronous = full\n",
                messages, cpim.size(), connections, dir.c_str(), fs_type(dir).c_str());
    std::printf("load 1 (alone):      all submitted in %.0f ms (%.0f/s), all in beta's inbox in %.0f ms (%.0f/s); "
                "MESSAGEs beta received: %ld\n",
                ns(first.answered - first.started) / 1e6, per_s(first.answered - first.started), ns(first_e2e) / 1e6,
                per_s(first_e2e), first_received);
    std::printf("load 2 (handshakes): all submitted in %.0f ms (%.0f/s), all in beta's inbox in %.0f ms (%.0f/s); "
                "MESSAGEs beta received: %ld\n",
                ns(second.answered - second.started) / 1e6, per_s(second.answered - second.started),
                ns(second_e2e) / 1e6, per_s(second_e2e), second_received);
    auto show = [](const char* what, const BatchStats& b) {
      std::printf("  %-30s %6ld transactions, %7.1f rows each on average, %5ld at most\n", what, b.commits,
                  b.commits ? static_cast<double>(b.rows) / static_cast<double>(b.commits) : 0.0, b.biggest);
    };
    std::printf("beta's reactor: longest gap between two ticks of a 1 ms timer: %.1f ms in load 1, %.1f ms in load 2\n",
                first_gap / 1e6, second_gap / 1e6);
    std::printf("batches of load 1 (rows per committed transaction):\n");
    show("beta: inbox copies", inbox);
    show("alpha: submissions (outbound)", submits);
    show("alpha: delivered marks", marks);
    std::printf("handshake ms        mean     p50     p99     max\n");
    for (auto [name, l] : {std::pair{"idle", &idle}, std::pair{"under load", &loaded}}) {
      std::printf("  %-14s %8.2f %7.2f %7.2f %7.2f  (%zu)\n", name, l->mean() / 1e6, l->pct(0.5) / 1e6,
                  l->pct(0.99) / 1e6, l->pct(1.0) / 1e6, l->ns.size());
    }
  }
  std::filesystem::remove_all(dir);
  return 0;
}
