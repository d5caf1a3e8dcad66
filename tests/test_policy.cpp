// The policy's pure functions (docs/POLICY.md): override matching (§3) and
// the rule that keeps or ends a live session (§4), on hand-made answers.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "common/c_handles.h"
#include "dnskey/key_record.h"
#include "dnskey/outcome.h"
#include "federation/policy.h"

using namespace keyfed;

namespace {

FederationKey key_from(std::uint8_t seed) {
  // Ed25519 base point multiples are awkward to make by hand; a real key
  // from OpenSSL is simplest.
  EvpPkeyPtr pkey(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
  std::uint8_t raw[32];
  std::size_t len = sizeof raw;
  REQUIRE(EVP_PKEY_get_raw_public_key(pkey.get(), raw, &len) == 1);
  (void)seed;
  auto key = make_federation_key(kKeyFlagsEntity, kKeyProtocolTls, kAlgorithmEd25519, {raw, len});
  REQUIRE(key.ok());
  return *key;
}

DomainKeys answer(DnsOutcome outcome, std::vector<FederationKey> keys = {}) {
  DomainKeys a;
  a.domain = "beta.test";
  a.outcome = outcome;
  a.keys = std::move(keys);
  a.reason = "test";
  return a;
}

}  // namespace

TEST_CASE("overrides: exact names, then the longest *.suffix; *.x does not cover x", "[policy]") {
  PolicyConfig config;
  config.overrides["*.example"] = PeerOverride::Refuse;
  config.overrides["*.good.example"] = PeerOverride::RequireAuth;
  config.overrides["bank.good.example"] = PeerOverride::Refuse;
  CHECK(find_override(config, "x.example") == PeerOverride::Refuse);
  CHECK(find_override(config, "a.b.c.example") == PeerOverride::Refuse);
  CHECK_FALSE(find_override(config, "example").has_value());
  CHECK(find_override(config, "x.good.example") == PeerOverride::RequireAuth);
  CHECK(find_override(config, "good.example") == PeerOverride::Refuse);  // under *.example, not *.good.example
  CHECK(find_override(config, "bank.good.example") == PeerOverride::Refuse);
  CHECK_FALSE(find_override(config, "example.org").has_value());
}

TEST_CASE("a refuse override follows aliases", "[policy]") {
  PolicyConfig config;
  config.overrides["provider.test"] = PeerOverride::Refuse;
  FederationKey k = key_from(1);
  DomainKeys aliased = answer(DnsOutcome::Keys, {k});
  aliased.aliases = {"_impp._tcp.provider.test"};
  PolicyVerdict v = decide(config, Direction::Inbound, aliased, k.spki_der);
  CHECK(v.decision == Decision::Refuse);
  CHECK_THAT(v.reason, Catch::Contains("alias of _impp._tcp.provider.test"));
  aliased.aliases = {"_impp._tcp.other.test"};
  CHECK(decide(config, Direction::Inbound, aliased, k.spki_der).decision == Decision::Authenticated);
}

TEST_CASE("recheck: a session stays only while fresh answers give it the same decision", "[policy][revocation]") {
  FederationKey mine = key_from(1), other = key_from(2);
  PolicyConfig config;
  SessionAuthentication session{Direction::Inbound, Decision::Authenticated, mine.spki_der, mine};

  CHECK(recheck(config, session, answer(DnsOutcome::Keys, {mine, other})).keep);
  CHECK(recheck(config, session, answer(DnsOutcome::Keys, {mine})).confirmed);
  RecheckVerdict removed = recheck(config, session, answer(DnsOutcome::Keys, {other}));
  CHECK_FALSE(removed.keep);
  CHECK_THAT(removed.reason, Catch::Contains("no longer published"));
  CHECK_FALSE(recheck(config, session, answer(DnsOutcome::Bogus)).keep);
  CHECK_FALSE(recheck(config, session, answer(DnsOutcome::Unusable)).keep);
  CHECK_FALSE(recheck(config, session, answer(DnsOutcome::NoKeys)).keep);
  CHECK_FALSE(recheck(config, session, answer(DnsOutcome::Insecure, {mine})).keep);  // still listed, not validated
  RecheckVerdict failed = recheck(config, session, answer(DnsOutcome::TempFail));
  CHECK(failed.keep);
  CHECK_FALSE(failed.confirmed);

  PolicyConfig refusing = config;
  refusing.overrides["beta.test"] = PeerOverride::Refuse;
  CHECK_FALSE(recheck(refusing, session, answer(DnsOutcome::Keys, {mine})).keep);

  PolicyConfig open;
  open.allow_unauthenticated = true;
  SessionAuthentication anonymous{Direction::Inbound, Decision::Unauthenticated, {}, std::nullopt};
  CHECK(recheck(open, anonymous, answer(DnsOutcome::NoKeys)).keep);
  RecheckVerdict now_keyed = recheck(open, anonymous, answer(DnsOutcome::Keys, {mine}));
  CHECK_FALSE(now_keyed.keep);
  CHECK_THAT(now_keyed.reason, Catch::Contains("now publishes keys"));
  CHECK_FALSE(recheck(config, anonymous, answer(DnsOutcome::NoKeys)).keep);  // policy no longer allows it

  SessionAuthentication outbound{Direction::Outbound, Decision::Authenticated, mine.spki_der, mine};
  CHECK_FALSE(recheck(config, outbound, answer(DnsOutcome::Bogus)).keep);  // deferred is not accepted
}

// docs/POLICY.md §1 is the contract: its table is read from the file and
// every cell checked against decide(), both directions, so that the code and
// the document cannot drift apart.
TEST_CASE("decide() is the table of POLICY.md section 1, cell for cell", "[policy][docs]") {
  std::ifstream doc(std::filesystem::path(KEYFED_DOCS_DIR) / "POLICY.md");
  REQUIRE(doc);
  std::vector<std::vector<std::string>> rows;
  bool in_table = false;
  for (std::string line; std::getline(doc, line);) {
    if (line.starts_with("| lookup outcome |")) {
      in_table = true;
      continue;
    }
    if (!in_table) continue;
    if (!line.starts_with("|")) break;
    if (line.starts_with("|---")) continue;
    std::vector<std::string> cells;
    std::stringstream split(line.substr(1));
    for (std::string cell; std::getline(split, cell, '|');) {
      auto first = cell.find_first_not_of(' '), last = cell.find_last_not_of(' ');
      cells.push_back(first == std::string::npos ? "" : cell.substr(first, last - first + 1));
    }
    REQUIRE(cells.size() == 3);
    rows.push_back(cells);
  }
  REQUIRE(rows.size() == 8);  // a row added to the document must be added here too

  FederationKey published = key_from(1), other = key_from(2);
  std::set<std::string> outcomes_seen;
  for (const auto& row : rows) {
    INFO("POLICY.md row: " << row[0] << " | " << row[1] << " | " << row[2]);
    // The outcome is the first `word`; an insecure = "..." names the setting.
    auto tick = row[0].find('`');
    auto word = row[0].substr(tick + 1, row[0].find('`', tick + 1) - tick - 1);
    auto outcome = dns_outcome_from_string(word);
    REQUIRE(outcome.has_value());
    outcomes_seen.insert(word);
    PolicyConfig config;
    for (const char* mode : {"refuse", "unauthenticated", "weak-auth"}) {
      if (row[0].find(fmt::format("insecure = \"{}\"", mode)) != std::string::npos) {
        config.insecure = *insecure_policy_from_string(mode);
      }
    }
    DomainKeys a = answer(*outcome);
    if (*outcome == DnsOutcome::Keys || *outcome == DnsOutcome::Insecure) a.keys = {published};
    // What a cell says, per direction, under allow_unauthenticated = `allow`.
    auto expected = [](const std::string& cell, Direction direction, bool allow) -> Decision {
      if (cell.find("refused (inbound) / **deferred** (outbound)") != std::string::npos) {
        return direction == Direction::Inbound ? Decision::Refuse : Decision::Defer;
      }
      if (cell.starts_with("unauthenticated if `allow_unauthenticated`, else refused")) {
        return allow ? Decision::Unauthenticated : Decision::Refuse;
      }
      if (cell.find("**weakly authenticated**") != std::string::npos) return Decision::WeaklyAuthenticated;
      if (cell.find("**authenticated**") != std::string::npos) return Decision::Authenticated;
      if (cell.starts_with("unauthenticated")) return Decision::Unauthenticated;
      if (cell.find("refused") != std::string::npos) return Decision::Refuse;
      FAIL("POLICY.md §1 has a cell this test cannot read: " << cell);
      return Decision::Refuse;
    };
    for (bool allow : {false, true}) {
      config.allow_unauthenticated = allow;
      for (Direction direction : {Direction::Inbound, Direction::Outbound}) {
        std::string proved_cell = row[1];
        std::string other_cell = row[2] == "same" ? row[1] : row[2];
        Decision with_key = expected(proved_cell, direction, allow);
        Decision without = expected(other_cell, direction, allow);
        CHECK(decide(config, direction, a, published.spki_der).decision == with_key);
        CHECK(decide(config, direction, a, other.spki_der).decision == without);
        // No certificate at all reads the second column too.
        CHECK(decide(config, direction, a, {}).decision == without);
      }
    }
  }
  // Every outcome has its row.
  for (DnsOutcome o : kAllDnsOutcomes) CHECK(outcomes_seen.count(std::string(to_string(o))) == 1);
}
