// keyfed_load: attackers and a measuring legitimate peer, one per process,
// for bench/load.sh (docs/BENCH.md, "Load"). Built on tests/hostile_peer.h.
//
//   keyfed_load claims --port P --from 127.0.0.2 --rate 1000 --seconds S --suffix wild.test --key FILE
//       Connections at a paced rate, many in flight (epoll, optionally
//       --workers N processes); each does TLS with a self-signed certificate
//       of KEY and claims a random name <random>.<suffix>: a key cache miss on
//       the node every time. Counts what became of each attempt.
//   keyfed_load silent --port P --from 127.0.0.3 --count 500 --seconds S
//       COUNT TCP connections that send nothing; any the node closes is
//       reopened at once.
//   keyfed_load noread --port P --from 127.0.0.4 --key FILE --domain D --seconds S
//       An authenticated peer of D that floods PINGs and SUBSCRIBEs and never
//       reads; reconnects when cut off.
//   keyfed_load legit --port P --key FILE --domain D --to USER@DOMAIN --count N
//       N times: TCP connect, TLS, CLAIM, CLAIM_OK, one MESSAGE, its ACK; the
//       latency from the start of the connect to the ACK.
//
// Each prints one summary line on stdout, "NAME: key=value ..." (every value a
// number), or one JSON object with --json; details for a person (last errors)
// go to stderr. SIGTERM or SIGINT ends a run early, with its summary. Exit
// status: 0 when it ran (whatever the figures), 2 on a usage error, 1 when it
// could not run at all (e.g. unreadable key).
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <openssl/err.h>

#include "federation/frames.h"
#include "hostile_peer.h"

using namespace keyfed;
using namespace keyfed::hostile;
using Json = nlohmann::ordered_json;

namespace {

// ---- stopping early ------------------------------------------------------------------

volatile std::sig_atomic_t g_stop = 0;
pid_t g_children[64];
volatile std::sig_atomic_t g_child_count = 0;

void on_stop_signal(int) {
  g_stop = 1;
  for (int i = 0; i < g_child_count; ++i) kill(g_children[i], SIGTERM);  // claims workers
}

/// SIGTERM and SIGINT set g_stop (no SA_RESTART: blocking waits return early).
void install_stop_handler() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
}

bool stopping() { return g_stop != 0; }

[[noreturn]] void die(const std::string& why) {
  std::fprintf(stderr, "keyfed_load: %s\n", why.c_str());
  std::exit(1);
}

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

/// Nearest-rank percentile of sorted values (0 when empty).
double percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  auto rank = static_cast<std::size_t>(std::ceil(p * static_cast<double>(sorted.size())));
  return sorted[std::clamp<std::size_t>(rank, 1, sorted.size()) - 1];
}

void print_summary(const char* name, const Json& summary, bool json) {
  if (json) {
    std::printf("%s\n", summary.dump().c_str());
  } else {
    std::string line = std::string(name) + ":";
    for (const auto& [key, value] : summary.items()) {
      line += " " + key + "=";
      line += value.is_number_float() ? fmt::format("{:.2f}", value.get<double>())
              : value.is_string()     ? value.get<std::string>()
                                      : value.dump();
    }
    std::printf("%s\n", line.c_str());
  }
  std::fflush(stdout);
}

/// Many sockets at once: as many descriptors as the hard limit allows.
void raise_fd_limit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
}

void close_with_reset(int fd) {
  set_reset_on_close(fd);
  ::close(fd);
}

int connect_error(int fd) {
  int err = 0;
  socklen_t len = sizeof err;
  ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
  return err;
}

struct Common {
  int port = 0;
  std::string address = "127.0.0.1";
  std::string sni = "alpha.test";
  bool json = false;
};

void add_common(CLI::App* cmd, Common& c) {
  cmd->add_option("--port", c.port, "The node's port")->required()->check(CLI::Range(1, 65535));
  cmd->add_option("--address", c.address, "The node's address (default 127.0.0.1)");
  cmd->add_option("--sni", c.sni, "SNI: the domain to reach (default alpha.test)");
  cmd->add_flag("--json", c.json, "One JSON object instead of key=value");
}

TlsClientContext make_context(const Common& c, const std::string& key_file) {
  TlsOptions options;
  options.sni = c.sni;
  options.key_file = key_file;
  auto context = TlsClientContext::create(options);
  if (!context) die(context.error().message);
  return std::move(context).value();
}

