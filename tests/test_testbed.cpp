// Tests of `keyfed testbed` (docs/TESTBED.md, "keyfed testbed"): a real
// federation of `keyfed run` processes on loopback, real signed zones, real
// TLS; every scenario run against it, in each DNS mode.
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "child_process.h"
#include "harness.h"
#include "tooling/testbed.h"
#include "tooling/testbed_scenarios.h"

using keyfed::test::cli;
using keyfed::test::TempDir;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

// The nodes the testbed starts are this build's keyfed, not the test binary.
struct UseKeyfedBinary {
  UseKeyfedBinary() { ::setenv("KEYFED_BINARY", KEYFED_BINARY, 1); }
};

// `testbed up` on some free ports (another test may hold the first ones tried).
std::tuple<int, std::string, std::string> up(const fs::path& dir, std::vector<std::string> extra) {
  std::tuple<int, std::string, std::string> result;
  for (int attempt = 0; attempt < 5; ++attempt) {
    int base = 20000 + (::getpid() * 37 + attempt * 977) % 30000;
    std::vector<std::string> args{"testbed", "up", "--dir", dir.string(), "--base-port", std::to_string(base)};
    args.insert(args.end(), extra.begin(), extra.end());
    result = cli(args);
    if (std::get<0>(result) == 0 || std::get<2>(result).find("is taken") == std::string::npos) return result;
    cli({"testbed", "down", "--dir", dir.string(), "--remove"});
  }
  return result;
}

// Stops the testbed whatever the test's outcome.
struct Down {
  fs::path dir;
  ~Down() { cli({"testbed", "down", "--dir", dir.string()}); }
};

void run_every_scenario(const std::string& dns) {
  UseKeyfedBinary env;
  TempDir tmp;
  fs::path dir = tmp.path() / "tb";
  Down down{dir};
  auto [status, out, err] = up(dir, {"--domains", "3", "--special", "--dns", dns});
  INFO(out << err);
  REQUIRE(status == 0);
  REQUIRE(out.find("all 3 nodes listen") != std::string::npos);

  // status --json: the documented fields, every node listening.
  auto [st, st_out, st_err] = cli({"testbed", "status", "--dir", dir.string(), "--json"});
  REQUIRE(st == 0);
  json s = json::parse(st_out);
  REQUIRE(s["nodes"].size() == 3);
  for (const json& n : s["nodes"]) {
    CHECK(n["listening"] == true);
    CHECK(n["pid"].is_number_integer());
    CHECK(n["address"] == "127.0.0.1");
    CHECK(n["port"].is_number_integer());
    CHECK(n["sessions"].is_array());
    CHECK(::kill(n["pid"].get<int>(), 0) == 0);
  }

  auto [rs, rs_out, rs_err] = cli({"testbed", "run", "--dir", dir.string(), "--json"});
  INFO(rs_out << rs_err);
  json results = json::parse(rs_out);
  REQUIRE(results.is_array());
  REQUIRE(results.size() == keyfed::scenario_names().size());
  for (const json& r : results) {
    INFO(r.dump());
    CHECK(r["passed"] == true);
    CHECK(r["seconds"].is_number());
    CHECK(r["detail"].is_string());
  }
  CHECK(rs == 0);

  // After the scenarios, sessions exist and are authenticated; the graph shows them.
  auto [st2, st2_out, st2_err] = cli({"testbed", "status", "--dir", dir.string(), "--json"});
  json s2 = json::parse(st2_out);
  std::size_t authenticated = 0;
  for (const json& n : s2["nodes"]) {
    for (const json& session : n["sessions"]) {
      CHECK(session.contains("peer_domain"));
      CHECK((session["direction"] == "inbound" || session["direction"] == "outbound"));
      authenticated += session["decision"] == "authenticated" ? 1 : 0;
    }
  }
  CHECK(authenticated > 0);
  auto [dt, dot, dot_err] = cli({"testbed", "status", "--dir", dir.string(), "--dot"});
  CHECK(dt == 0);
  CHECK(dot.rfind("digraph keyfed_testbed {", 0) == 0);
  CHECK(std::regex_search(dot, std::regex(R"("[a-z]+\.test" -> "[a-z]+\.test" \[label="authenticated")")));
  CHECK(dot.find("\"bogus.test\"") != std::string::npos);

  std::vector<int> pids;
  for (const json& n : s2["nodes"]) pids.push_back(n["pid"].get<int>());
  auto [ds, ds_out, ds_err] = cli({"testbed", "down", "--dir", dir.string()});
  CHECK(ds == 0);
  for (int pid : pids) CHECK(::kill(pid, 0) != 0);
  // run on a stopped testbed: 9, nothing attempted.
  auto [nr, nr_out, nr_err] = cli({"testbed", "run", "--dir", dir.string(), "messages"});
  CHECK(nr == 9);
}

}  // namespace

