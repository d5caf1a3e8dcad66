// The crash test of issue 7 (docs/STORE.md, "The crash test"): the node
// carries its users' messages and never loses one.
//
// Two real `keyfed run` processes (alpha.test and beta.test of the testbed,
// each with its own SQLite store and control socket, each the other's
// [[peers]] entry on loopback). Submitter threads in this process speak the
// control socket protocol (docs/CONTROL.md) and submit thousands of messages,
// alice@alpha.test -> bob@beta.test and some bob@beta.test -> alice@alpha.test,
// while the test's main thread SIGKILLs one node, the other or both at random
// moments (a seeded RNG) and restarts them on the same config and database.
// At the end, once no node is killed any more, every queue entry must be
// delivered, and each recipient's inbox must hold every accepted message
// exactly once, byte for byte, and nothing else.
//
// What "accepted" means, as a client sees it: the node answered {"ok": true}
// to the submit. A submission whose answer never came (the node died first)
// is not counted as accepted, and the client does what a real one does:
//  - most messages carry their own imdn.Message-ID: they are submitted
//    again, with the same bytes, until an answer comes. The store makes this
//    idempotent (an identity accepted before is answered "duplicate" and not
//    queued twice), so each must end up delivered exactly once;
//  - every tenth message has no imdn.Message-ID (the node gives it one). Its
//    client cannot resubmit safely, so a lost answer leaves it "in doubt": it
//    may have been committed or not, but if it was, it must be delivered,
//    and once. The body of every message names it ("a2b #17"), so such a
//    message is still recognised in the inbox.
//
// Knobs (environment): KEYFED_CRASH_MESSAGES (messages alpha -> beta, default
// 2000; a quarter as many go beta -> alpha), KEYFED_CRASH_KILLS (kill rounds
// at least, default 12; 6 under AddressSanitizer), KEYFED_CRASH_SEED (the
// kill schedule; printed at every run), KEYFED_CRASH_DEADLINE_S (how long the
// queues may take to drain at the end, default 90; 180 under AddressSanitizer),
// KEYFED_CRASH_KEEP_DIR (a directory to copy the nodes' logs, configs and
// databases into when the test fails).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "child_process.h"
#include "daemon/control_socket.h"
#include "fed_harness.h"
#include "harness.h"

#if defined(__SANITIZE_ADDRESS__)
#define KEYFED_CRASH_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KEYFED_CRASH_SANITIZED 1
#endif
#endif
#ifndef KEYFED_CRASH_SANITIZED
#define KEYFED_CRASH_SANITIZED 0
#endif

using namespace keyfed;
using namespace keyfed::test;
using nlohmann::json;

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

// Set when the test gives up: the submitter threads stop.
std::atomic<bool> g_abort{false};

long env_number(const char* name, long fallback) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  char* end = nullptr;
  long n = std::strtol(text, &end, 10);
  if (*end != '\0' || n < 0) FAIL(name << " must be a non-negative integer, not '" << text << "'");
  return n;
}

double since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// One connection to a node's control socket: one request, then its answer.
class ControlConnection {
 public:
  ControlConnection() = default;
  ~ControlConnection() { close(); }
  ControlConnection(const ControlConnection&) = delete;
  ControlConnection& operator=(const ControlConnection&) = delete;