// ---- claims: random names at a paced rate -----------------------------------------

struct ClaimsOptions {
  Common common;
  std::string from = "127.0.0.2";
  double rate = 1000;
  double seconds = 10;
  std::string suffix = "wild.test";
  std::string key_file;
  int workers = 1;
  int timeout_ms = 15000;  // above the node's default handshake_timeout (10 s): see its own Timeout ERROR
  std::size_t max_inflight = 8000;
};

/// What became of each attempted connection; one counter per outcome.
struct ClaimCounters {
  std::uint64_t attempted = 0;
  std::uint64_t skipped = 0;             ///< not started: max_inflight reached
  std::uint64_t refused = 0;             ///< TCP connect refused
  std::uint64_t connect_failed = 0;      ///< other connect errors (e.g. no local port left)
  std::uint64_t closed_before_tls = 0;   ///< the node closed or reset before sending any TLS byte
  std::uint64_t tls_failed = 0;          ///< the handshake failed after the node answered
  std::uint64_t claim_ok = 0;
  std::array<std::uint64_t, 7> error{};  ///< ERROR frames by code (index 0: unknown codes)
  std::uint64_t closed_after_tls = 0;    ///< closed without an answer to CLAIM
  std::uint64_t unexpected = 0;          ///< another frame than CLAIM_OK / ERROR
  std::uint64_t timeout_connect = 0, timeout_tls = 0, timeout_claim = 0;
  std::uint64_t in_flight_at_end = 0;
  double elapsed_s = 0;  ///< how long attempts were started (the longest worker)

  Json to_json() const {
    Json j;
    j["elapsed_s"] = elapsed_s;
    j["attempted"] = attempted;
    j["skipped"] = skipped;
    j["refused"] = refused;
    j["connect_failed"] = connect_failed;
    j["closed_before_tls"] = closed_before_tls;
    j["tls_failed"] = tls_failed;
    j["claim_ok"] = claim_ok;
    for (std::size_t code = 1; code < error.size(); ++code) {
      std::string name = fmt::format("error_{}", code);
      switch (static_cast<ErrorCode>(code)) {
        case ErrorCode::ProtocolViolation: name = "error_protocol_violation"; break;
        case ErrorCode::FrameTooLarge: name = "error_frame_too_large"; break;
        case ErrorCode::ClaimRefused: name = "error_claim_refused"; break;
        case ErrorCode::Timeout: name = "error_timeout"; break;
        case ErrorCode::Shutdown: name = "error_shutdown"; break;
        case ErrorCode::KeyRevoked: name = "error_key_revoked"; break;
      }
      j[name] = error[code];
    }
    j["error_other"] = error[0];
    j["closed_after_tls"] = closed_after_tls;
    j["unexpected"] = unexpected;
    j["timeout_connect"] = timeout_connect;
    j["timeout_tls"] = timeout_tls;
    j["timeout_claim"] = timeout_claim;
    j["in_flight_at_end"] = in_flight_at_end;
    return j;
  }
  static ClaimCounters from_json(const Json& j) {
    ClaimCounters c;
    c.elapsed_s = j["elapsed_s"];
    c.attempted = j["attempted"];
    c.skipped = j["skipped"];
    c.refused = j["refused"];
    c.connect_failed = j["connect_failed"];
    c.closed_before_tls = j["closed_before_tls"];
    c.tls_failed = j["tls_failed"];
    c.claim_ok = j["claim_ok"];
    c.error[0] = j["error_other"];
    std::size_t code = 1;
    for (const char* name : {"error_protocol_violation", "error_frame_too_large", "error_claim_refused",
                             "error_timeout", "error_shutdown", "error_key_revoked"}) {
      c.error[code++] = j[name];
    }
    c.closed_after_tls = j["closed_after_tls"];
    c.unexpected = j["unexpected"];
    c.timeout_connect = j["timeout_connect"];
    c.timeout_tls = j["timeout_tls"];
    c.timeout_claim = j["timeout_claim"];
    c.in_flight_at_end = j["in_flight_at_end"];
    return c;
  }
  void add(const ClaimCounters& o) {
    elapsed_s = std::max(elapsed_s, o.elapsed_s);
    attempted += o.attempted;
    skipped += o.skipped;
    refused += o.refused;
    connect_failed += o.connect_failed;
    closed_before_tls += o.closed_before_tls;
    tls_failed += o.tls_failed;
    claim_ok += o.claim_ok;
    for (std::size_t i = 0; i < error.size(); ++i) error[i] += o.error[i];
    closed_after_tls += o.closed_after_tls;
    unexpected += o.unexpected;
    timeout_connect += o.timeout_connect;
    timeout_tls += o.timeout_tls;
    timeout_claim += o.timeout_claim;
    in_flight_at_end += o.in_flight_at_end;
  }
};

