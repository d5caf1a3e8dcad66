// KeyCache against the real testbed, with an injected clock for TTLs.
#include <fstream>
#include <sstream>

#include <catch2/catch.hpp>

#include "dnskey/key_cache.h"
#include "harness.h"

using namespace keyfed;
using std::chrono::seconds;

namespace {

struct CacheFixture {
  test::TestLoop loop;  // first: outlives the resolver and the cache
  test::ManualClock clock;
  std::unique_ptr<KeyResolver> resolver;
  std::unique_ptr<KeyCache> cache;

  explicit CacheFixture(KeyCacheConfig config = {}, ResolverConfig resolver_config = test::testbed_resolver_config()) {
    auto r = KeyResolver::create(loop.get(), std::move(resolver_config));
    REQUIRE(r.ok());
    resolver = std::move(r).value();
    cache = std::make_unique<KeyCache>(*resolver, config, clock.fn());
  }
  ~CacheFixture() {
    cache.reset();
    resolver.reset();
  }
  std::shared_ptr<const CachedKeys> lookup(const std::string& domain) {
    return test::lookup_now(loop, *cache, domain);
  }
  // A lookup that must be answered from the cache, before lookup() returns.
  std::shared_ptr<const CachedKeys> lookup_cached(const std::string& domain) {
    std::shared_ptr<const CachedKeys> entry;
    cache->lookup(domain, [&](std::shared_ptr<const CachedKeys> e) { entry = std::move(e); });
    REQUIRE(entry != nullptr);
    return entry;
  }
  void settle() {
    loop.run_until([&] { return resolver->pending() == 0; });
  }
};

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

ResolverConfig with_zone_file(ResolverConfig config, const std::string& origin,
                              const std::filesystem::path& file) {
  for (ZoneFile& zone : config.zones) {
    if (zone.origin == origin) zone.path = file;
  }
  return config;
}

}  // namespace

TEST_CASE("an entry lives for its TTL and is then queried again", "[key_cache]") {
  CacheFixture f;
  auto first = f.lookup("alpha.test");
  CHECK(first->answer.outcome == DnsOutcome::Keys);
  CHECK(first->remaining_seconds(f.clock.now()) == 300);
  CHECK(f.cache->stats().misses == 1);

  f.clock.advance(seconds(250));  // before the prefetch point (270 s)
  auto hit = f.lookup_cached("alpha.test");
  CHECK(hit == first);
  CHECK(f.cache->stats().hits == 1);
  CHECK(f.resolver->queries_sent() == 1);

  f.clock.advance(seconds(51));  // 301 s: expired
  auto again = f.lookup("alpha.test");
  CHECK(again != first);
  CHECK(again->answer.outcome == DnsOutcome::Keys);
  CHECK(f.cache->stats().misses == 2);
  CHECK(f.resolver->queries_sent() == 2);
}

TEST_CASE("TTLs are clamped to min_ttl and max_ttl", "[key_cache]") {
  SECTION("raised to min_ttl") {
    CacheFixture f(KeyCacheConfig{.min_ttl = seconds(900), .max_ttl = seconds(3600)});
    auto entry = f.lookup("alpha.test");
    CHECK(entry->answer.ttl == 300);
    CHECK(entry->remaining_seconds(f.clock.now()) == 900);
  }
  SECTION("lowered to max_ttl") {
    CacheFixture f(KeyCacheConfig{.min_ttl = seconds(10), .max_ttl = seconds(120)});
    auto entry = f.lookup("nokey.test");
    CHECK(entry->answer.outcome == DnsOutcome::NoKeys);
    CHECK(entry->remaining_seconds(f.clock.now()) == 120);
  }
}

TEST_CASE("proven absence is cached for its negative TTL (RFC 2308)", "[key_cache]") {
  CacheFixture f;
  for (const char* domain : {"nokey.test", "absent.test"}) {
    auto entry = f.lookup(domain);
    CHECK(entry->answer.outcome == DnsOutcome::NoKeys);
    CHECK(entry->remaining_seconds(f.clock.now()) == 300);
  }
  f.clock.advance(seconds(260));
  CHECK(f.lookup_cached("nokey.test")->answer.outcome == DnsOutcome::NoKeys);
  CHECK(f.lookup_cached("absent.test")->answer.outcome == DnsOutcome::NoKeys);
  CHECK(f.resolver->queries_sent() == 2);
  f.clock.advance(seconds(41));
  f.lookup("nokey.test");
  CHECK(f.resolver->queries_sent() == 3);
}