  bool connect(const std::filesystem::path& socket) {
    close();
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);  // not inherited by the nodes we start
    if (fd_ < 0) return false;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, socket.c_str(), sizeof addr.sun_path - 1);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      close();
      return false;
    }
    return true;
  }

  bool open() const { return fd_ >= 0; }

  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    buffer_.clear();
  }

  // The answer; nullopt if the connection broke before a whole answer line
  // came (the node died) or `limit` passed (`timed_out` then). The
  // connection is closed either way.
  std::optional<json> request(const json& request, milliseconds limit) {
    timed_out = false;
    if (fd_ < 0) return std::nullopt;
    std::string line = request.dump() + "\n";
    for (std::size_t at = 0; at < line.size();) {
      ssize_t n = ::send(fd_, line.data() + at, line.size() - at, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return lost();
      at += static_cast<std::size_t>(n);
    }
    auto deadline = Clock::now() + limit;
    for (;;) {
      if (auto eol = buffer_.find('\n'); eol != std::string::npos) {
        json answer = json::parse(buffer_.substr(0, eol), nullptr, false);
        buffer_.erase(0, eol + 1);
        if (answer.is_discarded() || !answer.is_object()) return lost();
        return answer;
      }
      if (g_abort) return lost();
      auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) {
        timed_out = true;
        return lost();
      }
      pollfd p{fd_, POLLIN, 0};
      int r = ::poll(&p, 1, static_cast<int>(std::min<long>(left, 200)));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) continue;
      char chunk[65536];
      ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return lost();
      buffer_.append(chunk, static_cast<std::size_t>(n));
    }
  }

  bool timed_out = false;

 private:
  std::optional<json> lost() {
    close();
    return std::nullopt;
  }

  int fd_ = -1;
  std::string buffer_;
};

std::optional<json> ask(const std::filesystem::path& socket, const json& request, milliseconds limit = seconds(20)) {
  ControlConnection c;
  if (!c.connect(socket)) return std::nullopt;
  return c.request(request, limit);
}

// `keyfed run` as a child process, started again after each SIGKILL on the
// same config (so the same store and control socket). Its stderr goes to a
// log file, appended to at every start: nothing has to read it meanwhile.
class NodeProcess {
 public:
  NodeProcess(std::string name, std::filesystem::path config, std::filesystem::path log)
      : name_(std::move(name)), config_(std::move(config)), log_(std::move(log)) {
    socket_ = std::filesystem::path(config_).replace_extension(".sock");
  }
  ~NodeProcess() { kill_now(); }
  NodeProcess(const NodeProcess&) = delete;
  NodeProcess& operator=(const NodeProcess&) = delete;

  void start() {
    ++starts_;
    std::ofstream(log_, std::ios::app) << "==== crash test: start " << starts_ << " ====\n";
    int log_fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    REQUIRE(log_fd >= 0);
    // Everything the child needs is made before fork(): the test process has
    // threads, so the child may only call async-signal-safe functions.
    std::vector<std::string> args = {"keyfed", "run", "--config", config_.string()};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const char* override_binary = std::getenv("KEYFED_TEST_BINARY");
    const char* binary = override_binary != nullptr ? override_binary : KEYFED_BINARY;
    pid_ = fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      dup2(log_fd, STDOUT_FILENO);
      dup2(log_fd, STDERR_FILENO);
      execv(binary, argv.data());
      _exit(127);
    }
    ::close(log_fd);
  }

  // Until the node answers on its control socket (it opens the store before
  // the socket); false if it exited or `limit` passed.
  bool wait_ready(milliseconds limit = seconds(30)) {
    auto deadline = Clock::now() + limit;
    while (Clock::now() < deadline) {
      if (!running()) return false;
      if (ask(socket_, {{"command", "peers"}}, seconds(5))) return true;
      std::this_thread::sleep_for(milliseconds(20));
    }
    return false;
  }

  // Still running (false: it ended on its own, see exit_text()).
  bool running() {
    if (pid_ <= 0) return false;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      status_ = status;
      pid_ = -1;
      return false;
    }
    return true;
  }

  void kill_now() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    waitpid(pid_, &status_, 0);
    pid_ = -1;
  }

  std::string exit_text() const {
    if (WIFEXITED(status_)) return "exited with status " + std::to_string(WEXITSTATUS(status_));
    if (WIFSIGNALED(status_)) return std::string("ended by signal ") + strsignal(WTERMSIG(status_));
    return "still running";
  }

  std::string log_tail(std::size_t count = 40) const {
    std::ifstream in(log_);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    std::string out;
    for (std::size_t i = lines.size() > count ? lines.size() - count : 0; i < lines.size(); ++i) {
      out += name_ + "| " + lines[i] + "\n";
    }
    return out;
  }

  const std::filesystem::path& socket() const { return socket_; }
  const std::string& name() const { return name_; }
  int starts() const { return starts_; }

 private:
  std::string name_;
  std::filesystem::path config_, socket_, log_;
  pid_t pid_ = -1;
  int status_ = 0;
  int starts_ = 0;
};