/// One claims process: an epoll loop over every connection in flight.
class ClaimsWorker {
 public:
  ClaimsWorker(const ClaimsOptions& options, double rate, std::uint64_t seed)
      : options_(options), rate_(rate), random_(seed), context_(make_context(options.common, options.key_file)) {
    epoll_ = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_ < 0) die(fmt::format("epoll_create1: {}", std::strerror(errno)));
  }
  ~ClaimsWorker() {
    for (auto& [id, conn] : conns_) {
      conn.ssl.reset();
      close_with_reset(conn.fd);
    }
    ::close(epoll_);
  }

  ClaimCounters run() {
    auto start = Clock::now();
    auto end = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options_.seconds));
    std::uint64_t started = 0;
    std::array<epoll_event, 512> events{};
    for (;;) {
      auto now = Clock::now();
      if (now >= end || stopping()) break;
      // Paced: attempt k starts at k / rate seconds, whatever the node does.
      auto start_due = [&](Clock::time_point t) {
        double elapsed = std::chrono::duration<double>(t - start).count();
        auto due = static_cast<std::uint64_t>(elapsed * rate_) + 1;
        for (; started < due; ++started) start_one(t);
      };
      start_due(now);
      while (!timeouts_.empty() && timeouts_.front().first <= now) {
        std::uint64_t id = timeouts_.front().second;
        timeouts_.pop_front();
        auto it = conns_.find(id);
        if (it == conns_.end()) continue;
        switch (it->second.stage) {
          case Stage::Connecting: ++counters_.timeout_connect; break;
          case Stage::Handshaking: ++counters_.timeout_tls; break;
          case Stage::Claiming:
          case Stage::Reading: ++counters_.timeout_claim; break;
        }
        finish(it);
      }
      auto next_start = start + std::chrono::duration_cast<Clock::duration>(
                                    std::chrono::duration<double>(static_cast<double>(started) / rate_));
      auto wake = std::min(next_start, end);
      if (!timeouts_.empty()) wake = std::min(wake, timeouts_.front().first);
      int wait_ms = static_cast<int>(std::max<double>(0, std::ceil(ms_between(Clock::now(), wake))));
      int n = epoll_wait(epoll_, events.data(), static_cast<int>(events.size()), wait_ms);
      for (int i = 0; i < n; ++i) {
        if (i % 32 == 31) start_due(Clock::now());  // handshakes cost CPU: keep the pace within a batch
        auto it = conns_.find(events[static_cast<std::size_t>(i)].data.u64);
        if (it != conns_.end() && drive(it->second, it->first)) finish(it);
      }
    }
    counters_.in_flight_at_end = conns_.size();
    counters_.elapsed_s = std::chrono::duration<double>(Clock::now() - start).count();
    return counters_;
  }

  const std::string& last_tls_error() const { return last_tls_error_; }

 private:
  enum class Stage { Connecting, Handshaking, Claiming, Reading };
  struct Conn {
    int fd = -1;
    SslPtr ssl;
    Stage stage = Stage::Connecting;
    std::uint32_t interest = 0;
    std::vector<std::uint8_t> claim;
    FrameReader reader{64 * 1024};
  };
  using Iterator = std::unordered_map<std::uint64_t, Conn>::iterator;

  std::string random_name() {
    static constexpr char kAlphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    std::string label(12, 'x');
    for (char& c : label) c = kAlphabet[random_() % (sizeof kAlphabet - 1)];
    return label + "." + options_.suffix;
  }

  void start_one(Clock::time_point now) {
    ++counters_.attempted;
    if (conns_.size() >= options_.max_inflight) {
      ++counters_.skipped;
      return;
    }
    StartedConnect started =
        start_connect({.port = options_.common.port, .address = options_.common.address, .from = options_.from});
    if (!started.ok()) {
      ++(started.error == ECONNREFUSED ? counters_.refused : counters_.connect_failed);
      if (started.error != ECONNREFUSED) last_connect_error_ = started.detail;
      return;
    }
    std::uint64_t id = next_id_++;
    Conn& conn = conns_[id];
    conn.fd = started.fd;
    conn.claim = encode_claim(random_name());
    conn.interest = EPOLLOUT;
    epoll_event ev{};
    ev.events = conn.interest;
    ev.data.u64 = id;
    epoll_ctl(epoll_, EPOLL_CTL_ADD, conn.fd, &ev);
    timeouts_.emplace_back(now + std::chrono::milliseconds(options_.timeout_ms), id);
  }

  void want(Conn& conn, std::uint64_t id, std::uint32_t events) {
    if (conn.interest == events) return;
    conn.interest = events;
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = id;
    epoll_ctl(epoll_, EPOLL_CTL_MOD, conn.fd, &ev);
  }

  void finish(Iterator it) {
    it->second.ssl.reset();
    // A reset leaves no TIME_WAIT here: this side's ports are what limits the rate.
    close_with_reset(it->second.fd);  // also removes it from the epoll set
    conns_.erase(it);
  }

  /// Moves one connection on; true when it has an outcome.
  bool drive(Conn& conn, std::uint64_t id);

  ClaimsOptions options_;
  double rate_;
  std::mt19937_64 random_;
  TlsClientContext context_;
  int epoll_ = -1;
  std::unordered_map<std::uint64_t, Conn> conns_;
  std::deque<std::pair<Clock::time_point, std::uint64_t>> timeouts_;  // in start order: all share one timeout
  std::uint64_t next_id_ = 1;
  ClaimCounters counters_;
  std::string last_tls_error_, last_connect_error_;
};

