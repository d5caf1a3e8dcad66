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
#include "child_process.h"
#include "fed_harness.h"
#include "federation/identity.h"

using namespace keyfed;
using namespace keyfed::test;


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
  // The receiver does not implement what this one Requires: NACK MalformedMessage.
  std::string stray = message("stray.cpim",
                              "From: <im:bob@beta.test>\r\nTo: <im:alice@alpha.test>\r\nNS: x <urn:example:x>\r\n"
                              "Require: x.Vital\r\nx.Vital: yes\r\n\r\nhi");
  std::string foreign = message("foreign.cpim", cpim_message("im:carol@gamma.test", "im:alice@alpha.test", "hi"));

  auto send = [&](const std::filesystem::path& config, const std::string& file) {
    std::vector<std::string> args = {"keyfed", "send", "--direct", "--config", config.string(), "--address", "127.0.0.1",
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
  CHECK_THAT(nack_err, Catch::Contains("NACK 3"));

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
