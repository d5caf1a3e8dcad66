// Tests of `keyfed check` (docs/CLI.md): each seeded problem of the signed
// testbed, validated by real libunbound, and real TLS 1.3 servers (nodes) on
// loopback at the ports the testbed's SRV records name.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "child_process.h"
#include "fed_harness.h"
#include "testbed_ports.h"
#include "tooling/check.h"

using namespace keyfed;
using namespace keyfed::test;

namespace {

std::string testbed(const std::string& name) { return (testbed_dir() / name).string(); }

// keyfed.toml with absolute paths, `min_ttl` and `max_ttl` replaced, and `extra` appended.
std::string write_config(const TempDir& dir, int min_ttl = 30, const std::string& extra = "", int max_ttl = 86400) {
  std::ifstream base(testbed_dir() / "keyfed.toml");
  std::stringstream text;
  text << base.rdbuf();
  std::string config = std::regex_replace(text.str(), std::regex("\"([a-z0-9][a-z0-9.-]*\\.(ds|signed|zone))\""),
                                          "\"" + testbed_dir().string() + "/$1\"");
  config = std::regex_replace(config, std::regex("min_ttl = 30"), "min_ttl = " + std::to_string(min_ttl));
  config = std::regex_replace(config, std::regex("max_ttl = 86400"), "max_ttl = " + std::to_string(max_ttl));
  auto path = dir.path() / "check.toml";
  std::ofstream(path) << config << "\n" << extra;
  return path.string();
}

std::vector<std::string> check_args(std::vector<std::string> domains, std::vector<std::string> more = {}) {
  std::vector<std::string> args = {"check", "--config", testbed("keyfed.toml")};
  args.insert(args.end(), more.begin(), more.end());
  args.insert(args.end(), domains.begin(), domains.end());
  return args;
}

struct Ran {
  int status = -1;
  std::string out, err;
};

// `keyfed check ...` in this process, on its own thread while `loop` serves
// the nodes of the test.
Ran check_beside(TestLoop& loop, const std::vector<std::string>& args) {
  Ran ran;
  run_on_thread(loop, [&] { std::tie(ran.status, ran.out, ran.err) = cli(args); });
  return ran;
}

Ran check(const std::vector<std::string>& args) {
  Ran ran;
  std::tie(ran.status, ran.out, ran.err) = cli(args);
  return ran;
}

// The problem words of a text report, for one severity.
std::set<std::string> problems(const std::string& out, const std::string& severity) {
  std::set<std::string> words;
  std::regex line("^[a-z0-9.-]+ " + severity + " ([a-z-]+): ");
  std::istringstream in(out);
  for (std::string l; std::getline(in, l);) {
    std::smatch m;
    if (std::regex_search(l, m, line)) words.insert(m[1]);
  }
  return words;
}

void settings(NodeSettings& s) { s.limits.handshake_timeout = std::chrono::milliseconds(3000); }

}  // namespace

TEST_CASE("check: problem words and statuses are the documented contract", "[check]") {
  const std::vector<std::tuple<Problem, std::string, int>> table = {
      {Problem::TempFail, "temp-fail", 3},
      {Problem::Insecure, "insecure", 4},
      {Problem::Unusable, "unusable", 5},
      {Problem::Bogus, "bogus", 6},
      {Problem::NoKeys, "no-keys", 10},
      {Problem::KeyNotPublished, "key-not-published", 11},
      {Problem::NoServer, "no-server", 12},
      {Problem::ServerUnreachable, "server-unreachable", 13},
      {Problem::ServerWrongKey, "server-wrong-key", 14},
      {Problem::ServerTlsFailed, "server-tls-failed", 15},
      {Problem::SignaturesExpiring, "signatures-expiring", 1},
      {Problem::TtlTooLow, "ttl-too-low", 1},
      {Problem::TtlTooHigh, "ttl-too-high", 1},
  };
  std::ifstream doc(std::filesystem::path(KEYFED_DOCS_DIR) / "CLI.md");
  std::stringstream text;
  text << doc.rdbuf();
  for (const auto& [problem, word, status] : table) {
    INFO(word);
    CHECK(to_string(problem) == word);
    CHECK(static_cast<int>(status_of(problem)) == status);
    // docs/CLI.md's table of problems names each word with its status.
    CHECK(std::regex_search(text.str(), std::regex("\\| `" + word + "` \\| " + std::to_string(status) + " \\|")));
  }
}

