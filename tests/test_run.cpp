// `keyfed run` as a script or init system sees it: a child process with a
// config file, logs on stderr, SIGHUP reload, SIGTERM clean exit.
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <regex>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "cli/cli.h"
#include "fed_harness.h"
#include "federation/identity.h"

using namespace keyfed;
using namespace keyfed::test;

namespace {

class Child {
 public:
  explicit Child(std::vector<std::string> args) {
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    pid_ = fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      dup2(fds[1], STDERR_FILENO);
      close(fds[0]);
      close(fds[1]);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(KEYFED_BINARY, argv.data());
      _exit(127);
    }
    close(fds[1]);
    err_ = fds[0];
  }
  ~Child() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    close(err_);
  }
  /// Reads stderr until a line matches; returns the match (empty on timeout/EOF).
  std::smatch wait_for(const std::regex& pattern, int timeout_ms = 10000) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      std::size_t nl;
      while ((nl = buffer_.find('\n')) != std::string::npos) {
        lines_.push_back(buffer_.substr(0, nl));
        buffer_.erase(0, nl + 1);
        std::smatch m;
        if (std::regex_search(lines_.back(), m, pattern)) return m;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return {};
      pollfd p{err_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) <= 0) return {};
      char buf[4096];
      ssize_t n = read(err_, buf, sizeof buf);
      if (n <= 0) return {};
      buffer_.append(buf, static_cast<std::size_t>(n));
    }
  }
  int wait_exit() {
    int status = 0;
    waitpid(pid_, &status, 0);
    exited_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  void signal(int s) { kill(pid_, s); }
  const std::vector<std::string>& lines() const { return lines_; }

 private:
  pid_t pid_ = -1;
  int err_ = -1;
  bool exited_ = false;
  std::string buffer_;
  std::vector<std::string> lines_;
};

int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

std::filesystem::path write_node_config(const TempDir& dir, const std::filesystem::path& key,
                                        const std::string& domain = "alpha.test", const std::string& extra = "") {
  std::ifstream base(testbed_dir() / "keyfed.toml");
  std::stringstream text;
  text << base.rdbuf();
  std::string config = text.str();
  // Paths in keyfed.toml are relative to the testbed directory.
  config = std::regex_replace(config, std::regex("\"([a-z][a-z.-]*\\.(ds|signed|zone))\""),
                              "\"" + testbed_dir().string() + "/$1\"");
  config += "\n[node]\nlisten = \"127.0.0.1\"\nport = 0\n\n[[domains]]\nname = \"" + domain + "\"\nkeys = [\"" +
            key.string() + "\"]\n" + extra;
  auto path = dir.path() / ("node-" + domain + "-" + key.stem().string() + ".toml");
  std::ofstream(path) << config;
  return path;
}

}  // namespace

TEST_CASE("keyfed run serves peers, reloads on SIGHUP and exits 0 on SIGTERM", "[run]") {
  TempDir dir;
  auto config = write_node_config(dir, fedkey("alpha-1"));
  Child child({"keyfed", "run", "--config", config.string()});
  auto listening = child.wait_for(std::regex("listening on 127\\.0\\.0\\.1:(\\d+)"));
  REQUIRE_FALSE(listening.empty());
  int port = std::stoi(listening[1]);

  TestLoop loop;
  FedNode beta(loop, "beta.test", fedkey("beta-new"));
  std::optional<Result<SessionInfo>> session;
  beta.node->connect("beta.test", "alpha.test", "127.0.0.1", port, [&](Result<SessionInfo> r) { session = std::move(r); });
  loop.run_until([&] { return session.has_value(); });
  REQUIRE(session->ok());
  REQUIRE(beta.send((*session)->id, cpim_message("im:bob@beta.test", "im:alice@alpha.test", "hi")).ok());
  CHECK_FALSE(child.wait_for(std::regex("audit .*\"decision\":\"authenticated\"")).empty());
  CHECK_FALSE(child.wait_for(std::regex("message im:bob@beta.test -> im:alice@alpha.test")).empty());

  child.signal(SIGHUP);
  CHECK_FALSE(child.wait_for(std::regex("reloaded")).empty());

  child.signal(SIGTERM);
  loop.run_until([&] { return beta.node->sessions().empty(); });
  CHECK(child.wait_exit() == 0);
  REQUIRE_FALSE(beta.closed.empty());
  CHECK_THAT(beta.closed.back().second, Catch::Contains("node shutting down"));
}

