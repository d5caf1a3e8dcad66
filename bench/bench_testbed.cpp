// `keyfed testbed up --domains N` against N bare `keyfed run` starts
// (docs/BENCH.md, "Testbed"): how much the testbed adds to starting the same
// nodes by hand, and how long a full mesh of authenticated sessions takes,
// all in the same run on the same machine.
//
//   bench_testbed TESTBED_DIR [--quick] [--json]     (TESTBED_DIR unused; kept for the common syntax)
//
// Figures (ratio = keyfed / baseline):
//   up-to-listening   `keyfed testbed up` (generation, spawn, wait) vs spawning
//                     the same N node configurations bare and waiting for each
//                     control socket
//   full-mesh         from up until every node has an authenticated session with
//                     every other (a message sent for each ordered pair) vs the
//                     same bare start
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "daemon/control_client.h"
#include "report.h"
#include "tooling/testbed.h"

extern char** environ;

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

namespace {

int run(const std::vector<std::string>& args) {
  std::string command;
  for (const std::string& a : args) command += "'" + a + "' ";
  command += ">/dev/null 2>&1";
  int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

bool answers(const fs::path& socket) {
  auto client = keyfed::ControlClient::connect(socket);
  return client && static_cast<bool>(client->request({{"command", "peers"}}));
}

// Starts every node of the testbed in DIR by hand (its configurations,
// nothing else) and waits for each control socket; then stops them.
Clock::duration bare_start(keyfed::Testbed& tb) {
  std::vector<pid_t> pids;
  std::string binary = keyfed::keyfed_binary().string();
  auto start = Clock::now();
  for (keyfed::TestbedDomain* d : tb.nodes()) {
    std::string config = tb.node_config(*d).string();
    std::string a0 = "keyfed", a1 = "run", a2 = "--config";
    char* argv[] = {a0.data(), a1.data(), a2.data(), config.data(), nullptr};
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
    pid_t pid = 0;
    posix_spawn(&pid, binary.c_str(), &actions, nullptr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    pids.push_back(pid);
  }
  for (keyfed::TestbedDomain* d : tb.nodes()) {
    while (!answers(tb.node_socket(*d))) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  auto took = Clock::now() - start;
  for (pid_t pid : pids) ::kill(pid, SIGTERM);
  for (pid_t pid : pids) waitpid(pid, nullptr, 0);
  return took;
}

// Sends a message for every ordered pair and waits until every node has an
// authenticated session with every other.
bool full_mesh(keyfed::Testbed& tb, std::chrono::seconds limit) {
  auto nodes = tb.nodes();
  for (keyfed::TestbedDomain* from : nodes) {
    for (keyfed::TestbedDomain* to : nodes) {
      if (from == to) continue;
      std::string cpim = fmt::format(
          "From: <im:alice@{}>\r\nTo: <im:bob@{}>\r\nDateTime: 2026-11-24T00:00:00Z\r\n\r\nContent-Type: "
          "text/plain\r\n\r\nmesh\r\n",
          from->name, to->name);
      (void)tb.control(*from, {{"command", "submit"}, {"cpim", cpim}});
    }
  }
  auto until = Clock::now() + limit;
  while (Clock::now() < until) {
    bool all = true;
    for (keyfed::TestbedDomain* d : nodes) {
      std::set<std::string> peers;
      auto answer = tb.control(*d, {{"command", "peers"}});
      if (answer && answer->value("ok", false)) {
        for (const json& s : answer->at("peers")) {
          if (s.value("decision", "") == "authenticated" && s.value("established", false)) {
            peers.insert(s.value("peer_domain", ""));
          }
        }
      }
      all = all && peers.size() + 1 >= nodes.size();
    }
    if (all) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  keyfed::bench::Options options = keyfed::bench::parse_options(argc, argv, "bench_testbed");
  int domains = options.quick ? 4 : 50;
  fs::path work = fs::temp_directory_path() / fmt::format("keyfed-bench-testbed-{}", ::getpid());
  fs::remove_all(work);
  // The keyfed binary beside this bench (build/bench/.. /keyfed).
  fs::path keyfed = fs::canonical("/proc/self/exe").parent_path().parent_path() / "keyfed";
  ::setenv("KEYFED_BINARY", keyfed.c_str(), 1);
  std::string dir = (work / "tb").string();
  std::string base = std::to_string(40000 + ::getpid() % 10000);

  auto t0 = Clock::now();
  int status = run({keyfed.string(), "testbed", "up", "--dir", dir, "--domains", std::to_string(domains), "--base-port", base});
  auto up_took = Clock::now() - t0;
  if (status != 0) {
    std::fprintf(stderr, "bench_testbed: keyfed testbed up exited %d (see %s)\n", status, dir.c_str());
    return 1;
  }
  auto tb = keyfed::Testbed::open(dir);
  if (!tb) return 1;
  bool mesh = full_mesh(*tb, std::chrono::seconds(options.quick ? 60 : 300));
  auto mesh_took = Clock::now() - t0;
  run({keyfed.string(), "testbed", "down", "--dir", dir});
  if (!mesh) {
    std::fprintf(stderr, "bench_testbed: no full mesh of authenticated sessions\n");
    run({keyfed.string(), "testbed", "down", "--dir", dir, "--remove"});
    return 1;
  }
  // The baseline: the same nodes, configurations and stores, started bare.
  auto bare = bare_start(*tb);
  run({keyfed.string(), "testbed", "down", "--dir", dir, "--remove"});
  fs::remove_all(work);

  using keyfed::bench::Figure;
  std::vector<Figure> figures = {
      {fmt::format("testbed up --domains {}: all listening", domains), keyfed::bench::ns_per_op(up_took, 1),
       keyfed::bench::ns_per_op(bare, 1), 1},
      {fmt::format("testbed up --domains {}: full mesh authenticated", domains), keyfed::bench::ns_per_op(mesh_took, 1),
       keyfed::bench::ns_per_op(bare, 1), 1},
  };
  keyfed::bench::report(figures, options.json, fmt::format("{} bare `keyfed run` starts, each until its control socket answers", domains).c_str());
  return 0;
}