bool ClaimsWorker::drive(Conn& conn, std::uint64_t id) {
  if (conn.stage == Stage::Connecting) {
    if (int err = connect_error(conn.fd); err != 0) {
      ++(err == ECONNREFUSED ? counters_.refused : counters_.connect_failed);
      return true;
    }
    auto ssl = new_client_ssl(context_, conn.fd);
    if (!ssl) die(ssl.error().message);
    conn.ssl = std::move(ssl).value();
    conn.stage = Stage::Handshaking;
  }
  if (conn.stage == Stage::Handshaking) {
    ERR_clear_error();
    int r = SSL_connect(conn.ssl.get());
    if (r != 1) {
      int err = SSL_get_error(conn.ssl.get(), r);
      if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        ERR_clear_error();
        want(conn, id, err == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT);
        return false;
      }
      std::string reason = openssl_reason();
      if (BIO_number_read(SSL_get_rbio(conn.ssl.get())) == 0) {
        ++counters_.closed_before_tls;
      } else {
        ++counters_.tls_failed;
        last_tls_error_ = reason;
      }
      return true;
    }
    conn.stage = Stage::Claiming;
  }
  if (conn.stage == Stage::Claiming) {
    ERR_clear_error();
    int n = SSL_write(conn.ssl.get(), conn.claim.data(), static_cast<int>(conn.claim.size()));
    if (n <= 0) {
      int err = SSL_get_error(conn.ssl.get(), n);
      ERR_clear_error();
      if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        want(conn, id, err == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT);
        return false;
      }
      ++counters_.closed_after_tls;
      return true;
    }
    conn.stage = Stage::Reading;
  }
  std::uint8_t buf[4096];
  for (;;) {
    ERR_clear_error();
    int n = SSL_read(conn.ssl.get(), buf, sizeof buf);
    if (n <= 0) {
      int err = SSL_get_error(conn.ssl.get(), n);
      ERR_clear_error();
      if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        want(conn, id, err == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT);
        return false;
      }
      ++counters_.closed_after_tls;
      return true;
    }
    conn.reader.feed({buf, static_cast<std::size_t>(n)});
    auto frame = conn.reader.next();
    if (!frame) {
      ++counters_.unexpected;
      return true;
    }
    if (!frame->has_value()) continue;
    const Frame& f = **frame;
    if (f.type == static_cast<std::uint8_t>(FrameType::ClaimOk)) {
      ++counters_.claim_ok;
    } else if (f.type == static_cast<std::uint8_t>(FrameType::Error)) {
      auto error = parse_error(f.payload);
      auto code = error ? static_cast<std::size_t>(error->code) : 0;
      ++counters_.error[code < counters_.error.size() ? code : 0];
    } else {
      ++counters_.unexpected;
    }
    return true;
  }
}