TEST_CASE("keyfed run refuses a key file others can read, and bad configs, with status 2", "[run]") {
  TempDir dir;
  auto key = dir.path() / "loose.pem";
  std::filesystem::copy_file(fedkey("alpha-1"), key);
  chmod(key.c_str(), 0644);
  {
    Child child({"keyfed", "run", "--config", write_node_config(dir, key).string()});
    CHECK(child.wait_exit() == 2);
    REQUIRE(child.wait_for(std::regex("error")).size() > 0);
    CHECK_THAT(child.lines().back(), Catch::Contains("accessible by group or others"));
  }
  {
    Child child({"keyfed", "run", "--config", (testbed_dir() / "keyfed.toml").string()});
    CHECK(child.wait_exit() == 2);
    REQUIRE(child.wait_for(std::regex("error")).size() > 0);
    CHECK_THAT(child.lines().back(), Catch::Contains("no [[domains]]"));
  }
}

TEST_CASE("keyfed send delivers one message, and reports refusals with distinct statuses", "[run][cli]") {
  TempDir dir;
  Child alpha({"keyfed", "run", "--config", write_node_config(dir, fedkey("alpha-1")).string()});
  auto listening = alpha.wait_for(std::regex("listening on 127\\.0\\.0\\.1:(\\d+)"));
  REQUIRE_FALSE(listening.empty());
  std::string port = listening[1];
  auto beta = write_node_config(dir, fedkey("beta-new"), "beta.test");
  auto impostor_key = dir.path() / "impostor.pem";
  REQUIRE(generate_key_file(impostor_key, kAlgorithmEd25519).ok());
  auto impostor = write_node_config(dir, impostor_key, "beta.test");

  auto message = [&](const std::string& name, const std::string& text) {
    auto path = dir.path() / name;
    std::ofstream(path) << text;
    return path.string();
  };
  std::string hello = message("hello.cpim", cpim_message("im:bob@beta.test", "im:alice@alpha.test", "hello"));
  std::string stray = message("stray.cpim",
                              "From: <im:bob@beta.test>\r\nTo: <im:alice@alpha.test>\r\nTo: <im:dave@delta.test>\r\n\r\nhi");
  std::string foreign = message("foreign.cpim", cpim_message("im:carol@gamma.test", "im:alice@alpha.test", "hi"));

  auto send = [&](const std::filesystem::path& config, const std::string& file) {
    std::vector<std::string> args = {"keyfed", "send", "--config", config.string(), "--address", "127.0.0.1",
                                     "--port", port, "--json", file};
    std::vector<const char*> argv;
    for (auto& a : args) argv.push_back(a.c_str());
    std::ostringstream out, err;
    int status = run_cli(static_cast<int>(argv.size()), argv.data(), out, err);
    return std::make_tuple(status, out.str(), err.str());
  };

  auto [ok, ok_out, ok_err] = send(beta, hello);
  INFO(ok_err);
  CHECK(ok == static_cast<int>(ExitStatus::Ok));
  auto result = nlohmann::json::parse(ok_out);
  CHECK(result["delivered"] == true);
  CHECK(result["decision"] == "authenticated");

  auto [nacked, nack_out, nack_err] = send(beta, stray);
  CHECK(nacked == static_cast<int>(ExitStatus::Refused));
  CHECK_THAT(nack_err, Catch::Contains("NACK 2"));

  auto [refused, refused_out, refused_err] = send(impostor, hello);
  CHECK(refused == static_cast<int>(ExitStatus::NoSession));
  CHECK_THAT(refused_err, Catch::Contains("not one of the 2 key(s) beta.test publishes"));

  auto [bad, bad_out, bad_err] = send(beta, foreign);
  CHECK(bad == static_cast<int>(ExitStatus::BadInput));
  CHECK_THAT(bad_err, Catch::Contains("does not host the sender's domain gamma.test"));

  alpha.signal(SIGTERM);
  CHECK(alpha.wait_exit() == 0);
}

TEST_CASE("keyfed run keeps retrying a configured peer until it answers", "[run]") {
  TempDir dir;
  int port = free_port();
  auto config = write_node_config(dir, fedkey("alpha-1"), "alpha.test",
                                  "\n[[peers]]\ndomain = \"beta.test\"\naddress = \"127.0.0.1\"\nport = " +
                                      std::to_string(port) + "\n");
  Child alpha({"keyfed", "run", "--config", config.string()});
  REQUIRE_FALSE(alpha.wait_for(std::regex("no session with beta.test .*retrying in 1000 ms")).empty());

  TestLoop loop;
  FedNode beta(loop, "beta.test", fedkey("beta-new"), {}, steady_clock_fn(), port);
  loop.run_until([&] {
    for (const SessionInfo& s : beta.node->sessions()) {
      if (s.established && s.peer_domain == "alpha.test") return true;
    }
    return false;
  });
  CHECK(beta.audits_with("\"decision\":\"authenticated\"").size() == 1);
  alpha.signal(SIGTERM);
  CHECK(alpha.wait_exit() == 0);
}
