#include "child_process.h"

#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include <catch2/catch.hpp>

#include "cli/cli.h"

namespace keyfed::test {

Child::Child(std::vector<std::string> args) {
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
    // KEYFED_TEST_BINARY runs these tests against another build (an older
    // release, to show what a fix changed).
    const char* binary = std::getenv("KEYFED_TEST_BINARY");
    execv(binary != nullptr ? binary : KEYFED_BINARY, argv.data());
    _exit(127);
  }
  close(fds[1]);
  err_ = fds[0];
}

Child::~Child() {
  if (pid_ > 0 && !exited_) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  close(err_);
}

std::smatch Child::wait_for(const std::regex& pattern, int timeout_ms) {
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

int Child::wait_exit() {
  int status = 0;
  waitpid(pid_, &status, 0);
  exited_ = true;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void Child::signal(int s) { kill(pid_, s); }

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
                                        const std::string& domain, const std::string& extra) {
  std::ifstream base(testbed_dir() / "keyfed.toml");
  std::stringstream text;
  text << base.rdbuf();
  std::string config = text.str();
  // Paths in keyfed.toml are relative to the testbed directory.
  config = std::regex_replace(config, std::regex("\"([a-z0-9][a-z0-9.-]*\\.(ds|signed|zone))\""),
                              "\"" + testbed_dir().string() + "/$1\"");
  config += "\n[node]\nlisten = \"127.0.0.1\"\nport = 0\n\n[[domains]]\nname = \"" + domain + "\"\nkeys = [\"" +
            key.string() + "\"]\n" + extra;
  auto path = dir.path() / ("node-" + domain + "-" + key.stem().string() + ".toml");
  std::ofstream(path) << config;
  return path;
}


std::tuple<int, std::string, std::string> cli(std::vector<std::string> args) {
  args.insert(args.begin(), "keyfed");
  std::vector<const char*> argv;
  for (auto& a : args) argv.push_back(a.c_str());
  std::ostringstream out, err;
  int status = run_cli(static_cast<int>(argv.size()), argv.data(), out, err);
  return {status, out.str(), err.str()};
}

}  // namespace keyfed::test