int run_claims(const ClaimsOptions& o) {
  raise_fd_limit();
  // Each worker reports its counters as one JSON line on a pipe.
  std::vector<std::pair<pid_t, int>> children;
  auto seed = std::random_device{}();
  std::fflush(stdout);
  for (int w = 0; w < o.workers; ++w) {
    int fds[2];
    if (pipe(fds) != 0) die("pipe");
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
      ::close(fds[0]);
      ClaimsWorker worker(o, o.rate / o.workers, seed + static_cast<std::uint64_t>(w) * 7919 + static_cast<std::uint64_t>(getpid()));
      ClaimCounters c = worker.run();
      if (!worker.last_tls_error().empty()) {
        std::fprintf(stderr, "claims worker %d: last TLS failure: %s\n", w, worker.last_tls_error().c_str());
      }
      std::string line = c.to_json().dump() + "\n";
      (void)!write(fds[1], line.data(), line.size());
      ::close(fds[1]);
      std::fflush(stderr);
      _exit(0);
    }
    ::close(fds[1]);
    children.emplace_back(pid, fds[0]);
    g_children[g_child_count] = pid;
    g_child_count = g_child_count + 1;
  }
  ClaimCounters total;
  for (auto [pid, fd] : children) {
    std::string text;
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) != 0) {
      if (n > 0) text.append(buf, static_cast<std::size_t>(n));
      if (n < 0 && errno != EINTR) break;
    }
    ::close(fd);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (text.empty()) die(fmt::format("claims worker {} reported nothing (status {})", pid, status));
    total.add(ClaimCounters::from_json(Json::parse(text)));
  }
  Json summary;
  summary["rate"] = o.rate;
  summary["workers"] = o.workers;
  summary["attempted_per_s"] =
      total.elapsed_s > 0 ? static_cast<double>(total.attempted - total.skipped) / total.elapsed_s : 0.0;
  Json counters = total.to_json();
  for (const auto& [k, v] : counters.items()) summary[k] = v;
  print_summary("claims", summary, o.common.json);
  return 0;
}

// ---- silent: connections that say nothing ---------------------------------------------

struct SilentOptions {
  Common common;
  std::string from = "127.0.0.3";
  int count = 500;
  double seconds = 10;
};

int run_silent(const SilentOptions& o) {
  raise_fd_limit();
  struct Slot {
    int fd = -1;
    bool connected = false;
    Clock::time_point since;        // connected at
    Clock::time_point reopen_at{};  // when fd < 0
  };
  std::vector<Slot> slots(static_cast<std::size_t>(o.count));
  int ep = epoll_create1(EPOLL_CLOEXEC);
  std::uint64_t opened = 0, closed_by_server = 0, refused = 0, connect_failed = 0, bytes_received = 0;
  std::vector<double> lifetimes_ms;
  std::string last_error;
  ConnectOptions target{.port = o.common.port, .address = o.common.address, .from = o.from};

  auto open = [&](std::size_t i, Clock::time_point now) {
    Slot& s = slots[i];
    StartedConnect started = start_connect(target);
    if (!started.ok()) {
      ++(started.error == ECONNREFUSED ? refused : connect_failed);
      last_error = started.detail;
      s.reopen_at = now + std::chrono::milliseconds(100);  // the node is down or out of ports: do not spin
      return;
    }
    s.fd = started.fd;
    s.connected = false;
    epoll_event ev{};
    ev.events = EPOLLOUT;
    ev.data.u64 = i;
    epoll_ctl(ep, EPOLL_CTL_ADD, s.fd, &ev);
  };
  auto drop = [&](std::size_t i, Clock::time_point now, Clock::time_point reopen) {
    Slot& s = slots[i];
    close_with_reset(s.fd);
    s.fd = -1;
    s.connected = false;
    (void)now;
    s.reopen_at = reopen;
  };

  auto start = Clock::now();
  auto end = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.seconds));
  std::size_t max_open = 0;
  std::array<epoll_event, 512> events{};
  for (;;) {
    auto now = Clock::now();
    if (now >= end || stopping()) break;
    std::size_t open_now = 0;
    for (std::size_t i = 0; i < slots.size(); ++i) {
      if (slots[i].fd < 0 && slots[i].reopen_at <= now) open(i, now);
      if (slots[i].connected) ++open_now;
    }
    max_open = std::max(max_open, open_now);
    int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), 20);
    now = Clock::now();
    for (int k = 0; k < n; ++k) {
      std::size_t i = events[static_cast<std::size_t>(k)].data.u64;
      Slot& s = slots[i];
      if (s.fd < 0) continue;
      if (!s.connected) {
        if (int err = connect_error(s.fd); err != 0) {
          ++(err == ECONNREFUSED ? refused : connect_failed);
          last_error = std::strerror(err);
          drop(i, now, now + std::chrono::milliseconds(100));
          continue;
        }
        s.connected = true;
        s.since = now;
        ++opened;
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLRDHUP;
        ev.data.u64 = i;
        epoll_ctl(ep, EPOLL_CTL_MOD, s.fd, &ev);
        continue;
      }
      // The node sent something or hung up; read to tell which.
      char buf[4096];
      ssize_t r = recv(s.fd, buf, sizeof buf, 0);
      if (r > 0) {
        bytes_received += static_cast<std::uint64_t>(r);
        continue;
      }
      if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      ++closed_by_server;
      lifetimes_ms.push_back(ms_between(s.since, now));
      drop(i, now, now);  // reopen at once
    }
  }
  double elapsed_s = std::chrono::duration<double>(Clock::now() - start).count();
  std::size_t open_at_end = 0;
  for (Slot& s : slots) {
    if (s.fd < 0) continue;
    open_at_end += s.connected ? 1 : 0;
    close_with_reset(s.fd);
  }
  ::close(ep);
  std::sort(lifetimes_ms.begin(), lifetimes_ms.end());
  if (!last_error.empty()) std::fprintf(stderr, "silent: last connect error: %s\n", last_error.c_str());
  Json summary;
  summary["count"] = o.count;
  summary["elapsed_s"] = elapsed_s;
  summary["opened"] = opened;
  summary["closed_by_server"] = closed_by_server;
  summary["refused"] = refused;
  summary["connect_failed"] = connect_failed;
  summary["max_open"] = max_open;
  summary["open_at_end"] = open_at_end;
  summary["bytes_received"] = bytes_received;
  summary["lifetime_median_ms"] = percentile(lifetimes_ms, 0.5);
  summary["lifetime_max_ms"] = lifetimes_ms.empty() ? 0.0 : lifetimes_ms.back();
  print_summary("silent", summary, o.common.json);
  return 0;
}