TEST_CASE("bogus and temp-fail answers are cached for failure_ttl only", "[key_cache]") {
  CacheFixture f(KeyCacheConfig{.failure_ttl = seconds(60)});
  for (const char* domain : {"tampered.test", "example.com"}) {
    INFO(domain);
    auto entry = f.lookup(domain);
    CHECK_FALSE(is_answer_from_domain(entry->answer.outcome));
    CHECK(entry->remaining_seconds(f.clock.now()) == 60);
  }
  CHECK(f.resolver->queries_sent() == 2);
  f.clock.advance(seconds(50));
  // Hammering a broken domain does not query again.
  for (int i = 0; i < 10; ++i) f.lookup_cached("tampered.test");
  CHECK(f.resolver->queries_sent() == 2);
  f.clock.advance(seconds(11));
  CHECK(f.lookup("tampered.test")->answer.outcome == DnsOutcome::Bogus);
  CHECK(f.resolver->queries_sent() == 3);
  CHECK(f.cache->stats().outcome_count(DnsOutcome::Bogus) == 2);
  CHECK(f.cache->stats().outcome_count(DnsOutcome::TempFail) == 1);
}

TEST_CASE("concurrent lookups of one domain share one query (single flight)", "[key_cache]") {
  CacheFixture f;
  constexpr int kRequests = 25;
  std::vector<std::shared_ptr<const CachedKeys>> answers;
  for (int i = 0; i < kRequests; ++i) {
    f.cache->lookup("gamma.test", [&](std::shared_ptr<const CachedKeys> e) { answers.push_back(e); });
  }
  f.cache->lookup("beta.test", [&](std::shared_ptr<const CachedKeys> e) { answers.push_back(e); });
  f.loop.run_until([&] { return answers.size() == kRequests + 1; });
  CHECK(f.resolver->queries_sent() == 2);  // one for gamma, one for beta
  CHECK(f.cache->stats().queries == 2);
  CHECK(f.cache->stats().coalesced == kRequests - 1);
  int gamma = 0;
  for (const auto& a : answers) {
    if (a->answer.domain == "gamma.test") {
      ++gamma;
      CHECK(a == answers.front());  // the very same entry
    }
  }
  CHECK(gamma == kRequests);
}

TEST_CASE("an entry in use is refreshed before it expires (prefetch)", "[key_cache]") {
  CacheFixture f;
  auto first = f.lookup("alpha.test");
  f.clock.advance(seconds(269));
  f.lookup_cached("alpha.test");
  CHECK(f.cache->stats().prefetches == 0);

  f.clock.advance(seconds(2));  // 271 s: past 90 % of 300 s
  auto during = f.lookup_cached("alpha.test");  // answered at once from the cache
  CHECK(during == first);
  CHECK(f.cache->stats().prefetches == 1);
  CHECK(f.resolver->queries_sent() == 2);
  f.lookup_cached("alpha.test");  // refresh in flight: no second prefetch
  CHECK(f.resolver->queries_sent() == 2);
  f.settle();

  auto refreshed = f.cache->peek("alpha.test");
  CHECK(refreshed != first);
  CHECK(refreshed->fetched == f.clock.now());
  f.clock.advance(seconds(100));  // 371 s: the first entry would have expired
  CHECK(f.lookup_cached("alpha.test") == refreshed);
  CHECK(f.cache->stats().misses == 1);  // steady traffic never waited on DNS again
}