// One message and what became of it. Written only by the submitter thread
// that took it, read once the submitters are joined.
struct Submission {
  std::string direction;  // "a2b" or "b2a"
  int index = 0;
  std::optional<std::string> given_id;  // the client's own identity: resubmitted until answered
  std::vector<std::uint8_t> cpim;
  bool base64 = false;  // submitted as cpim_base64 rather than cpim

  enum class Outcome { Unanswered, Accepted, InDoubt, Refused } outcome = Outcome::Unanswered;
  std::string id;  // as answered
  int tries = 0;
  bool duplicate = false;  // the answer said its identity was accepted before
  bool first_answer_duplicate = false;
  std::string refusal;
};

// alice@alpha.test <-> bob@beta.test. Every tenth has no identity of its own;
// every seventh is a few kilobytes of non-ASCII text.
Submission make_submission(const std::string& direction, int index, std::uint64_t seed) {
  Submission s;
  s.direction = direction;
  s.index = index;
  bool a2b = direction == "a2b";
  if (index % 10 != 3) s.given_id = "crash-" + std::to_string(seed) + "-" + direction + "-" + std::to_string(index);
  s.base64 = index % 3 == 1;
  std::string text;
  if (s.given_id) text += "NS: imdn <urn:ietf:params:imdn>\r\nimdn.Message-ID: " + *s.given_id + "\r\n";
  text += a2b ? "From: Alice <im:alice@alpha.test>\r\nTo: Bob <im:bob@beta.test>\r\n"
              : "From: Bob <im:bob@beta.test>\r\nTo: Alice <im:alice@alpha.test>\r\n";
  text += "DateTime: 2026-11-23T09:00:00Z\r\n\r\nContent-Type: text/plain;charset=utf-8\r\n\r\n";
  text += "message " + direction + " #" + std::to_string(index) + " (seed " + std::to_string(seed) + ")\r\n";
  if (index % 7 == 5) {
    for (int i = 0; i < 40; ++i) text += "Crème brûlée, smørrebrød, 寿司 — line " + std::to_string(i) + "\r\n";
  }
  s.cpim.assign(text.begin(), text.end());
  return s;
}

// Takes submissions off `next` until there are none left. The k-th of n is
// not submitted before `start + window * k / n`: submission is spread over
// the kill rounds, so that kills land in the middle of it.
void submitter(std::vector<Submission>& list, std::atomic<std::size_t>& next, std::filesystem::path socket,
               Clock::time_point start, milliseconds window, std::atomic<int>& timeouts) {
  ControlConnection conn;
  for (;;) {
    std::size_t k = next++;
    if (k >= list.size()) return;
    auto n = static_cast<std::int64_t>(list.size());
    std::this_thread::sleep_until(start + window * static_cast<std::int64_t>(k) / n);
    Submission& s = list[k];
    json request = {{"command", "submit"}};
    if (s.base64) {
      request["cpim_base64"] = base64_encode(s.cpim);
    } else {
      request["cpim"] = std::string(s.cpim.begin(), s.cpim.end());
    }
    while (s.outcome == Submission::Outcome::Unanswered) {
      if (g_abort) return;
      if (!conn.open() && !conn.connect(socket)) {
        std::this_thread::sleep_for(milliseconds(10));  // the node is down: it is being restarted
        continue;
      }
      ++s.tries;
      std::optional<json> answer = conn.request(request, seconds(30));
      if (!answer) {
        if (conn.timed_out) ++timeouts;
        // The answer was lost: not accepted, as far as the client knows.
        if (!s.given_id) s.outcome = Submission::Outcome::InDoubt;
        continue;  // with its own identity: submitted again
      }
      if (answer->value("ok", false)) {
        s.outcome = Submission::Outcome::Accepted;
        s.id = answer->value("id", "");
        s.duplicate = answer->value("duplicate", false);
        if (s.tries == 1) s.first_answer_duplicate = s.duplicate;
      } else {
        s.outcome = Submission::Outcome::Refused;
        s.refusal = answer->dump();
      }
    }
  }
}