// ---- noread: an authenticated peer that never reads ----------------------------------

struct NoreadOptions {
  Common common;
  std::string from = "127.0.0.4";
  std::string key_file;
  std::string domain;
  std::string presentity = "pres:alice@alpha.test";
  double seconds = 10;
  int stall_ms = 1000;
};

int run_noread(const NoreadOptions& o) {
  TlsClientContext context = make_context(o.common, o.key_file);
  ConnectOptions target{.port = o.common.port, .address = o.common.address, .from = o.from};
  std::uint64_t sessions = 0, claim_failures = 0, bytes_written = 0, frames_written = 0, stalls = 0,
                closes_seen = 0, subscribe_id = 0;
  std::string last_error;
  // One chunk: 128 PINGs of 64 bytes and 16 SUBSCRIBEs, each for a new
  // watcher of the peer domain (so each adds a subscription on the node).
  constexpr int kPingsPerChunk = 128, kSubscribesPerChunk = 16;
  std::vector<std::uint8_t> ping = encode_ping(std::vector<std::uint8_t>(kMaxPingSize, 0x55));
  auto next_chunk = [&](std::uint64_t) {
    std::vector<std::uint8_t> chunk;
    chunk.reserve(kPingsPerChunk * ping.size() + kSubscribesPerChunk * 80);
    for (int i = 0; i < kPingsPerChunk; ++i) {
      chunk.insert(chunk.end(), ping.begin(), ping.end());
      if (i % (kPingsPerChunk / kSubscribesPerChunk) == 0) {
        ++subscribe_id;
        auto sub = encode_presence(FrameType::Subscribe,
                                   {static_cast<std::uint32_t>(subscribe_id),
                                    fmt::format("pres:w{}@{}", subscribe_id, o.domain), o.presentity});
        chunk.insert(chunk.end(), sub.begin(), sub.end());
      }
    }
    return chunk;
  };

  auto start = Clock::now();
  auto end = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.seconds));
  while (Clock::now() < end && !stopping()) {
    auto left = [&] { return std::chrono::duration_cast<Millis>(end - Clock::now()); };
    auto peer = connect_and_claim(target, context, o.domain, std::min(Millis{5000}, std::max(Millis{1}, left())));
    if (!peer) {
      ++claim_failures;
      last_error = peer.error().message;
      std::this_thread::sleep_for(std::min(Millis{100}, std::max(Millis{0}, left())));
      continue;
    }
    ++sessions;
    for (;;) {
      Millis remaining = left();
      if (remaining.count() <= 0 || stopping()) break;
      // In slices, so that a stop request is seen soon.
      FloodResult r = peer->flood(next_chunk, Millis{o.stall_ms}, std::min(remaining, 2 * Millis{o.stall_ms}));
      bytes_written += r.bytes_written;
      frames_written += r.chunks_written * (kPingsPerChunk + kSubscribesPerChunk);
      if (r.closed) {
        ++closes_seen;
        last_error = r.detail;
        break;
      }
      if (r.send_buffer_full) ++stalls;  // keep trying: the node may read again, or cut us off
    }
    peer->reset();
  }
  if (!last_error.empty()) std::fprintf(stderr, "noread: last error: %s\n", last_error.c_str());
  Json summary;
  summary["elapsed_s"] = std::chrono::duration<double>(Clock::now() - start).count();
  summary["sessions"] = sessions;
  summary["claim_failures"] = claim_failures;
  summary["bytes_written"] = bytes_written;
  summary["frames_written"] = frames_written;
  summary["stalls"] = stalls;  // times the send buffer stayed full for stall_ms
  summary["closes_seen"] = closes_seen;
  print_summary("noread", summary, o.common.json);
  return 0;
}

