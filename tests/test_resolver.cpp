#include <catch2/catch.hpp>

#include "dnskey/resolver.h"
#include "harness.h"

using namespace keyfed;
using keyfed::test::SilentNameServer;

namespace {

ResolverConfig silent_forwarder_config(const SilentNameServer& server,
                                       std::chrono::milliseconds timeout = std::chrono::milliseconds(300)) {
  ResolverConfig config;
  config.mode = ResolverMode::Production;
  config.trust_anchor = test::testbed_dir() / "trust-anchor.ds";
  config.forwarders = {server.address()};
  config.query_timeout = timeout;
  return config;
}

}  // namespace

TEST_CASE("a silent name server costs one deadline and gives temp-fail", "[resolver]") {
  SilentNameServer server;
  test::TestLoop loop;
  auto resolver = KeyResolver::create(loop.get(), silent_forwarder_config(server));
  REQUIRE(resolver.ok());
  // Not a test. name: libunbound answers those locally outside the testbed (RFC 6761).
  DomainKeys answer = test::resolve_now(loop, **resolver, "alpha.example");
  CHECK(answer.outcome == DnsOutcome::TempFail);
  CHECK_THAT(answer.reason, Catch::Contains("no answer within 300 ms"));
  CHECK((*resolver)->pending() == 0);
}

TEST_CASE("other lookups go on while one waits on a silent name server", "[resolver]") {
  SilentNameServer server;
  test::TestLoop loop;
  // The slow deadline must outlast the fast lookup by far, sanitizer builds included.
  auto slow = KeyResolver::create(loop.get(), silent_forwarder_config(server, std::chrono::milliseconds(4000)));
  auto fast = KeyResolver::create(loop.get(), test::testbed_resolver_config());
  REQUIRE(slow.ok());
  REQUIRE(fast.ok());
  std::optional<DomainKeys> slow_answer;
  (*slow)->resolve("alpha.example", [&](DomainKeys a) { slow_answer = std::move(a); });
  DomainKeys fast_answer = test::resolve_now(loop, **fast, "alpha.test");
  CHECK(fast_answer.outcome == DnsOutcome::Keys);
  CHECK_FALSE(slow_answer.has_value());  // still waiting on its deadline
  loop.run_until([&] { return slow_answer.has_value(); });
  CHECK(slow_answer->outcome == DnsOutcome::TempFail);
}

TEST_CASE("a cancelled query never calls back", "[resolver]") {
  SilentNameServer server;
  test::TestLoop loop;
  auto resolver = KeyResolver::create(loop.get(), silent_forwarder_config(server));
  REQUIRE(resolver.ok());
  bool called = false;
  auto id = (*resolver)->resolve("alpha.test", [&](DomainKeys) { called = true; });
  CHECK((*resolver)->pending() == 1);
  (*resolver)->cancel(id);
  CHECK((*resolver)->pending() == 0);
  // Past the deadline, nothing may arrive.
  bool waited = false;
  uv_timer_t timer;
  uv_timer_init(loop.get(), &timer);
  timer.data = &waited;
  uv_timer_start(&timer, [](uv_timer_t* t) { *static_cast<bool*>(t->data) = true; }, 500, 0);
  loop.run_until([&] { return waited; });
  uv_close(reinterpret_cast<uv_handle_t*>(&timer), nullptr);
  CHECK_FALSE(called);
}

TEST_CASE("reload moves pending queries to the new context and a bad reload keeps the old one",
          "[resolver]") {
  SilentNameServer server;
  test::TestLoop loop;
  auto resolver = KeyResolver::create(loop.get(), silent_forwarder_config(server, std::chrono::milliseconds(4000)));
  REQUIRE(resolver.ok());
  std::optional<DomainKeys> answer;
  (*resolver)->resolve("beta.test", [&](DomainKeys a) { answer = std::move(a); });
  CHECK((*resolver)->pending() == 1);

  ResolverConfig broken = test::testbed_resolver_config();
  broken.trust_anchor = test::testdata_dir() / "anchors" / "not-an-anchor.ds";
  Status bad = (*resolver)->reload(broken);
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(bad.error().message, Catch::Contains("not-an-anchor.ds:2"));
  CHECK((*resolver)->config().mode == ResolverMode::Production);

  // Now point it at the testbed: the pending query is answered from there.
  REQUIRE((*resolver)->reload(test::testbed_resolver_config()).ok());
  loop.run_until([&] { return answer.has_value(); });
  CHECK(answer->outcome == DnsOutcome::Keys);
  CHECK(answer->keys.size() == 2);
}

TEST_CASE("in the testbed a name outside the zones is refused at once and not timed out",
          "[resolver][testbed]") {
  test::TestLoop loop;
  ResolverConfig config = test::testbed_resolver_config();
  config.query_timeout = std::chrono::milliseconds(60000);
  auto resolver = KeyResolver::create(loop.get(), config);
  REQUIRE(resolver.ok());
  // With a 60 s deadline, only a local refusal can end this within the
  // harness limit (20 s); the reason says which it was.
  DomainKeys answer = test::resolve_now(loop, **resolver, "example.com");
  CHECK(answer.outcome == DnsOutcome::TempFail);
  CHECK_THAT(answer.reason, Catch::Contains("REFUSED"));
  CHECK_THAT(answer.reason, !Catch::Contains("no answer within"));
}

TEST_CASE("in the testbed a delegation to a zone that was not loaded fails at once", "[resolver][testbed]") {
  test::TestLoop loop;
  ResolverConfig config = test::testbed_resolver_config();
  std::erase_if(config.zones, [](const ZoneFile& z) { return z.origin == "alpha.test"; });
  config.query_timeout = std::chrono::milliseconds(60000);
  auto resolver = KeyResolver::create(loop.get(), config);
  REQUIRE(resolver.ok());
  // test. delegates alpha.test to a name server on 127.0.0.1; the testbed
  // resolver queries no name server at all, so this is a fast SERVFAIL.
  DomainKeys answer = test::resolve_now(loop, **resolver, "alpha.test");
  CHECK(answer.outcome == DnsOutcome::TempFail);
  CHECK_THAT(answer.reason, Catch::Contains("SERVFAIL"));
}
