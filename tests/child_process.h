// `keyfed run` as a child process, the way a script or an init system sees
// it: its config file, its stderr, its signals and its exit status.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <regex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "harness.h"

namespace keyfed::test {

/// The keyfed binary run with `args` (argv[0] included), stderr captured.
/// The binary is this build's, or $KEYFED_TEST_BINARY when set.
class Child {
 public:
  explicit Child(std::vector<std::string> args);
  /// Kills the process (SIGKILL) unless it has exited.
  ~Child();
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  /// Reads stderr until a line matches; returns the match (empty on timeout or EOF).
  std::smatch wait_for(const std::regex& pattern, int timeout_ms = 10000);
  /// Waits for the exit; the status, or 128 + the signal that ended it.
  int wait_exit();
  void signal(int s);
  pid_t pid() const { return pid_; }
  /// Every stderr line read so far.
  const std::vector<std::string>& lines() const { return lines_; }

 private:
  pid_t pid_ = -1;
  int err_ = -1;
  bool exited_ = false;
  std::string buffer_;
  std::vector<std::string> lines_;
};

/// A TCP port on 127.0.0.1 that was free a moment ago.
int free_port();

/// A node configuration in `dir`: the testbed's resolver (absolute paths),
/// [node] on 127.0.0.1 port 0, one [[domains]] entry, then `extra`.
std::filesystem::path write_node_config(const TempDir& dir, const std::filesystem::path& key,
                                        const std::string& domain = "alpha.test", const std::string& extra = "");

/// `keyfed ARGS...` run in this process (run_cli): exit status, stdout, stderr.
std::tuple<int, std::string, std::string> cli(std::vector<std::string> args);

/// Polls until `done` holds or `limit` passes (for nodes that are other
/// processes); the last answer of `done`.
template <typename F>
bool eventually(F done, std::chrono::milliseconds limit = std::chrono::seconds(20)) {
  auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return done();
}

}  // namespace keyfed::test
