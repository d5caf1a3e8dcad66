// KeyCache: what each peer domain's keys are, kept for their DNS TTL
// (docs/KEYS.md, "Caching").
//
// - Answers live for their TTL clamped to [min_ttl, max_ttl]; proven absence
//   is cached the same way from its negative TTL (RFC 2308); bogus and
//   temp-fail answers for failure_ttl, so a broken domain cannot make the node
//   query in a loop.
// - Concurrent lookups of one domain share one query (single flight).
// - A hit past prefetch_ratio of an entry's lifetime starts a refresh in the
//   background and still answers from the cache, so steady traffic never
//   waits on DNS.
// - When a refresh drops keys (rollover done, key revoked), change listeners
//   are told which ones.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/clock.h"
#include "common/result.h"
#include "dnskey/key_answer.h"
#include "dnskey/resolver.h"

namespace keyfed {

struct KeyCacheConfig {
  Seconds min_ttl{30};
  Seconds max_ttl{86400};
  Seconds failure_ttl{60};
  double prefetch_ratio = 0.9;
  std::size_t max_entries = 100000;
};

inline constexpr Seconds kMaxTtlBound{2147483647};  // RFC 2181 section 8

/// Checks the bounds: 0 <= min_ttl <= max_ttl <= 2^31-1, 1 <= failure_ttl <=
/// 86400, 0.5 <= prefetch_ratio < 1, max_entries >= 1.
Status check_key_cache_config(const KeyCacheConfig& config);

/// One cached answer. Immutable once published; shared with callers.
struct CachedKeys {
  DomainKeys answer;
  TimePoint fetched;
  TimePoint expires;
  TimePoint prefetch_at;

  /// Seconds left before expiry, rounded up (0 once expired).
  std::int64_t remaining_seconds(TimePoint now) const;
};

/// A domain's entry was replaced by a different answer.
struct KeySetChange {
  std::string domain;
  std::shared_ptr<const CachedKeys> before;
  std::shared_ptr<const CachedKeys> after;
  /// Keys the domain last published that the new answer no longer has. Empty
  /// when the new answer is temp-fail: our failure to ask is not a statement by
  /// the domain. A bogus answer removes every key.
  std::vector<FederationKey> removed;
};

struct KeyCacheStats {
  std::uint64_t hits = 0;        ///< answered from a fresh entry
  std::uint64_t misses = 0;      ///< had to wait for DNS
  std::uint64_t coalesced = 0;   ///< misses that joined a query already in flight
  std::uint64_t prefetches = 0;  ///< refreshes started by a hit near expiry
  std::uint64_t queries = 0;     ///< queries sent to the resolver
  std::uint64_t evictions = 0;   ///< unexpired entries dropped to stay under max_entries
  std::array<std::uint64_t, 6> outcomes{};  ///< answers received, by DnsOutcome

  std::uint64_t outcome_count(DnsOutcome outcome) const {
    return outcomes[static_cast<std::size_t>(outcome)];
  }
};

class KeyCache {
 public:
  using Callback = std::function<void(std::shared_ptr<const CachedKeys>)>;
  using ChangeListener = std::function<void(const KeySetChange&)>;

  /// The resolver must outlive the cache. `clock` is injectable for tests.
  KeyCache(KeyResolver& resolver, KeyCacheConfig config, ClockFn clock = steady_clock_fn());
  /// Cancels queries in flight; their waiters are not called.
  ~KeyCache();
  KeyCache(const KeyCache&) = delete;
  KeyCache& operator=(const KeyCache&) = delete;

  /// Gives the keys of `domain` (normalized) to `callback`: before lookup()
  /// returns when a fresh entry is cached, later on the loop otherwise.
  void lookup(const std::string& domain, Callback callback);

  /// The entry for `domain`, fresh or expired, without querying (nullptr if none).
  std::shared_ptr<const CachedKeys> peek(const std::string& domain) const;

  /// Called on the loop for every replaced entry whose outcome or keys changed.
  void add_change_listener(ChangeListener listener);

  const KeyCacheStats& stats() const { return stats_; }
  KeyResolver& resolver() { return resolver_; }
  const KeyCacheConfig& config() const { return config_; }
  std::size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    std::shared_ptr<const CachedKeys> current;
    /// Keys of the last answer that came from the domain (not temp-fail),
    /// against which removals are computed.
    std::vector<FederationKey> last_published;
  };

  void start_query(const std::string& domain);
  void on_answer(const std::string& domain, DomainKeys answer);
  Seconds lifetime_of(const DomainKeys& answer) const;
  void evict_if_full(TimePoint now);

  KeyResolver& resolver_;
  KeyCacheConfig config_;
  ClockFn clock_;
  std::unordered_map<std::string, Entry> entries_;
  std::unordered_map<std::string, KeyResolver::QueryId> in_flight_;
  std::unordered_map<std::string, std::vector<Callback>> waiters_;
  std::vector<ChangeListener> listeners_;
  KeyCacheStats stats_;
};

}  // namespace keyfed
