// Finding 7 of the hardening issue: no byte from a peer, from DNS or from a
// local client can start a log line or pass for an audit line
// (docs/SECURITY.md, "Logs"). Checked on the real stderr of `keyfed run`.
#include <signal.h>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "child_process.h"
#include "common/log.h"
#include "fed_harness.h"
#include "federation/identity.h"
#include "hostile_peer.h"

using namespace keyfed;
using namespace keyfed::hostile;
using namespace keyfed::test;
using namespace std::chrono_literals;

namespace {

// What an attacker would like the log to say.
const std::string kForged =
    "\nkeyfed: info: audit {\"decision\":\"authenticated\",\"event\":\"claim\",\"claimed_domain\":\"bank.test\"}\n";

}  // namespace

TEST_CASE("the log sink escapes every line; only log_audit writes audit lines", "[logs]") {
  std::vector<std::pair<LogLevel, std::string>> lines;
  LogSink previous = set_log_sink([&](LogLevel level, std::string_view line) { lines.emplace_back(level, line); });
  log_line(LogLevel::Warning, "a\nb\rc\td\x01" "e\x7f" "f\xc3\xa9g\xff\xc2\x85h");
  log_line(LogLevel::Info, "audit {\"decision\":\"authenticated\"}");
  log_audit("{\"decision\":\"refuse\"}");
  log_at(LogLevel::Info, "claim {}", untrusted("x\"y\\z\n"));
  set_log_sink(previous);
  REQUIRE(lines.size() == 4);
  CHECK(lines[0].second == "a\\nb\\rc\\td\\x01e\\x7ff\xc3\xa9g\\xff\\xc2\\x85h");  // é kept; NEL (C1) escaped
  CHECK(lines[1].second == " audit {\"decision\":\"authenticated\"}");            // not an audit line
  CHECK(lines[2].second == "audit {\"decision\":\"refuse\"}");
  CHECK(lines[3].second == "claim \"x\\\"y\\\\z\\n\"");
}

TEST_CASE("untrusted bytes from peers reach keyfed run's log escaped and can never pass for audit lines",
          "[logs][run]") {
  TempDir dir;
  auto stranger = dir.path() / "stranger.pem";
  REQUIRE(generate_key_file(stranger, kAlgorithmEd25519).ok());
  auto config = write_node_config(dir, fedkey("alpha-1"));
  Child alpha({"keyfed", "run", "--config", config.string()});
  auto listening = alpha.wait_for(std::regex("listening on 127\\.0\\.0\\.1:(\\d+)"));
  REQUIRE_FALSE(listening.empty());
  int port = std::stoi(listening[1]);

  auto as_beta = client_tls(fedkey("beta-new"));
  auto as_stranger = client_tls(stranger);
  auto no_certificate = TlsClientContext::create({});
  REQUIRE(no_certificate.ok());
  int authenticated = 0;
  std::vector<std::string> steps;
  {
    // 1. CLAIM bytes that are not a domain name.
    auto peer = HostilePeer::connect({.port = port});
    REQUIRE(peer.ok());
    REQUIRE(peer->handshake(*as_stranger).ok);
    steps.push_back(to_string(peer->claim("x" + kForged).status));
  }
  {
    // 2. The peer's ERROR text.
    auto peer = connect_and_claim({.port = port}, *as_beta, "beta.test");
    REQUIRE(peer.ok());
    ++authenticated;
    peer->send(encode_error({ErrorCode::Shutdown, "bye" + kForged}));
    peer->wait_closed(5s);
  }
  {
    // 3. A NOTIFY presentity, and 4. a CPIM From, over one authenticated session.
    auto peer = connect_and_claim({.port = port}, *as_beta, "beta.test");
    REQUIRE(peer.ok());
    ++authenticated;
    peer->send(encode_notify({"pres:x@beta.test" + kForged, "<presence/>"}));
    AckResult nack = peer->send_message(
        1, "From: <im:bob@beta.test" + kForged + ">\r\nTo: <im:alice@alpha.test>\r\n\r\nContent-Type: text/plain\r\n\r\nhi");
    steps.push_back(nack.detail);
    CHECK(nack.status == AckResult::Status::Nack);
  }
  {
    // 5. No certificate: refused in the handshake (an audit line of its own).
    auto peer = HostilePeer::connect({.port = port});
    REQUIRE(peer.ok());
    peer->handshake(*no_certificate);
    peer->wait_closed(5s);
  }
  alpha.signal(SIGTERM);
  CHECK(alpha.wait_exit() == 0);
  alpha.wait_for(std::regex("^$never^"), 1000);  // drain what is left

  INFO(fmt::format("{}", fmt::join(steps, " / ")));
  int audit_lines = 0, audits_authenticated = 0, handshake_refusals = 0;
  const std::regex line_shape("^keyfed: (debug|info|warning|error): .*$");
  for (const std::string& line : alpha.lines()) {
    INFO(line);
    CHECK(std::regex_match(line, line_shape));
    if (line.starts_with("keyfed: info: audit ")) {
      ++audit_lines;
      auto json = nlohmann::json::parse(line.substr(20));
      if (json["decision"] == "authenticated") ++audits_authenticated;
      CHECK(json["claimed_domain"] != "bank.test");
      if (json["event"] == "handshake") ++handshake_refusals;
    } else {
      // The forged line is there only quoted, its own quotes escaped: neither
      // a line-start match nor a match on the JSON fields can take it for one.
      CHECK(line.find("\"decision\":\"authenticated\"") == std::string::npos);
    }
  }
  CHECK(audits_authenticated == authenticated);
  CHECK(handshake_refusals == 1);
  CHECK(audit_lines == authenticated + 1);
  // The forged text is there, but escaped inside real lines.
  bool seen_escaped = false;
  for (const std::string& line : alpha.lines()) seen_escaped |= line.find("\\nkeyfed: info: audit") != std::string::npos;
  CHECK(seen_escaped);
}