TEST_CASE("check: the most fundamental status wins: DNS, then publication, then service, then warnings", "[check]") {
  using S = CheckStatus;
  CHECK(most_fundamental(S::Bogus, S::TempFail) == S::Bogus);           // as lookup: the highest DNS outcome
  CHECK(most_fundamental(S::TempFail, S::NoKeys) == S::TempFail);       // DNS before 10 and up
  CHECK(most_fundamental(S::ServerWrongKey, S::NoKeys) == S::NoKeys);   // the lowest of 10 and up
  CHECK(most_fundamental(S::KeyNotPublished, S::ServerUnreachable) == S::KeyNotPublished);
  CHECK(most_fundamental(S::ServerTlsFailed, S::Warnings) == S::ServerTlsFailed);
  CHECK(most_fundamental(S::Ok, S::Warnings) == S::Warnings);

  DomainReport r{"alpha.test", {{Problem::ServerUnreachable, Severity::Warning, "down"},
                                {Problem::TtlTooLow, Severity::Warning, "low"}}};
  CHECK(r.status() == S::Warnings);  // a warning never decides more than 1
  r.findings.push_back({Problem::ServerWrongKey, Severity::Error, "wrong"});
  r.findings.push_back({Problem::KeyNotPublished, Severity::Error, "missing"});
  CHECK(r.status() == S::KeyNotPublished);
  DomainReport dns{"tampered.test", {{Problem::Bogus, Severity::Error, "bad"}}};
  CHECK(overall_status({r, dns}) == S::Bogus);
}

TEST_CASE("check: text from DNS or a peer never makes a line of its own", "[check]") {
  DomainReport r{"alpha.test", {{Problem::ServerTlsFailed, Severity::Error, "evil\nalpha.test ok: forged\r\x1b[2J"}}};
  std::string text = check_report_text({r});
  CHECK(std::count(text.begin(), text.end(), '\n') == 1);
  CHECK(text.rfind("alpha.test error server-tls-failed: evil\\n", 0) == 0);
  CHECK(text.find('\x1b') == std::string::npos);
  auto json = check_report_json({r});
  CHECK(json[0]["findings"][0]["detail"].get<std::string>().find('\n') == std::string::npos);
}

TEST_CASE("check: a domain's DNS outcome is its finding and status", "[check]") {
  struct Row {
    std::string domain, word;
    int status;
  };
  for (const Row& row : std::vector<Row>{{"insecure.test", "insecure", 4},
                                         {"unsupported.test", "unusable", 5},
                                         {"tampered.test", "bogus", 6},
                                         {"expired.test", "bogus", 6},
                                         {"badds.test", "bogus", 6},
                                         {"nokey.test", "no-keys", 10},
                                         {"absent.test", "no-keys", 10}}) {
    INFO(row.domain);
    Ran ran = check(check_args({row.domain}));
    CHECK(ran.status == row.status);
    CHECK(problems(ran.out, "error") == std::set<std::string>{row.word});
    CHECK(ran.err.empty());
  }
  // A name outside the given zones: temp-fail, from zone files alone.
  Ran ran = check({"check", "--trust-anchor", testbed("trust-anchor.ds"), "--zone",
                   testbed("alpha.test.zone.signed"), "example.com"});
  CHECK(ran.status == 3);
  CHECK(problems(ran.out, "error") == std::set<std::string>{"temp-fail"});
}

TEST_CASE("check: discovery that finds no server, and a server that does not answer", "[check]") {
  // gamma.test: SRV 0 0 0 "." says there is no service.
  Ran gamma = check(check_args({"gamma.test"}));
  CHECK(gamma.status == 12);
  CHECK(problems(gamma.out, "error") == std::set<std::string>{"no-server"});
  // beta.test: no SRV, its own address on the default port 5269, where nothing listens.
  Ran beta = check(check_args({"beta.test"}));
  CHECK(beta.status == 13);
  CHECK(problems(beta.out, "error") == std::set<std::string>{"server-unreachable"});
  CHECK_THAT(beta.out, Catch::Contains("127.0.0.1:5269"));
}

TEST_CASE("check: our key missing from the validated keys", "[check]") {
  // --key: beta.test's key is not alpha.test's. Publication wins over whatever the servers do.
  Ran ran = check(check_args({"alpha.test"}, {"--key", fedkey("beta-new").string()}));
  CHECK(ran.status == 11);
  CHECK(problems(ran.out, "error").count("key-not-published") == 1);
  CHECK_THAT(ran.out, Catch::Contains("_impp._tcp.alpha.test. 300 IN KEY 512 1 15 "));  // what to publish

  // From zone files alone, as an administrator checks before publishing.
  Ran zones = check({"check", "--trust-anchor", testbed("trust-anchor.ds"), "--zone", testbed("test.zone.signed"),
                     "--zone", testbed("alpha.test.zone.signed"), "--key", fedkey("beta-new").string(), "alpha.test"});
  CHECK(zones.status == 11);
  CHECK(problems(zones.out, "error").count("key-not-published") == 1);

  // The configuration's [[domains]] keys: the first is published, the second is not.
  TempDir dir;
  std::string config = write_config(dir, 30,
                                    "[[domains]]\nname = \"alpha.test\"\nkeys = [\"" + fedkey("alpha-1").string() +
                                        "\", \"" + fedkey("gamma-1").string() + "\"]\n");
  Ran from_config = check({"check", "--config", config, "--json", "alpha.test"});
  CHECK(from_config.status == 11);
  auto json = nlohmann::json::parse(from_config.out);
  REQUIRE(json.size() == 1);
  int not_published = 0;
  for (const auto& f : json[0]["findings"]) {
    if (f["problem"] == "key-not-published") {
      ++not_published;
      CHECK_THAT(f["detail"].get<std::string>(), Catch::Contains("gamma-1.pem"));
    }
  }
  CHECK(not_published == 1);
}

