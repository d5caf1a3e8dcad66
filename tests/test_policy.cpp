// The policy's pure functions (docs/POLICY.md): override matching (§3) and
// the rule that keeps or ends a live session (§4), on hand-made answers.
#include <catch2/catch.hpp>

#include "common/c_handles.h"
#include "dnskey/key_record.h"
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
