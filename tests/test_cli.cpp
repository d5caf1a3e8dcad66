// `keyfed lookup` run in-process: output, JSON contract, exit statuses.
#include <sstream>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "cli/cli.h"
#include "common/c_handles.h"
#include "dnskey/key_record.h"
#include "harness.h"

using namespace keyfed;

namespace {

struct CliRun {
  int status;
  std::string out, err;
};

CliRun run(std::vector<std::string> args) {
  args.insert(args.begin(), "keyfed");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  std::ostringstream out, err;
  int status = run_cli(static_cast<int>(argv.size()), argv.data(), out, err);
  return {status, out.str(), err.str()};
}

std::string config() { return (test::testbed_dir() / "keyfed.toml").string(); }

}  // namespace

TEST_CASE("lookup --json reports the documented fields per domain", "[cli]") {
  CliRun r = run({"lookup", "--config", config(), "--json", "alpha.test", "gamma.test", "nokey.test"});
  INFO(r.err);
  REQUIRE(r.status == 0);
  auto report = nlohmann::json::parse(r.out);
  REQUIRE(report.is_array());
  REQUIRE(report.size() == 3);
  CHECK(report[0]["domain"] == "alpha.test");
  CHECK(report[0]["outcome"] == "keys");
  CHECK(report[0]["ttl"] == 300);
  CHECK(report[0]["expires_in"] == 300);
  REQUIRE(report[0]["keys"].size() == 1);
  CHECK(report[0]["keys"][0]["algorithm"] == 15);
  CHECK(report[0]["keys"][0]["key"].get<std::string>().size() == 44);  // base64 of 32 bytes
  CHECK(report[0]["keys"][0]["spki_sha256"].get<std::string>().size() == 64);
  CHECK_FALSE(report[0].contains("reason"));
  CHECK(report[1]["keys"][0]["algorithm"] == 13);
  CHECK(report[2]["outcome"] == "no-keys");
  CHECK(report[2]["keys"].empty());
  CHECK(report[2]["reason"] == "NODATA proven by DNSSEC");
}

TEST_CASE("lookup exit status names the worst outcome", "[cli]") {
  struct Case {
    std::vector<std::string> domains;
    ExitStatus status;
  };
  for (const Case& c : std::vector<Case>{
           {{"alpha.test", "absent.test"}, ExitStatus::Ok},
           {{"example.com"}, ExitStatus::TempFail},
           {{"alpha.test", "insecure.test"}, ExitStatus::Insecure},
           {{"unsupported.test", "insecure.test"}, ExitStatus::Unusable},
           {{"badds.test", "unsupported.test", "example.com"}, ExitStatus::Bogus},
       }) {
    std::vector<std::string> args = {"lookup", "--config", config()};
    args.insert(args.end(), c.domains.begin(), c.domains.end());
    CliRun r = run(args);
    INFO(c.domains.front() << ": " << r.out << r.err);
    CHECK(r.status == static_cast<int>(c.status));
  }
}

TEST_CASE("lookup reports the bogus reason and the skipped records", "[cli]") {
  CliRun r = run({"lookup", "--config", config(), "--json", "expired.test", "mixed.test"});
  CHECK(r.status == static_cast<int>(ExitStatus::Bogus));
  auto report = nlohmann::json::parse(r.out);
  CHECK(report[0]["outcome"] == "bogus");
  CHECK_THAT(report[0]["reason"].get<std::string>(), Catch::Contains("signature expired"));
  CHECK(report[1]["outcome"] == "keys");
  CHECK(report[1]["skipped"].size() == 5);
  CHECK(report[1]["skipped"][0].contains("reason"));
}

TEST_CASE("lookup --trust-anchor --zone checks zone files as peers will see them", "[cli]") {
  auto tb = test::testbed_dir();
  CliRun r = run({"lookup", "--trust-anchor", (tb / "trust-anchor.ds").string(), "--zone",
                  (tb / "test.zone.signed").string(), "--zone", (tb / "beta.test.zone.signed").string(),
                  "--json", "beta.test", "alpha.test"});
  INFO(r.err);
  CHECK(r.status == static_cast<int>(ExitStatus::TempFail));  // alpha.test's zone was not given
  auto report = nlohmann::json::parse(r.out);
  CHECK(report[0]["outcome"] == "keys");
  CHECK(report[0]["keys"].size() == 2);
  CHECK(report[1]["outcome"] == "temp-fail");
}

