// Discovery (docs/PROTOCOL.md §8) over the signed testbed.
#include <catch2/catch.hpp>

#include "fed_harness.h"
#include "federation/discovery.h"
#include "testbed_ports.h"

using namespace keyfed;
using namespace keyfed::test;

namespace {

Result<DiscoveredServers> discover_now(TestLoop& loop, Discovery& discovery, const std::string& domain) {
  std::optional<Result<DiscoveredServers>> result;
  discovery.discover(domain, [&](Result<DiscoveredServers> r) { result = std::move(r); });
  loop.run_until([&] { return result.has_value(); });
  return std::move(*result);
}

}  // namespace

TEST_CASE("SRV records are ordered by priority, then by weight (RFC 2782)", "[discovery]") {
  std::mt19937 random(7);
  auto ordered = order_srv_records({{20, 0, 1, "c"}, {10, 0, 2, "a"}, {30, 5, 3, "d"}, {10, 0, 4, "b"}}, random);
  REQUIRE(ordered.size() == 4);
  CHECK(ordered[0].priority == 10);
  CHECK(ordered[1].priority == 10);
  CHECK(ordered[2].target == "c");
  CHECK(ordered[3].target == "d");

  int heavy_first = 0;
  for (int i = 0; i < 1000; ++i) {
    auto o = order_srv_records({{10, 10, 1, "light"}, {10, 90, 2, "heavy"}}, random);
    heavy_first += o[0].target == "heavy";
  }
  CHECK(heavy_first > 800);
  CHECK(heavy_first < 990);
}

TEST_CASE("discovery finds servers by SRV, falls back to the domain's address, and never downgrades",
          "[discovery][testbed]") {
  TestLoop loop;
  auto resolver = KeyResolver::create(loop.get(), testbed_resolver_config());
  REQUIRE(resolver.ok());
  Discovery discovery(**resolver, 25402);

  auto alpha = discover_now(loop, discovery, "alpha.test");
  REQUIRE(alpha.ok());
  CHECK(alpha->via_srv);
  CHECK(alpha->secure);
  REQUIRE(alpha->servers.size() == 2);
  CHECK(alpha->servers[0].host == "server1.alpha.test");
  CHECK(alpha->servers[0].port == 25411);
  CHECK(alpha->servers[1].port == 25401);
  CHECK(alpha->servers[1].address == "127.0.0.1");

  auto beta = discover_now(loop, discovery, "beta.test");
  REQUIRE(beta.ok());
  CHECK_FALSE(beta->via_srv);
  REQUIRE(beta->servers.size() == 1);
  CHECK(beta->servers[0].host == "beta.test");
  CHECK(beta->servers[0].port == 25402);

  auto gamma = discover_now(loop, discovery, "gamma.test");
  REQUIRE_FALSE(gamma.ok());
  CHECK_THAT(gamma.error().message, Catch::Contains("no federation service"));

  auto expired = discover_now(loop, discovery, "expired.test");
  REQUIRE_FALSE(expired.ok());
  CHECK_THAT(expired.error().message, Catch::Contains("bogus"));

  auto absent = discover_now(loop, discovery, "absent.test");
  REQUIRE_FALSE(absent.ok());
  CHECK_THAT(absent.error().message, Catch::Contains("no address"));
}

// One test case for every fixed port the testbed zones name (25401, 25402,
// 25411), so parallel test processes never compete for them.
TEST_CASE("nodes reach each other through discovery, trying servers in order", "[discovery][federation]") {
  TestbedPortsLock ports;  // test_check.cpp listens on them too
  TestLoop loop;
  auto settings = [](NodeSettings& s) {
    s.default_port = 25402;
    s.limits.connect_timeout = std::chrono::milliseconds(1000);
  };
  FedNode alpha(loop, "alpha.test", fedkey("alpha-1"), settings, steady_clock_fn(), 25401);
  FedNode beta(loop, "beta.test", fedkey("beta-new"), settings, steady_clock_fn(), 25402);

  // alpha.test's first SRV target (port 25411) is dark; the second answers.
  std::optional<Result<SessionInfo>> to_alpha;
  beta.node->connect_domain("beta.test", "alpha.test", [&](Result<SessionInfo> r) { to_alpha = std::move(r); });
  loop.run_until([&] { return to_alpha.has_value(); });
  REQUIRE(to_alpha->ok());
  CHECK((*to_alpha)->peer_address == "127.0.0.1:25401");
  CHECK((*to_alpha)->decision == Decision::Authenticated);

  // beta.test has no SRV: its own address on the default port.
  std::optional<Result<SessionInfo>> to_beta;
  alpha.node->connect_domain("alpha.test", "beta.test", [&](Result<SessionInfo> r) { to_beta = std::move(r); });
  loop.run_until([&] { return to_beta.has_value(); });
  REQUIRE(to_beta->ok());
  CHECK((*to_beta)->peer_address == "127.0.0.1:25402");

  // gamma.test says it has no service: no connection is attempted.
  std::optional<Result<SessionInfo>> to_gamma;
  alpha.node->connect_domain("alpha.test", "gamma.test", [&](Result<SessionInfo> r) { to_gamma = std::move(r); });
  loop.run_until([&] { return to_gamma.has_value(); });
  REQUIRE_FALSE(to_gamma->ok());
  CHECK_THAT(to_gamma->error().message, Catch::StartsWith("discovery:"));
}