// ---- legit: the measuring peer -----------------------------------------------------------

struct LegitOptions {
  Common common;
  std::string from;  // empty: the kernel's choice (127.0.0.1)
  std::string key_file;
  std::string domain;
  std::string to;
  int count = 100;
  double seconds = 0;  // 0: no time limit
  int interval_ms = 10;
  int warmup = 0;
  int timeout_ms = 10000;
};

int run_legit(const LegitOptions& o) {
  auto flow = LegitFlow{
      .connect = {.port = o.common.port, .address = o.common.address, .from = o.from, .timeout = Millis{o.timeout_ms}},
      .tls = std::make_shared<const TlsClientContext>(make_context(o.common, o.key_file)),
      .domain = o.domain,
      .cpim = "From: <im:bob@" + o.domain + ">\r\nTo: <im:" + o.to +
              ">\r\nDateTime: 2026-11-23T05:00:00Z\r\n\r\nContent-Type: text/plain\r\n\r\nhello",
      .message_id = 1,
      .step_timeout = Millis{o.timeout_ms}};
  std::vector<double> latencies_ms;
  std::array<std::uint64_t, 5> failures_at{};  // by FlowStep
  std::uint64_t failures = 0;
  std::string last_failure;
  auto start = Clock::now();
  int done = 0;
  for (int i = 0; i < o.warmup + o.count; ++i) {
    if (stopping() || (o.seconds > 0 && std::chrono::duration<double>(Clock::now() - start).count() >= o.seconds)) {
      break;
    }
    if (i > 0 && o.interval_ms > 0) std::this_thread::sleep_for(Millis{o.interval_ms});
    flow.message_id = static_cast<std::uint32_t>(i + 1);
    FlowResult r = connect_claim_message(flow);
    if (r.peer) r.peer->close_notify();
    if (i < o.warmup) continue;
    ++done;
    if (r.ok()) {
      latencies_ms.push_back(std::chrono::duration<double, std::milli>(r.acked).count());
    } else {
      ++failures;
      ++failures_at[static_cast<std::size_t>(r.failed_at)];
      last_failure = to_string(r.failed_at) + ": " + r.detail;
    }
  }
  std::sort(latencies_ms.begin(), latencies_ms.end());
  if (!last_failure.empty()) std::fprintf(stderr, "legit: last failure: %s\n", last_failure.c_str());
  Json summary;
  summary["iterations"] = done;
  summary["ok"] = latencies_ms.size();
  summary["failures"] = failures;
  summary["failed_connect"] = failures_at[static_cast<std::size_t>(FlowStep::Connect)];
  summary["failed_handshake"] = failures_at[static_cast<std::size_t>(FlowStep::Handshake)];
  summary["failed_claim"] = failures_at[static_cast<std::size_t>(FlowStep::Claim)];
  summary["failed_message"] = failures_at[static_cast<std::size_t>(FlowStep::Message)];
  summary["median_ms"] = percentile(latencies_ms, 0.5);
  summary["p90_ms"] = percentile(latencies_ms, 0.9);
  summary["p99_ms"] = percentile(latencies_ms, 0.99);
  summary["max_ms"] = latencies_ms.empty() ? 0.0 : latencies_ms.back();
  print_summary("legit", summary, o.common.json);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"keyfed_load: attackers and a measuring legitimate peer against a running keyfed node"};
  app.require_subcommand(1);

  ClaimsOptions claims;
  CLI::App* claims_cmd = app.add_subcommand("claims", "Claims of random names at a paced rate");
  add_common(claims_cmd, claims.common);
  claims_cmd->add_option("--from", claims.from, "Local address (default 127.0.0.2)");
  claims_cmd->add_option("--rate", claims.rate, "Connections attempted per second")->check(CLI::PositiveNumber);
  claims_cmd->add_option("--seconds", claims.seconds, "Duration")->check(CLI::PositiveNumber);
  claims_cmd->add_option("--suffix", claims.suffix, "Claimed names are <random>.SUFFIX (default wild.test)");
  claims_cmd->add_option("--key", claims.key_file, "Key of the self-signed client certificate")->required();
  claims_cmd->add_option("--workers", claims.workers, "Processes sharing the rate (default 1)")->check(CLI::Range(1, 64));
  claims_cmd->add_option("--timeout-ms", claims.timeout_ms, "Give up on a connection after this (default 15000)")
      ->check(CLI::Range(1, 600000));
  claims_cmd->add_option("--max-inflight", claims.max_inflight, "Connections in flight per worker (default 8000)");

  SilentOptions silent;
  CLI::App* silent_cmd = app.add_subcommand("silent", "Connections that send nothing, reopened when closed");
  add_common(silent_cmd, silent.common);
  silent_cmd->add_option("--from", silent.from, "Local address (default 127.0.0.3)");
  silent_cmd->add_option("--count", silent.count, "Connections kept open (default 500)")->check(CLI::Range(1, 100000));
  silent_cmd->add_option("--seconds", silent.seconds, "Duration")->check(CLI::PositiveNumber);

  NoreadOptions noread;
  CLI::App* noread_cmd = app.add_subcommand("noread", "An authenticated peer that floods and never reads");
  add_common(noread_cmd, noread.common);
  noread_cmd->add_option("--from", noread.from, "Local address (default 127.0.0.4)");
  noread_cmd->add_option("--key", noread.key_file, "A key of DOMAIN")->required();
  noread_cmd->add_option("--domain", noread.domain, "The domain claimed")->required();
  noread_cmd->add_option("--presentity", noread.presentity, "Presentity subscribed to (default pres:alice@alpha.test)");
  noread_cmd->add_option("--seconds", noread.seconds, "Duration")->check(CLI::PositiveNumber);
  noread_cmd->add_option("--stall-ms", noread.stall_ms, "A send buffer full this long counts as a stall (default 1000)")
      ->check(CLI::Range(10, 60000));

  LegitOptions legit;
  CLI::App* legit_cmd = app.add_subcommand("legit", "A legitimate peer measuring connect-to-ACK latency");
  add_common(legit_cmd, legit.common);
  legit_cmd->add_option("--from", legit.from, "Local address (default: the kernel's, 127.0.0.1)");
  legit_cmd->add_option("--key", legit.key_file, "A key of DOMAIN")->required();
  legit_cmd->add_option("--domain", legit.domain, "The domain claimed")->required();
  legit_cmd->add_option("--to", legit.to, "Recipient USER@DOMAIN hosted by the node")->required();
  legit_cmd->add_option("--count", legit.count, "Measured iterations (default 100)")->check(CLI::Range(1, 100000000));
  legit_cmd->add_option("--seconds", legit.seconds, "Stop after this long even if COUNT is not reached");
  legit_cmd->add_option("--interval-ms", legit.interval_ms, "Pause between iterations (default 10)");
  legit_cmd->add_option("--warmup", legit.warmup, "Unmeasured iterations first (default 0)");
  legit_cmd->add_option("--timeout-ms", legit.timeout_ms, "Per step (default 10000)")->check(CLI::Range(1, 600000));

  CLI11_PARSE(app, argc, argv);
  install_stop_handler();
  std::signal(SIGPIPE, SIG_IGN);  // a node that closed is a counted outcome, not a dead process
  if (claims_cmd->parsed()) return run_claims(claims);
  if (silent_cmd->parsed()) return run_silent(silent);
  if (noread_cmd->parsed()) return run_noread(noread);
  return run_legit(legit);
}
