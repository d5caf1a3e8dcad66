#include "dnskey/key_cache.h"

#include <algorithm>

#include "common/log.h"

namespace keyfed {
namespace {

bool has_key(const std::vector<FederationKey>& keys, const FederationKey& key) {
  return std::any_of(keys.begin(), keys.end(), [&](const FederationKey& k) { return k.same_key(key); });
}

std::vector<FederationKey> keys_missing_from(const std::vector<FederationKey>& before,
                                             const std::vector<FederationKey>& after) {
  std::vector<FederationKey> missing;
  for (const FederationKey& key : before) {
    if (!has_key(after, key)) missing.push_back(key);
  }
  return missing;
}

bool same_key_set(const std::vector<FederationKey>& a, const std::vector<FederationKey>& b) {
  return a.size() == b.size() && keys_missing_from(a, b).empty();
}

}  // namespace

Status check_key_cache_config(const KeyCacheConfig& config) {
  if (config.min_ttl < Seconds{0} || config.max_ttl < Seconds{0}) {
    return make_error("TTL bounds must not be negative (min_ttl {}, max_ttl {})",
                      config.min_ttl.count(), config.max_ttl.count());
  }
  if (config.min_ttl > config.max_ttl) {
    return make_error("min_ttl ({}) must not exceed max_ttl ({})", config.min_ttl.count(),
                      config.max_ttl.count());
  }
  if (config.max_ttl > kMaxTtlBound) {
    return make_error("max_ttl ({}) is above the largest DNS TTL, {} (RFC 2181)",
                      config.max_ttl.count(), kMaxTtlBound.count());
  }
  if (config.failure_ttl < Seconds{1} || config.failure_ttl > Seconds{86400}) {
    return make_error("failure_ttl ({}) must be between 1 and 86400 seconds",
                      config.failure_ttl.count());
  }
  if (!(config.prefetch_ratio >= 0.5 && config.prefetch_ratio < 1.0)) {
    return make_error("prefetch_ratio ({}) must be at least 0.5 and below 1", config.prefetch_ratio);
  }
  if (config.max_entries < 1) return make_error("max_entries must be at least 1");
  return ok_status();
}

std::int64_t CachedKeys::remaining_seconds(TimePoint now) const {
  if (now >= expires) return 0;
  return std::chrono::ceil<Seconds>(expires - now).count();
}

KeyCache::KeyCache(KeyResolver& resolver, KeyCacheConfig config, ClockFn clock)
    : resolver_(resolver), config_(config), clock_(std::move(clock)) {}

KeyCache::~KeyCache() {
  for (const auto& [domain, id] : in_flight_) resolver_.cancel(id);
}

void KeyCache::add_change_listener(ChangeListener listener) {
  listeners_.push_back(std::move(listener));
}

std::shared_ptr<const CachedKeys> KeyCache::peek(const std::string& domain) const {
  auto it = entries_.find(domain);
  return it == entries_.end() ? nullptr : it->second.current;
}

void KeyCache::lookup(const std::string& domain, Callback callback) {
  TimePoint now = clock_();
  auto it = entries_.find(domain);
  if (it != entries_.end() && now < it->second.current->expires) {
    ++stats_.hits;
    std::shared_ptr<const CachedKeys> entry = it->second.current;
    if (now >= entry->prefetch_at && !in_flight_.contains(domain)) {
      ++stats_.prefetches;
      start_query(domain);
    }
    callback(std::move(entry));
    return;
  }
  ++stats_.misses;
  waiters_[domain].push_back(std::move(callback));
  if (in_flight_.contains(domain)) {
    ++stats_.coalesced;
  } else {
    start_query(domain);
  }
}

void KeyCache::start_query(const std::string& domain) {
  ++stats_.queries;
  // The resolver never calls back from inside resolve(), so in_flight_ is set first.
  in_flight_[domain] = resolver_.resolve(
      domain, [this, domain](DomainKeys answer) { on_answer(domain, std::move(answer)); });
}

Seconds KeyCache::lifetime_of(const DomainKeys& answer) const {
  if (!is_answer_from_domain(answer.outcome)) return config_.failure_ttl;
  return std::clamp(Seconds{answer.ttl}, config_.min_ttl, config_.max_ttl);
}

void KeyCache::evict_if_full(TimePoint now) {
  if (entries_.size() < config_.max_entries) return;
  std::erase_if(entries_, [&](const auto& item) {
    return now >= item.second.current->expires && !in_flight_.contains(item.first);
  });
  if (entries_.size() < config_.max_entries) return;
  // Still full: drop the tenth closest to expiry at once, so that a flood of
  // new domains pays for this scan once per max_entries/10 answers, not each.
  std::vector<std::pair<TimePoint, std::string>> by_expiry;
  by_expiry.reserve(entries_.size());
  for (const auto& [domain, entry] : entries_) by_expiry.emplace_back(entry.current->expires, domain);
  std::size_t drop = std::max<std::size_t>(1, entries_.size() / 10);
  std::nth_element(by_expiry.begin(), by_expiry.begin() + static_cast<std::ptrdiff_t>(drop - 1), by_expiry.end());
  for (std::size_t i = 0; i < drop; ++i) entries_.erase(by_expiry[i].second);
  stats_.evictions += drop;
}

void KeyCache::on_answer(const std::string& domain, DomainKeys answer) {
  in_flight_.erase(domain);
  TimePoint now = clock_();
  ++stats_.outcomes[static_cast<std::size_t>(answer.outcome)];
  if (answer.outcome == DnsOutcome::Bogus) {
    log_at(LogLevel::Warning, "keys of {}: bogus: {}", domain, answer.reason);
  } else {
    log_at(LogLevel::Debug, "keys of {}: {} {}", domain, to_string(answer.outcome), answer.reason);
  }

  if (!entries_.contains(domain)) evict_if_full(now);
  Entry& slot = entries_[domain];
  std::shared_ptr<const CachedKeys> before = slot.current;

  std::shared_ptr<const CachedKeys> after;
  std::vector<FederationKey> removed;
  if (answer.outcome == DnsOutcome::TempFail && before && now < before->expires) {
    // A refresh failed while the entry is still valid: keep serving it until
    // it expires, without prefetching it again.
    auto kept = std::make_shared<CachedKeys>(*before);
    kept->prefetch_at = kept->expires;
    after = std::move(kept);
  } else {
    Seconds lifetime = lifetime_of(answer);
    auto fresh = std::make_shared<CachedKeys>();
    fresh->fetched = now;
    fresh->expires = now + lifetime;
    fresh->prefetch_at = now + std::chrono::duration_cast<SteadyClock::duration>(
                                   std::chrono::duration<double>(lifetime) * config_.prefetch_ratio);
    if (answer.outcome != DnsOutcome::TempFail) {
      removed = keys_missing_from(slot.last_published, answer.keys);
      slot.last_published = answer.keys;
    }
    fresh->answer = std::move(answer);
    after = std::move(fresh);
  }
  slot.current = after;

  bool changed = before && (before->answer.outcome != after->answer.outcome ||
                            !same_key_set(before->answer.keys, after->answer.keys));
  if (changed || !removed.empty()) {
    for (const FederationKey& key : removed) {
      log_at(LogLevel::Info, "keys of {}: key {} (tag {}, spki sha256 {}) is no longer published ({})",
             domain, algorithm_name(key.algorithm), key.key_tag, key.spki_sha256,
             to_string(after->answer.outcome));
    }
    KeySetChange change{domain, before, after, std::move(removed)};
    for (const ChangeListener& listener : listeners_) listener(change);
  }

  auto waiting = waiters_.extract(domain);
  if (!waiting.empty()) {
    for (Callback& callback : waiting.mapped()) callback(after);
  }
}

}  // namespace keyfed