std::string node_config(const TempDir& dir, const std::string& domain, const std::string& key, int port,
                        const std::string& user, const std::string& peer, int peer_port) {
  // Retries come quickly (the backoff is 1 s, at most 2 s), and the message
  // rate limit (100 a second per peer by default) is lifted: this test is
  // about crashes, not about the rate limiter's NACKs.
  auto path = write_node_config(dir, fedkey(key), domain,
                                "users = [\"" + user + "\"]\n"
                                "[delivery]\nretry_first_s = 1\nretry_max_s = 2\n"
                                "[limits]\nmessage_rate = 100000\nmessage_burst = 100000\n"
                                "[[peers]]\ndomain = \"" + peer + "\"\naddress = \"127.0.0.1\"\nport = " +
                                    std::to_string(peer_port) + "\n");
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  std::string config =
      std::regex_replace(text.str(), std::regex("\nport = 0\n"), "\nport = " + std::to_string(port) + "\n");
  std::ofstream(path) << config;
  return path.string();
}

// What the queue of the sending node and the inbox of the receiving node say
// about one direction's submissions; every violation of "exactly once, byte
// for byte, nothing else" is a line in `errors`.
void check_direction(const std::vector<Submission>& list, const json& queue, const std::string& to_domain,
                     const json& inbox, const std::string& owner, const std::string& from_domain,
                     std::vector<std::string>& errors) {
  const std::string direction = list.empty() ? "" : list.front().direction;
  auto error = [&](const std::string& text) { errors.push_back(direction + ": " + text); };

  // The sender's queue: one entry per message, each delivered.
  std::map<std::string, int> queued;
  for (const json& e : queue) {
    if (e.value("to_domain", "") != to_domain) continue;
    std::string id = e.value("id", "");
    if (++queued[id] > 1) error("queue entry " + id + " listed twice");
    if (e.value("state", "") != "delivered") error("queue entry " + id + " is " + e.dump());
  }

  // The recipient's inbox: each message at most once, recognised by its body.
  std::map<int, int> copies;
  std::set<std::string> inbox_ids;
  const std::regex token("message " + direction + " #(\\d+) ");
  for (const json& m : inbox) {
    std::string id = m.value("id", "");
    auto bytes = base64_decode(m.value("cpim_base64", ""));
    if (!bytes) {
      error("inbox entry " + id + ": cpim_base64 does not decode");
      continue;
    }
    std::string text(bytes->begin(), bytes->end());
    std::smatch found;
    if (!std::regex_search(text, found, token)) {
      error("inbox entry " + id + " is no message this test sent: " + m.dump().substr(0, 400));
      continue;
    }
    int index = std::stoi(found[1]);
    if (index < 0 || static_cast<std::size_t>(index) >= list.size()) {
      error("inbox entry " + id + " names message #" + std::to_string(index) + ", never sent");
      continue;
    }
    const Submission& s = list[static_cast<std::size_t>(index)];
    if (++copies[index] > 1) error("message #" + std::to_string(index) + " (" + id + ") is in the inbox twice");
    if (!inbox_ids.insert(id).second) error("identity " + id + " is in the inbox twice");
    if (s.given_id && id != *s.given_id) error("message #" + std::to_string(index) + " has id " + id);
    if (s.outcome == Submission::Outcome::Accepted && id != s.id) {
      error("message #" + std::to_string(index) + " was accepted as " + s.id + " but arrived as " + id);
    }
    if (s.outcome == Submission::Outcome::Unanswered || s.outcome == Submission::Outcome::Refused) {
      error("message #" + std::to_string(index) + " arrived although it was never accepted");
    }
    // Byte for byte: as submitted, with the identity the node put in front if it had none.
    std::vector<std::uint8_t> expected = s.cpim;
    if (!s.given_id) {
      std::string head = "NS: imdn <urn:ietf:params:imdn>\r\nimdn.Message-ID: " + id + "\r\n";
      expected.insert(expected.begin(), head.begin(), head.end());
    }
    if (*bytes != expected) error("message #" + std::to_string(index) + " (" + id + ") arrived altered: " + text);
    if (m.value("cpim", "") != std::string(expected.begin(), expected.end())) {
      error("message #" + std::to_string(index) + ": \"cpim\" differs from \"cpim_base64\"");
    }
    if (m.value("owner", "") != owner || m.value("peer_domain", "") != from_domain ||
        m.value("decision", "") != "authenticated") {
      error("message #" + std::to_string(index) + " stored as " + m.dump().substr(0, 300));
    }
    if (queued.count(id) == 0) {
      error("message #" + std::to_string(index) + " (" + id + ") arrived but is not in the sender's queue");
    }
  }

  // Every accepted message arrived, once; nothing queued is missing.
  for (const Submission& s : list) {
    int n = copies.count(s.index) != 0 ? copies[s.index] : 0;
    if (s.outcome == Submission::Outcome::Accepted && n == 0) {
      error("message #" + std::to_string(s.index) + " (" + s.id + ") was accepted but never arrived" +
            (queued.count(s.id) != 0 ? " (its queue entry says delivered)" : " (and it is not in the queue)"));
    }
    if (s.outcome == Submission::Outcome::Accepted && queued.count(s.id) == 0) {
      error("message #" + std::to_string(s.index) + " (" + s.id + ") was accepted but is not in the sender's queue");
    }
  }
  for (const auto& [id, count] : queued) {
    if (inbox_ids.count(id) == 0) error("queue entry " + id + " was marked delivered but is not in the inbox");
  }
}

}  // namespace

