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

constexpr std::size_t kMinMaxBytes = 64 * 1024;

std::size_t key_bytes(const std::vector<FederationKey>& keys) {
  std::size_t n = 0;
  for (const FederationKey& k : keys) {
    n += sizeof(FederationKey) + k.public_key.capacity() + k.spki_der.capacity() + k.spki_sha256.capacity();
  }
  return n;
}

// What an entry costs, counted against max_bytes: the answer, the copy of
// the keys kept for change reports, the domain twice (map key and answer)
// and the hash table's node. An estimate, but one that grows with every byte
// an answer can carry.
std::size_t estimated_bytes(const std::string& domain, const CachedKeys& entry,
                            const std::vector<FederationKey>& last_published) {
  const DomainKeys& a = entry.answer;
  std::size_t n = 128 + sizeof(CachedKeys) + 2 * domain.size() + a.reason.capacity();
  n += key_bytes(a.keys) + key_bytes(last_published);
  for (const SkippedRecord& s : a.skipped) n += sizeof(SkippedRecord) + s.record.capacity() + s.reason.capacity();
  return n;
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
  if (config.max_bytes < kMinMaxBytes) return make_error("max_bytes must be at least {}", kMinMaxBytes);
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

void KeyCache::add_answer_listener(AnswerListener listener) {
  answer_listeners_.push_back(std::move(listener));
}

std::shared_ptr<const CachedKeys> KeyCache::peek(const std::string& domain) const {
  auto it = entries_.find(domain);
  return it == entries_.end() ? nullptr : it->second.current;
}

bool KeyCache::is_fresh(const std::string& domain) const {
  auto it = entries_.find(domain);
  return it != entries_.end() && clock_() < it->second.current->expires;
}

KeyCache::LookupId KeyCache::lookup(const std::string& domain, Callback callback) {
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
    return 0;
  }
  ++stats_.misses;
  LookupId id = next_lookup_id_++;
  waiters_[domain].push_back({id, std::move(callback)});
  waiting_domain_.emplace(id, domain);
  if (in_flight_.contains(domain)) {
    ++stats_.coalesced;
  } else {
    start_query(domain);
  }
  return id;
}

void KeyCache::cancel(LookupId id) {
  auto it = waiting_domain_.find(id);
  if (it == waiting_domain_.end()) return;
  std::string domain = std::move(it->second);
  waiting_domain_.erase(it);
  auto list = waiters_.find(domain);
  if (list == waiters_.end()) return;  // being answered right now
  std::erase_if(list->second, [id](const Waiter& w) { return w.id == id; });
  if (!list->second.empty()) return;
  waiters_.erase(list);
  // Nobody waits for this answer any more: a closed session must not leave
  // its lookup running (docs/SECURITY.md, "Budgets").
  if (auto flight = in_flight_.find(domain); flight != in_flight_.end()) {
    resolver_.cancel(flight->second);
    in_flight_.erase(flight);
    ++stats_.cancelled;
  }
}

void KeyCache::clear() {
  entries_.clear();
  bytes_ = 0;
}

Status KeyCache::reconfigure(KeyCacheConfig config) {
  if (Status s = check_key_cache_config(config); !s) return s;
  config_ = config;
  evict_for(0, clock_());
  return ok_status();
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

void KeyCache::erase_entry(const std::string& domain) {
  auto it = entries_.find(domain);
  if (it == entries_.end()) return;
  bytes_ -= it->second.bytes;
  entries_.erase(it);
}

void KeyCache::evict_for(std::size_t incoming, TimePoint now) {
  auto over = [&] {
    return entries_.size() >= config_.max_entries || bytes_ + incoming > config_.max_bytes;
  };
  if (!over()) return;
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (now >= it->second.current->expires && !in_flight_.contains(it->first)) {
      bytes_ -= it->second.bytes;
      it = entries_.erase(it);
    } else {
      ++it;
    }
  }
  if (!over()) return;
  // Still full: drop the tenth closest to expiry at once (more if the bytes
  // demand it), so that a flood of new domains pays for this scan once per
  // tenth of the cache, not once per answer.
  std::vector<std::pair<TimePoint, std::string>> by_expiry;
  by_expiry.reserve(entries_.size());
  for (const auto& [domain, entry] : entries_) by_expiry.emplace_back(entry.current->expires, domain);
  std::sort(by_expiry.begin(), by_expiry.end());
  std::size_t tenth = std::max<std::size_t>(1, entries_.size() / 10);
  for (std::size_t i = 0; i < by_expiry.size() && (i < tenth || over()); ++i) {
    erase_entry(by_expiry[i].second);
    ++stats_.evictions;
  }
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

  std::shared_ptr<const CachedKeys> before;
  std::vector<FederationKey> last_published;
  if (auto it = entries_.find(domain); it != entries_.end()) {
    before = it->second.current;
    last_published = std::move(it->second.last_published);
    erase_entry(domain);
  }

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
      removed = keys_missing_from(last_published, answer.keys);
      last_published = answer.keys;
    }
    fresh->answer = std::move(answer);
    after = std::move(fresh);
  }
  std::size_t size = estimated_bytes(domain, *after, last_published);
  evict_for(size, now);
  entries_[domain] = Entry{after, std::move(last_published), size};
  bytes_ += size;

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
  for (const AnswerListener& listener : answer_listeners_) listener(domain, after);

  auto waiting = waiters_.extract(domain);
  if (!waiting.empty()) {
    for (Waiter& waiter : waiting.mapped()) {
      // A callback may cancel another lookup of this list (its session closed).
      if (waiting_domain_.erase(waiter.id) == 0) continue;
      waiter.callback(after);
    }
  }
}

std::vector<std::shared_ptr<const CachedKeys>> KeyCache::entries() const {
  std::vector<std::shared_ptr<const CachedKeys>> out;
  for (const auto& [domain, entry] : entries_) {
    if (entry.current) out.push_back(entry.current);
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a->answer.domain < b->answer.domain; });
  return out;
}

}  // namespace keyfed
