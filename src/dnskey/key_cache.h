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
//   are told which ones; answer listeners hear of every answer stored, so a
//   user of the keys can check what it relies on against each fresh answer
//   (docs/POLICY.md §4) without depending on what the cache remembers.
// - Bounded in entries and in bytes (docs/SECURITY.md, "Budgets"). A waiter
//   can cancel its lookup; the query is cancelled when nobody waits for it.
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
  std::size_t max_bytes = 32 * 1024 * 1024;  ///< memory of the cached answers (estimated)
};

inline constexpr Seconds kMaxTtlBound{2147483647};  // RFC 2181 section 8

/// Checks the bounds: 0 <= min_ttl <= max_ttl <= 2^31-1, 1 <= failure_ttl <=
/// 86400, 0.5 <= prefetch_ratio < 1, max_entries >= 1, max_bytes >= 64 KiB.
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
  std::uint64_t evictions = 0;   ///< unexpired entries dropped to stay under max_entries / max_bytes
  std::uint64_t cancelled = 0;   ///< queries cancelled because every waiter gave up
  std::array<std::uint64_t, 6> outcomes{};  ///< answers received, by DnsOutcome

  std::uint64_t outcome_count(DnsOutcome outcome) const {
    return outcomes[static_cast<std::size_t>(outcome)];
  }
};

class KeyCache {
 public:
  using Callback = std::function<void(std::shared_ptr<const CachedKeys>)>;
  using ChangeListener = std::function<void(const KeySetChange&)>;
  /// An answer was stored for `domain` (also when it changed nothing).
  using AnswerListener = std::function<void(const std::string& domain, const std::shared_ptr<const CachedKeys>&)>;
  /// Names a lookup that waits for DNS; 0 for one answered at once.
  using LookupId = std::uint64_t;

  /// The resolver must outlive the cache. `clock` is injectable for tests.
  KeyCache(KeyResolver& resolver, KeyCacheConfig config, ClockFn clock = steady_clock_fn());
  /// Cancels queries in flight; their waiters are not called.
  ~KeyCache();
  KeyCache(const KeyCache&) = delete;
  KeyCache& operator=(const KeyCache&) = delete;

  /// Gives the keys of `domain` (normalized) to `callback`: before lookup()
  /// returns when a fresh entry is cached (and returns 0), later on the loop
  /// otherwise (and returns an id for cancel()).
  LookupId lookup(const std::string& domain, Callback callback);

  /// Forgets a waiting lookup: its callback will not run. When no other
  /// lookup waits for the same domain, the query itself is cancelled. Ids
  /// already answered, or 0, are ignored.
  void cancel(LookupId id);

  /// The entry for `domain`, fresh or expired, without querying (nullptr if none).
  std::shared_ptr<const CachedKeys> peek(const std::string& domain) const;
  /// True when lookup() would answer at once, without DNS.
  bool is_fresh(const std::string& domain) const;

  /// Drops every entry, so that the next lookups ask the resolver again
  /// (after its trust anchor or zones changed). Queries in flight stay.
  void clear();
  /// New bounds (checked as check_key_cache_config), applied at once.
  Status reconfigure(KeyCacheConfig config);

  /// Called on the loop for every replaced entry whose outcome or keys changed.
  void add_change_listener(ChangeListener listener);
  /// Called on the loop for every answer stored, after change listeners.
  void add_answer_listener(AnswerListener listener);

  const KeyCacheStats& stats() const { return stats_; }
  KeyResolver& resolver() { return resolver_; }
  const KeyCacheConfig& config() const { return config_; }
  std::size_t size() const { return entries_.size(); }
  /// Every entry, by domain (for `keyfed keys`).
  std::vector<std::shared_ptr<const CachedKeys>> entries() const;
  /// Estimated memory of the entries, as counted against max_bytes.
  std::size_t bytes() const { return bytes_; }
  /// The cache's clock (injected in tests).
  TimePoint now() const { return clock_(); }

 private:
  struct Entry {
    std::shared_ptr<const CachedKeys> current;
    /// Keys of the last answer that came from the domain (not temp-fail),
    /// against which removals are computed.
    std::vector<FederationKey> last_published;
    std::size_t bytes = 0;
  };
  struct Waiter {
    LookupId id;
    Callback callback;
  };

  void start_query(const std::string& domain);
  void on_answer(const std::string& domain, DomainKeys answer);
  Seconds lifetime_of(const DomainKeys& answer) const;
  /// Makes room for `incoming` more bytes and one more entry.
  void evict_for(std::size_t incoming, TimePoint now);
  void erase_entry(const std::string& domain);

  KeyResolver& resolver_;
  KeyCacheConfig config_;
  ClockFn clock_;
  std::unordered_map<std::string, Entry> entries_;
  std::size_t bytes_ = 0;
  std::unordered_map<std::string, KeyResolver::QueryId> in_flight_;
  std::unordered_map<std::string, std::vector<Waiter>> waiters_;
  std::unordered_map<LookupId, std::string> waiting_domain_;
  LookupId next_lookup_id_ = 1;
  std::vector<ChangeListener> listeners_;
  std::vector<AnswerListener> answer_listeners_;
  KeyCacheStats stats_;
};

}  // namespace keyfed