TEST_CASE("messages survive SIGKILLs of both nodes: each accepted message arrives exactly once, byte for byte",
          "[crash][messaging][store]") {
  g_abort = false;
  const bool sanitized = KEYFED_CRASH_SANITIZED != 0;
  const int a2b_count = static_cast<int>(env_number("KEYFED_CRASH_MESSAGES", 2000));
  const int b2a_count = a2b_count / 4;
  const int min_kills = static_cast<int>(env_number("KEYFED_CRASH_KILLS", sanitized ? 6 : 12));
  const auto drain_limit = seconds(env_number("KEYFED_CRASH_DEADLINE_S", sanitized ? 180 : 90));
  std::uint64_t seed = static_cast<std::uint64_t>(env_number("KEYFED_CRASH_SEED", 0));
  if (seed == 0) seed = std::random_device{}() % 1000000000u + 1;
  std::cout << "crash test: seed " << seed << " (KEYFED_CRASH_SEED=" << seed << " repeats the kill schedule), "
            << a2b_count << " + " << b2a_count << " messages, at least " << min_kills << " kill rounds" << std::endl;
  INFO("crash test seed " << seed << " (KEYFED_CRASH_SEED)");
  std::mt19937_64 rng(seed);
  auto uniform = [&](int low, int high) { return std::uniform_int_distribution<int>(low, high)(rng); };

  TempDir dir;
  int alpha_port = free_port();
  int beta_port = free_port();
  while (beta_port == alpha_port) beta_port = free_port();
  auto alpha_config = node_config(dir, "alpha.test", "alpha-1", alpha_port, "alice", "beta.test", beta_port);
  auto beta_config = node_config(dir, "beta.test", "beta-new", beta_port, "bob", "alpha.test", alpha_port);
  NodeProcess alpha("alpha", alpha_config, dir.path() / "alpha.log");
  NodeProcess beta("beta", beta_config, dir.path() / "beta.log");
  auto logs = [&] { return alpha.log_tail() + beta.log_tail(); };
  auto keep = [&] {
    const char* to = std::getenv("KEYFED_CRASH_KEEP_DIR");
    if (to == nullptr || *to == '\0') return;
    std::error_code ec;
    std::filesystem::create_directories(to, ec);
    for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
      if (entry.is_regular_file()) {
        std::filesystem::copy_file(entry.path(), std::filesystem::path(to) / entry.path().filename(),
                                   std::filesystem::copy_options::overwrite_existing, ec);
      }
    }
    std::cout << "crash test: logs, configs and stores copied to " << to << std::endl;
  };

  alpha.start();
  beta.start();
  REQUIRE(alpha.wait_ready());
  REQUIRE(beta.wait_ready());

  std::vector<Submission> a2b, b2a;
  for (int i = 0; i < a2b_count; ++i) a2b.push_back(make_submission("a2b", i, seed));
  for (int i = 0; i < b2a_count; ++i) b2a.push_back(make_submission("b2a", i, seed));

  // The submitters: several clients per node, each one request at a time
  // (concurrent clients share the store's group commits).
  std::atomic<std::size_t> next_a2b{0}, next_b2a{0};
  std::atomic<int> timeouts{0};
  std::atomic<int> running_submitters{0};
  struct Threads {
    std::vector<std::thread> list;
    ~Threads() {
      g_abort = true;  // a failed REQUIRE on the main thread stops them
      for (auto& t : list) t.join();
    }
  } threads;
  // Submission takes about as long as the kill rounds (one a second or so).
  const auto start = Clock::now();
  const milliseconds window = seconds(min_kills);
  auto start_submitter = [&](std::vector<Submission>& list, std::atomic<std::size_t>& next,
                             std::filesystem::path socket) {
    ++running_submitters;
    threads.list.emplace_back([list = &list, next = &next, socket, start, window, &timeouts, &running_submitters] {
      submitter(*list, *next, socket, start, window, timeouts);
      --running_submitters;
    });
  };
  for (int i = 0; i < 4; ++i) start_submitter(a2b, next_a2b, alpha.socket());
  for (int i = 0; i < 2; ++i) start_submitter(b2a, next_b2a, beta.socket());

  // The killer: at random moments one node, the other, or both at once,
  // SIGKILLed and started again, while messages are submitted and for a few
  // rounds more while they are delivered.
  int kills_alpha = 0, kills_beta = 0, kills_starting = 0, rounds = 0;
  double submitted_after = 0;
  const auto give_up_at = Clock::now() + seconds(sanitized ? 900 : 600);
  while (running_submitters > 0 || rounds < min_kills) {
    if (running_submitters == 0 && submitted_after == 0) submitted_after = since(start);
    REQUIRE(Clock::now() < give_up_at);
    // A third of the rounds start soon after the last restart: while the
    // backlog of the node that was down is flushed to it, or by it.
    std::this_thread::sleep_for(milliseconds(uniform(0, 2) == 0 ? uniform(0, 250) : uniform(100, 900)));
    int pick = uniform(0, 2);  // alpha, beta, or both
    std::vector<NodeProcess*> victims;
    if (pick != 1) victims.push_back(&alpha);
    if (pick != 0) victims.push_back(&beta);
    for (NodeProcess* node : victims) {
      if (!node->running()) FAIL(node->name() << " ended on its own: " << node->exit_text() << "\n" << logs());
      node->kill_now();
      ++(node == &alpha ? kills_alpha : kills_beta);
    }
    ++rounds;
    // Down for a while: the other node's deliveries and reconnections fail.
    // One round in eight, for seconds: a backlog builds up, is retried with
    // backoff and flushed when a session comes up again.
    std::this_thread::sleep_for(milliseconds(uniform(0, 7) == 0 ? uniform(1500, 4000) : uniform(0, 500)));
    for (NodeProcess* node : victims) {
      node->start();
      if (uniform(0, 5) == 0) {
        // Now and then killed again while it starts (opening the store,
        // binding the control socket, connecting to its peer).
        std::this_thread::sleep_for(milliseconds(uniform(0, 150)));
        node->kill_now();
        ++kills_starting;
        node->start();
      }
      if (!node->wait_ready()) {
        FAIL(node->name() << " did not come back at start " << node->starts() << " (" << node->exit_text()
                          << ")\n" << logs());
      }
    }
  }
  if (submitted_after == 0) submitted_after = since(start);
  for (auto& t : threads.list) t.join();
  threads.list.clear();
  const double killing_done = since(start);

  // No more kills: every queue entry of both nodes must come to "delivered".
  json alpha_queue, beta_queue;
  bool drained = false;
  std::string pending;
  for (auto until = Clock::now() + drain_limit; Clock::now() < until;) {
    auto qa = ask(alpha.socket(), {{"command", "queue"}});
    auto qb = ask(beta.socket(), {{"command", "queue"}});
    if (qa && qb && qa->value("ok", false) && qb->value("ok", false)) {
      alpha_queue = (*qa)["queue"];
      beta_queue = (*qb)["queue"];
      std::size_t queued = 0;
      pending.clear();
      for (const json* q : {&alpha_queue, &beta_queue}) {
        for (const json& e : *q) {
          if (e.value("state", "") == "queued") {
            if (++queued <= 5) pending += e.dump() + "\n";
          }
        }
      }
      if (queued == 0) {
        drained = true;
        break;
      }
      pending = std::to_string(queued) + " still queued, for example:\n" + pending;
    }
    std::this_thread::sleep_for(milliseconds(250));
  }
  const double drain_done = since(start);
  {
    INFO(logs());
    INFO(pending);
    INFO("alpha " << alpha.exit_text() << ", beta " << beta.exit_text());
    CHECK(alpha.running());
    CHECK(beta.running());
    if (!drained) keep();
    REQUIRE(drained);
  }

  auto bob_inbox = ask(beta.socket(), {{"command", "inbox"}, {"user", "bob@beta.test"}}, seconds(60));
  auto alice_inbox = ask(alpha.socket(), {{"command", "inbox"}, {"user", "alice@alpha.test"}}, seconds(60));
  REQUIRE(bob_inbox);
  REQUIRE(alice_inbox);
  REQUIRE(bob_inbox->value("ok", false));
  REQUIRE(alice_inbox->value("ok", false));

  // What the clients saw.
  std::vector<std::string> errors;
  int accepted = 0, in_doubt = 0, resubmitted = 0, resubmitted_duplicate = 0;
  for (const auto* list : {&a2b, &b2a}) {
    for (const Submission& s : *list) {
      std::string name = s.direction + " #" + std::to_string(s.index);
      if (s.outcome == Submission::Outcome::Accepted) ++accepted;
      if (s.outcome == Submission::Outcome::InDoubt) ++in_doubt;
      if (s.tries > 1) ++resubmitted;
      if (s.tries > 1 && s.duplicate) ++resubmitted_duplicate;
      if (s.outcome == Submission::Outcome::Refused) errors.push_back(name + " was refused: " + s.refusal);
      if (s.outcome == Submission::Outcome::Unanswered) errors.push_back(name + " was never submitted");
      if (s.first_answer_duplicate) errors.push_back(name + " was answered \"duplicate\" at its first submission");
      if (s.given_id && s.outcome == Submission::Outcome::Accepted && s.id != *s.given_id) {
        errors.push_back(name + " was accepted under another id: " + s.id);
      }
    }
  }
  check_direction(a2b, alpha_queue, "beta.test", (*bob_inbox)["messages"], "bob@beta.test", "alpha.test", errors);
  check_direction(b2a, beta_queue, "alpha.test", (*alice_inbox)["messages"], "alice@alpha.test", "beta.test", errors);

  std::cout << "crash test: seed " << seed << ": " << accepted << " accepted, " << in_doubt
            << " in doubt (no identity of their own, answer lost), " << resubmitted
            << " submitted more than once (" << resubmitted_duplicate
            << " of them answered \"duplicate\": committed before the answer was lost), " << timeouts
            << " answers timed out; " << rounds << " kill rounds (alpha killed " << kills_alpha << ", beta "
            << kills_beta << ", " << kills_starting << " more while starting); submitted in " << submitted_after
            << " s, killing over at " << killing_done << " s, queues drained at " << drain_done
            << " s; inboxes: bob " << (*bob_inbox)["messages"].size() << ", alice "
            << (*alice_inbox)["messages"].size() << std::endl;
  std::string shown;
  for (std::size_t i = 0; i < errors.size() && i < 30; ++i) shown += errors[i] + "\n";
  INFO(errors.size() << " problems; the first ones:\n" << shown);
  if (!errors.empty()) keep();
  CHECK(errors.empty());
  CHECK(accepted + in_doubt == a2b_count + b2a_count);
}
