// Token buckets keyed by who spends (a peer domain, a source address): the
// message rate per peer domain, and the per-source budgets for unauthenticated
// connections and key lookups (docs/SECURITY.md, "Budgets").
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>

namespace keyfed {

class RateLimiter {
 public:
  /// `rate` tokens per second up to `burst`; at most `max_keys` buckets.
  RateLimiter(double rate, double burst, std::size_t max_keys);

  /// Takes one token from `key`'s bucket (a new key starts full). False when
  /// the bucket is empty, or when `max_keys` buckets are in use even after
  /// pruning: a flood of new keys is refused, not remembered.
  bool take(const std::string& key, std::uint64_t now_ms);
  /// Gives one token back to `key`'s bucket (up to the burst): for work
  /// that turned out legitimate, so that only strangers pay.
  void refund(const std::string& key);
  /// Forgets buckets that have refilled: they hold nothing a new one wouldn't.
  void prune(std::uint64_t now_ms);
  /// New rate, burst and bound; existing levels are capped to the burst.
  void configure(double rate, double burst, std::size_t max_keys);

  std::size_t size() const { return buckets_.size(); }
  double rate() const { return rate_; }
  double burst() const { return burst_; }

 private:
  struct Bucket {
    double tokens;
    std::uint64_t last_ms;
  };
  double refilled(const Bucket& bucket, std::uint64_t now_ms) const;

  double rate_;
  double burst_;
  std::size_t max_keys_;
  std::unordered_map<std::string, Bucket> buckets_;
};

}  // namespace keyfed