TEST_CASE("a failed prefetch keeps serving the valid entry until it expires", "[key_cache]") {
  CacheFixture f;
  auto first = f.lookup("alpha.test");
  // alpha.test's name server goes away: its zone is no longer served.
  ResolverConfig dead = test::testbed_resolver_config();
  std::erase_if(dead.zones, [](const ZoneFile& z) { return z.origin == "alpha.test"; });
  REQUIRE(f.resolver->reload(dead).ok());

  bool notified = false;
  f.cache->add_change_listener([&](const KeySetChange&) { notified = true; });
  f.clock.advance(seconds(280));
  f.lookup_cached("alpha.test");
  f.settle();
  CHECK(f.cache->stats().outcome_count(DnsOutcome::TempFail) == 1);
  auto kept = f.cache->peek("alpha.test");
  CHECK(kept->answer.outcome == DnsOutcome::Keys);
  CHECK(kept->expires == first->expires);
  CHECK_FALSE(notified);
  f.lookup_cached("alpha.test");  // no new prefetch for the kept entry
  CHECK(f.cache->stats().prefetches == 1);
}

TEST_CASE("rollover: old and new key both accepted and then the dropped key is reported",
          "[key_cache][rollover]") {
  CacheFixture f;
  std::vector<KeySetChange> changes;
  f.cache->add_change_listener([&](const KeySetChange& c) { changes.push_back(c); });

  auto during = f.lookup("beta.test");
  REQUIRE(during->answer.outcome == DnsOutcome::Keys);
  REQUIRE(during->answer.keys.size() == 2);

  // The administrator publishes the rolled zone (old key retired).
  REQUIRE(f.resolver->reload(with_zone_file(test::testbed_resolver_config(), "beta.test",
                                            test::testbed_dir() / "beta.test.rolled.zone.signed"))
              .ok());
  f.clock.advance(seconds(200));
  CHECK(f.lookup_cached("beta.test")->answer.keys.size() == 2);  // still within the TTL
  CHECK(changes.empty());

  f.clock.advance(seconds(101));  // TTL passed
  auto after = f.lookup("beta.test");
  REQUIRE(after->answer.keys.size() == 1);
  const FederationKey& kept = after->answer.keys[0];
  REQUIRE(changes.size() == 1);
  CHECK(changes[0].domain == "beta.test");
  CHECK(changes[0].before == during);
  CHECK(changes[0].after == after);
  REQUIRE(changes[0].removed.size() == 1);
  const FederationKey& dropped = changes[0].removed[0];
  CHECK_FALSE(dropped.same_key(kept));
  CHECK((dropped.same_key(during->answer.keys[0]) || dropped.same_key(during->answer.keys[1])));
  CHECK((kept.same_key(during->answer.keys[0]) || kept.same_key(during->answer.keys[1])));
}

TEST_CASE("a refresh that turns bogus drops every key of the domain", "[key_cache]") {
  test::TempDir dir;
  CacheFixture f;
  std::vector<KeySetChange> changes;
  f.cache->add_change_listener([&](const KeySetChange& c) { changes.push_back(c); });
  auto good = f.lookup("alpha.test");
  REQUIRE(good->answer.keys.size() == 1);

  // Someone alters alpha.test's KEY record without the zone key.
  std::string zone = read_file(test::testbed_dir() / "alpha.test.zone.signed");
  std::string b64 = good->answer.keys[0].key_base64();
  auto at = zone.find(b64);
  REQUIRE(at != std::string::npos);
  zone.replace(at, b64.size(), "x7rvGegRSa07SJBWN4CnzwS5cvMLC2gOuBB/Atj/AXk=");
  std::filesystem::path forged = dir.path() / "alpha.test.zone.signed";
  std::ofstream(forged) << zone;
  REQUIRE(f.resolver->reload(with_zone_file(test::testbed_resolver_config(), "alpha.test", forged)).ok());

  f.clock.advance(seconds(301));
  auto bogus = f.lookup("alpha.test");
  CHECK(bogus->answer.outcome == DnsOutcome::Bogus);
  REQUIRE(changes.size() == 1);
  REQUIRE(changes[0].removed.size() == 1);
  CHECK(changes[0].removed[0].same_key(good->answer.keys[0]));
}

