// Every outcome of docs/KEYS.md, pinned against the real signed testbed.
#include <fstream>
#include <sstream>

#include <catch2/catch.hpp>

#include "dnskey/resolver.h"
#include "harness.h"

using namespace keyfed;

namespace {

struct Expectation {
  int line = 0;
  std::string domain;
  DnsOutcome outcome = DnsOutcome::TempFail;
  std::size_t keys = 0, skipped = 0;
  std::string reason;
};

std::vector<Expectation> read_expectations() {
  std::ifstream file(test::testdata_dir() / "outcomes.txt");
  REQUIRE(file);
  std::vector<Expectation> out;
  std::string line;
  int n = 0;
  while (std::getline(file, line)) {
    ++n;
    if (line.empty() || line[0] == '#') continue;
    std::istringstream in(line);
    Expectation e;
    std::string outcome;
    e.line = n;
    in >> e.domain >> outcome >> e.keys >> e.skipped;
    std::getline(in >> std::ws, e.reason);
    auto parsed = dns_outcome_from_string(outcome);
    INFO("outcomes.txt:" << n);
    REQUIRE(parsed.has_value());
    e.outcome = *parsed;
    out.push_back(e);
  }
  return out;
}

}  // namespace

TEST_CASE("each testbed domain resolves to its expected outcome (testdata/outcomes.txt)",
          "[outcomes][testbed]") {
  test::TestLoop loop;
  auto resolver = KeyResolver::create(loop.get(), test::testbed_resolver_config());
  REQUIRE(resolver.ok());
  std::vector<Expectation> expectations = read_expectations();
  std::array<int, 6> seen{};
  for (const Expectation& e : expectations) {
    INFO("outcomes.txt:" << e.line << ": " << e.domain);
    DomainKeys answer = test::resolve_now(loop, **resolver, e.domain);
    CHECK(answer.domain == e.domain);
    CHECK(to_string(answer.outcome) == to_string(e.outcome));
    CHECK(answer.keys.size() == e.keys);
    CHECK(answer.skipped.size() == e.skipped);
    if (!e.reason.empty()) CHECK_THAT(answer.reason, Catch::Contains(e.reason));
    ++seen[static_cast<std::size_t>(answer.outcome)];
  }
  for (DnsOutcome o : kAllDnsOutcomes) {
    INFO("outcome " << to_string(o) << " is pinned by at least one domain");
    CHECK(seen[static_cast<std::size_t>(o)] > 0);
  }
  resolver->reset();
}

TEST_CASE("secure answers carry the RRset TTL; denials carry the negative TTL", "[outcomes][testbed]") {
  test::TestLoop loop;
  auto resolver = KeyResolver::create(loop.get(), test::testbed_resolver_config());
  REQUIRE(resolver.ok());
  // zones/*.zone: KEY TTL 300; SOA TTL 3600, minimum 300 -> negative TTL 300 (RFC 2308).
  CHECK(test::resolve_now(loop, **resolver, "alpha.test").ttl == 300);
  CHECK(test::resolve_now(loop, **resolver, "nokey.test").ttl == 300);
  CHECK(test::resolve_now(loop, **resolver, "absent.test").ttl == 300);
  resolver->reset();
}

TEST_CASE("rollover zone: every published key is usable and algorithms are kept apart", "[outcomes][testbed]") {
  test::TestLoop loop;
  auto resolver = KeyResolver::create(loop.get(), test::testbed_resolver_config());
  REQUIRE(resolver.ok());
  DomainKeys beta = test::resolve_now(loop, **resolver, "beta.test");
  REQUIRE(beta.keys.size() == 2);
  CHECK_FALSE(beta.keys[0].same_key(beta.keys[1]));
  CHECK(beta.keys[0].algorithm == kAlgorithmEd25519);
  DomainKeys gamma = test::resolve_now(loop, **resolver, "gamma.test");
  REQUIRE(gamma.keys.size() == 1);
  CHECK(gamma.keys[0].algorithm == kAlgorithmEcdsaP256);
  CHECK(gamma.keys[0].public_key.size() == 64);
  resolver->reset();
}

TEST_CASE("a bogus answer is never read as absence or as keys",
          "[outcomes][testbed]") {
  // tampered.test's KEY was altered after signing: the answer has data, but
  // it must come out bogus with no keys, never keys or no-keys.
  test::TestLoop loop;
  auto resolver = KeyResolver::create(loop.get(), test::testbed_resolver_config());
  REQUIRE(resolver.ok());
  DomainKeys answer = test::resolve_now(loop, **resolver, "tampered.test");
  CHECK(answer.outcome == DnsOutcome::Bogus);
  CHECK(answer.keys.empty());
  resolver->reset();
}