TEST_CASE("testbed: every scenario passes with embedded DNS", "[testbed][slow]") { run_every_scenario("embedded"); }

TEST_CASE("testbed: every scenario passes with Knot DNS", "[testbed][knot][slow]") { run_every_scenario("knot"); }

TEST_CASE("testbed: bad input is refused with status 2, before anything starts", "[testbed]") {
  UseKeyfedBinary env;
  TempDir tmp;
  fs::path dir = tmp.path() / "tb";
  CHECK(std::get<0>(cli({"testbed", "up", "--dir", dir.string(), "--domains", "0"})) == 2);
  CHECK(std::get<0>(cli({"testbed", "up", "--dir", dir.string(), "--dns", "bind"})) == 2);
  CHECK(std::get<0>(cli({"testbed", "status", "--dir", dir.string()})) == 2);
  CHECK(std::get<0>(cli({"testbed", "run", "--dir", dir.string()})) == 2);
  CHECK_FALSE(fs::exists(dir / "testbed.json"));
  // Too deep for the nodes' Unix sockets: refused by name, nothing created.
  fs::path deep = tmp.path() / std::string(100, 'x');
  auto [ds, dout, derr] = cli({"testbed", "up", "--dir", deep.string()});
  CHECK(ds == 2);
  CHECK(derr.find("too deep") != std::string::npos);
  CHECK_FALSE(fs::exists(deep));
  // A directory that others may write is not trusted with keys.
  fs::path open_dir = tmp.path() / "open";
  fs::create_directories(open_dir);
  fs::permissions(open_dir, fs::perms::all);
  auto [os, oout, oerr] = cli({"testbed", "up", "--dir", open_dir.string()});
  CHECK(os == 2);
  CHECK(oerr.find("writable by group or others") != std::string::npos);
  CHECK_FALSE(fs::exists(open_dir / "testbed.json"));
}

TEST_CASE("testbed: generated zones validate, with each special case's outcome", "[testbed]") {
  TempDir tmp;
  keyfed::TestbedOptions options;
  options.dir = tmp.path() / "tb";
  options.domains = 2;
  options.special = true;
  auto tb = keyfed::Testbed::create(options);
  REQUIRE(tb);
  // Private keys are 0600; the zones are regenerated, not committed.
  for (const auto& entry : fs::recursive_directory_iterator(options.dir)) {
    std::string name = entry.path().filename().string();
    if (name.ends_with(".pem") || name.ends_with(".private")) {
      INFO(entry.path());
      CHECK((fs::status(entry.path()).permissions() & (fs::perms::group_all | fs::perms::others_all)) == fs::perms::none);
    }
  }
  auto [status, out, err] = cli({"lookup", "--json", "--config", (options.dir / "nodes/alpha.test/node.toml").string(),
                                 "alpha.test", "beta.test", "nokeys.test", "insecure.test", "bogus.test"});
  INFO(out << err);
  json answers = json::parse(out);
  REQUIRE(answers.size() == 5);
  CHECK(answers[0]["outcome"] == "keys");
  CHECK(answers[1]["outcome"] == "keys");
  CHECK(answers[2]["outcome"] == "no-keys");
  CHECK(answers[3]["outcome"] == "insecure");
  CHECK(answers[4]["outcome"] == "bogus");
  CHECK(status == 6);
  // A second `up` in the same directory does not generate again: same keys.
  auto again = keyfed::Testbed::create(options);
  CHECK_FALSE(again);
}