TEST_CASE("check: bad input is 2", "[check]") {
  CHECK(check(check_args({"bad..name"})).status == 2);
  CHECK(check({"check", "alpha.test"}).status == 2);  // no --config, no --trust-anchor
  CHECK(check(check_args({"alpha.test"}, {"--frobnicate"})).status == 2);
  CHECK(check(check_args({"alpha.test"}, {"--warn-days", "-1"})).status == 2);
  Ran missing = check(check_args({"alpha.test"}, {"--key", "/nonexistent/key.pem"}));
  CHECK(missing.status == 2);
  CHECK_THAT(missing.err, Catch::Contains("/nonexistent/key.pem"));
  CHECK(missing.out.empty());
  CHECK(check({"check", "--config", testbed("keyfed.toml"), "--trust-anchor", testbed("trust-anchor.ds"),
               "alpha.test"})
            .status == 2);
}

// Every case that listens on the testbed's fixed ports is here, under one lock.
TEST_CASE("check: servers found by discovery, on the testbed's ports", "[check]") {
  TestbedPortsLock ports;
  TestLoop loop;
  const std::string alpha_key = fedkey("alpha-1").string();

  SECTION("both of alpha.test's servers authenticate: ok, exit 0") {
    FedNode server1(loop, "alpha.test", fedkey("alpha-1"), settings, steady_clock_fn(), 25411);
    FedNode server2(loop, "alpha.test", fedkey("alpha-1"), settings, steady_clock_fn(), 25401);
    Ran ran = check_beside(loop, check_args({"alpha.test"}, {"--key", alpha_key}));
    CHECK(ran.status == 0);
    CHECK(std::regex_search(ran.out, std::regex("^alpha\\.test ok: 1 key validated, 1 own key published, "
                                                "signatures valid for [0-9]+ days, 2 of 2 servers authenticate\n$")));
    Ran json = check_beside(loop, check_args({"alpha.test"}, {"--key", alpha_key, "--json"}));
    CHECK(json.status == 0);
    auto report = nlohmann::json::parse(json.out);
    CHECK(report == nlohmann::json::parse(R"([{"domain": "alpha.test", "status": 0, "findings": []}])"));

    // The KEY TTL (300) against the key cache's bounds.
    TempDir dir;
    Ran low = check_beside(loop, {"check", "--config", write_config(dir, 600), "alpha.test"});
    CHECK(low.status == 1);
    CHECK(problems(low.out, "warning") == std::set<std::string>{"ttl-too-low"});
    CHECK(problems(low.out, "error").empty());
    Ran high = check_beside(loop, {"check", "--config", write_config(dir, 30, "", 100), "alpha.test"});
    CHECK(high.status == 1);
    CHECK(problems(high.out, "warning") == std::set<std::string>{"ttl-too-high"});
  }

  SECTION("the first server is dark: a warning while the second authenticates") {
    FedNode server2(loop, "alpha.test", fedkey("alpha-1"), settings, steady_clock_fn(), 25401);
    Ran ran = check_beside(loop, check_args({"alpha.test"}, {"--key", alpha_key}));
    CHECK(ran.status == 1);
    CHECK(problems(ran.out, "warning") == std::set<std::string>{"server-unreachable"});
    CHECK_THAT(ran.out, Catch::Contains("server1.alpha.test"));
    CHECK_THAT(ran.out, Catch::Contains("127.0.0.1:25411"));
  }

  SECTION("a server presents a key the domain does not publish") {
    FedNode impostor(loop, "alpha.test", fedkey("beta-new"), settings, steady_clock_fn(), 25411);
    FedNode server2(loop, "alpha.test", fedkey("alpha-1"), settings, steady_clock_fn(), 25401);
    Ran ran = check_beside(loop, check_args({"alpha.test"}, {"--key", alpha_key, "--json"}));
    CHECK(ran.status == 14);
    auto report = nlohmann::json::parse(ran.out);
    REQUIRE(report.size() == 1);
    CHECK(report[0]["status"] == 14);
    REQUIRE(report[0]["findings"].size() == 1);
    const auto& finding = report[0]["findings"][0];
    std::set<std::string> fields;
    for (const auto& [name, value] : finding.items()) fields.insert(name);
    CHECK(fields == std::set<std::string>{"problem", "severity", "detail"});
    CHECK(finding["problem"] == "server-wrong-key");
    CHECK(finding["severity"] == "error");
    CHECK_THAT(finding["detail"].get<std::string>(), Catch::Contains("127.0.0.1:25411"));
  }

  SECTION("a server that accepts connections but does not serve the domain") {
    FedNode other(loop, "beta.test", fedkey("beta-new"), settings, steady_clock_fn(), 25411);
    FedNode other2(loop, "beta.test", fedkey("beta-new"), settings, steady_clock_fn(), 25401);
    Ran ran = check_beside(loop, check_args({"alpha.test"}));
    CHECK(ran.status == 15);
    CHECK(problems(ran.out, "error") == std::set<std::string>{"server-tls-failed"});
  }

  SECTION("a server that accepts the connection and never speaks: the handshake deadline") {
    // A listening socket nobody accepts on: the kernel completes TCP, TLS never starts.
    int silent = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(silent >= 0);
    int one = 1;
    ::setsockopt(silent, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(25411);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(silent, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
    REQUIRE(::listen(silent, 4) == 0);
    FedNode server2(loop, "alpha.test", fedkey("alpha-1"), settings, steady_clock_fn(), 25401);
    TempDir dir;
    auto started = std::chrono::steady_clock::now();
    Ran ran = check_beside(loop, {"check", "--config", write_config(dir, 30, "[limits]\nhandshake_timeout_ms = 500\n"),
                                  "alpha.test"});
    auto took = std::chrono::steady_clock::now() - started;
    ::close(silent);
    CHECK(ran.status == 1);  // the second server authenticates
    CHECK(problems(ran.out, "warning") == std::set<std::string>{"server-tls-failed"});
    CHECK_THAT(ran.out, Catch::Contains("no TLS handshake within 500 ms"));
    CHECK(took < std::chrono::seconds(5));
  }

  SECTION("signatures expiring within --warn-days") {
    FedNode server(loop, "expiring.test", fedkey("expiring-1"), settings, steady_clock_fn(), 25412);
    Ran ran = check_beside(loop, check_args({"expiring.test"}, {"--key", fedkey("expiring-1").string()}));
    CHECK(ran.status == 1);
    CHECK(problems(ran.out, "warning") == std::set<std::string>{"signatures-expiring"});
    CHECK(problems(ran.out, "error").empty());
    // Two days left: under a threshold of 3 days, not under 1.
    CHECK(check_beside(loop, check_args({"expiring.test"}, {"--warn-days", "3"})).status == 1);
    CHECK(check_beside(loop, check_args({"expiring.test"}, {"--warn-days", "1"})).status == 0);
    // alpha.test's signatures last 29 days: no warning at the default 7 days, one at 60.
    CHECK(problems(check_beside(loop, check_args({"alpha.test"}, {"--warn-days", "60"})).out, "warning")
              .count("signatures-expiring") == 1);
  }

  SECTION("several domains: the most fundamental status, one object per domain in argument order") {
    FedNode server(loop, "expiring.test", fedkey("expiring-1"), settings, steady_clock_fn(), 25412);
    Ran ran = check_beside(loop, check_args({"expiring.test", "gamma.test", "nokey.test", "tampered.test"},
                                            {"--json"}));
    CHECK(ran.status == 6);
    auto report = nlohmann::json::parse(ran.out);
    REQUIRE(report.size() == 4);
    std::vector<std::pair<std::string, int>> got;
    for (const auto& d : report) {
      std::set<std::string> fields;
      for (const auto& [name, value] : d.items()) fields.insert(name);
      CHECK(fields == std::set<std::string>{"domain", "status", "findings"});
      got.emplace_back(d["domain"], d["status"]);
    }
    CHECK(got == std::vector<std::pair<std::string, int>>{
                     {"expiring.test", 1}, {"gamma.test", 12}, {"nokey.test", 10}, {"tampered.test", 6}});
    // Without the bogus domain: 10 (no-keys) before 12 (no-server) before 1.
    CHECK(check_beside(loop, check_args({"expiring.test", "gamma.test", "nokey.test"})).status == 10);
    CHECK(check_beside(loop, check_args({"expiring.test", "gamma.test"})).status == 12);
  }
}