TEST_CASE("the cache stays under max_entries", "[key_cache]") {
  CacheFixture f(KeyCacheConfig{.max_entries = 2});
  f.lookup("alpha.test");
  f.lookup("beta.test");
  f.lookup("gamma.test");
  CHECK(f.cache->size() == 2);
  CHECK(f.cache->stats().evictions == 1);
  CHECK(f.cache->peek("gamma.test") != nullptr);
}

TEST_CASE("absurd cache bounds are refused", "[key_cache][config]") {
  CHECK_FALSE(check_key_cache_config({.min_ttl = seconds(100), .max_ttl = seconds(10)}).ok());
  CHECK_FALSE(check_key_cache_config({.min_ttl = seconds(-1)}).ok());
  CHECK_FALSE(check_key_cache_config({.max_ttl = seconds(1LL << 32)}).ok());
  CHECK_FALSE(check_key_cache_config({.failure_ttl = seconds(0)}).ok());
  CHECK_FALSE(check_key_cache_config({.prefetch_ratio = 1.5}).ok());
  CHECK(check_key_cache_config({}).ok());
}

TEST_CASE("the cache is bounded in bytes, not only in entries", "[key_cache][budgets]") {
  CacheFixture f({.max_bytes = 64 * 1024});
  std::size_t one = 0;
  for (int i = 0; i < 300; ++i) {
    f.lookup(fmt::format("n{}.wild.test", i));
    if (i == 0) one = f.cache->bytes();
    CHECK(f.cache->bytes() <= 64 * 1024);
  }
  REQUIRE(one > 0);
  CHECK(300 * one > 64 * 1024);  // so the bound was met by evicting
  CHECK(f.cache->size() < 300);
  CHECK(f.cache->stats().evictions > 0);
  // Raised, then lowered again: a lower bound applies at once.
  REQUIRE(f.cache->reconfigure({.max_bytes = 1024 * 1024}).ok());
  for (int i = 0; i < 300; ++i) f.lookup(fmt::format("m{}.wild.test", i));
  CHECK(f.cache->bytes() > 64 * 1024);
  REQUIRE(f.cache->reconfigure({.max_bytes = 64 * 1024}).ok());
  CHECK(f.cache->bytes() <= 64 * 1024);
  CHECK_FALSE(f.cache->reconfigure({.max_bytes = 100}).ok());
}

TEST_CASE("a cancelled lookup never calls back, and the query goes when nobody waits", "[key_cache][budgets]") {
  test::SilentNameServer silent;
  ResolverConfig slow;
  slow.trust_anchor = test::testbed_dir() / "trust-anchor.ds";
  slow.forwarders = {silent.address()};
  slow.query_timeout = std::chrono::milliseconds(30000);
  CacheFixture f({}, slow);
  bool called = false;
  auto first = f.cache->lookup("slow.example", [&](auto) { called = true; });
  auto second = f.cache->lookup("slow.example", [&](auto) { called = true; });
  REQUIRE(first != 0);
  REQUIRE(f.resolver->pending() == 1);
  f.cache->cancel(first);
  CHECK(f.resolver->pending() == 1);  // the second still waits
  f.cache->cancel(second);
  CHECK(f.resolver->pending() == 0);
  CHECK(f.cache->stats().cancelled == 1);
  f.cache->cancel(second);  // twice: ignored
  f.cache->cancel(0);
  CHECK_FALSE(called);
}

TEST_CASE("answer listeners hear of every answer; clear() forgets every entry", "[key_cache]") {
  CacheFixture f;
  std::vector<std::string> heard;
  f.cache->add_answer_listener([&](const std::string& domain, const auto&) { heard.push_back(domain); });
  f.lookup("alpha.test");
  f.clock.advance(seconds(301));
  f.lookup("alpha.test");  // the same keys again: no change, but an answer
  CHECK(heard == std::vector<std::string>{"alpha.test", "alpha.test"});
  CHECK(f.cache->is_fresh("alpha.test"));
  f.cache->clear();
  CHECK_FALSE(f.cache->is_fresh("alpha.test"));
  CHECK(f.cache->size() == 0);
  CHECK(f.cache->bytes() == 0);
  f.lookup("alpha.test");
  CHECK(f.cache->stats().queries == 3);
}