TEST_CASE("lookup prints a readable table", "[cli]") {
  CliRun r = run({"lookup", "--config", config(), "beta.test", "tampered.test"});
  CHECK_THAT(r.out, Catch::StartsWith("DOMAIN"));
  CHECK_THAT(r.out, Catch::Contains("beta.test"));
  CHECK_THAT(r.out, Catch::Contains("Ed25519"));
  CHECK_THAT(r.out, Catch::Contains("bogus"));
  CHECK_THAT(r.out, Catch::Contains("reason   validation failure"));
}

TEST_CASE("bad input exits 2 with a one-line error", "[cli]") {
  auto tb = test::testbed_dir();
  struct Case {
    std::vector<std::string> args;
    std::string error;
  };
  for (const Case& c : std::vector<Case>{
           {{"lookup", "alpha.test"}, "say where keys come from"},
           {{"lookup", "--config", "/nonexistent.toml", "alpha.test"}, "/nonexistent.toml: cannot read"},
           {{"lookup", "--config", config(), "bad..name"}, "empty label"},
           {{"lookup", "--config", config()}, "domains is required"},
           {{"lookup", "--zone", (tb / "test.zone.signed").string(), "alpha.test"}, "--zone needs --trust-anchor"},
           {{"lookup", "--trust-anchor", (test::testdata_dir() / "anchors/garbled.ds").string(), "--zone",
             (tb / "test.zone.signed").string(), "alpha.test"},
            "garbled.ds:2:"},
           {{"lookup", "--trust-anchor", (tb / "trust-anchor.ds").string(), "--zone",
             (test::testdata_dir() / "zones/garbled.zone").string(), "alpha.test"},
            "garbled.zone:5:"},
           {{"lookup", "--config", config(), "--trust-anchor", "x", "alpha.test"}, "excludes"},
           {{"frobnicate"}, "frobnicate"},
       }) {
    CliRun r = run(c.args);
    INFO(c.args[0] << " ... -> " << r.err);
    CHECK(r.status == static_cast<int>(ExitStatus::BadInput));
    CHECK_THAT(r.err, Catch::Contains(c.error));
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    CHECK(r.out.empty());
  }
}

TEST_CASE("--help documents the exit statuses", "[cli]") {
  CliRun r = run({"lookup", "--help"});
  CHECK(r.status == 0);
  CHECK_THAT(r.out, Catch::Contains("6  a domain's answer is bogus"));
}

TEST_CASE("keygen writes a 0600 key and prints the KEY record that lookup then accepts", "[cli]") {
  test::TempDir dir;
  auto key = (dir.path() / "alpha-next.pem").string();
  CliRun r = run({"keygen", "--out", key, "--algorithm", "p256", "Alpha.Test"});
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK((std::filesystem::status(key).permissions() & std::filesystem::perms::all) ==
        (std::filesystem::perms::owner_read | std::filesystem::perms::owner_write));
  CHECK_THAT(r.out, Catch::StartsWith("_impp._tcp.alpha.test. 300 IN KEY 512 1 13 "));
  // The printed record parses as a usable key.
  ldns_rr* rr = nullptr;
  std::string record = r.out.substr(0, r.out.find('\n'));
  REQUIRE(ldns_rr_new_frm_str(&rr, record.c_str(), 0, nullptr, nullptr) == LDNS_STATUS_OK);
  LdnsRrPtr owned(rr);
  CHECK(parse_key_rr(rr).ok());
  // Never overwrites.
  CliRun again = run({"keygen", "--out", key, "alpha.test"});
  CHECK(again.status == static_cast<int>(ExitStatus::BadInput));
  CHECK_THAT(again.err, Catch::Contains("File exists"));
}
