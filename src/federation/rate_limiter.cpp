#include "federation/rate_limiter.h"

#include <algorithm>

namespace keyfed {

RateLimiter::RateLimiter(double rate, double burst, std::size_t max_keys)
    : rate_(rate), burst_(burst), max_keys_(max_keys) {}

double RateLimiter::refilled(const Bucket& bucket, std::uint64_t now_ms) const {
  double elapsed = now_ms > bucket.last_ms ? static_cast<double>(now_ms - bucket.last_ms) / 1000.0 : 0.0;
  return std::min(burst_, bucket.tokens + elapsed * rate_);
}

bool RateLimiter::take(const std::string& key, std::uint64_t now_ms) {
  auto it = buckets_.find(key);
  if (it == buckets_.end()) {
    if (buckets_.size() >= max_keys_) prune(now_ms);
    if (buckets_.size() >= max_keys_) return false;
    it = buckets_.emplace(key, Bucket{burst_, now_ms}).first;
  }
  Bucket& bucket = it->second;
  bucket.tokens = refilled(bucket, now_ms);
  bucket.last_ms = now_ms;
  if (bucket.tokens < 1.0) return false;
  bucket.tokens -= 1.0;
  return true;
}

void RateLimiter::refund(const std::string& key) {
  auto it = buckets_.find(key);
  if (it != buckets_.end()) it->second.tokens = std::min(burst_, it->second.tokens + 1.0);
}

void RateLimiter::prune(std::uint64_t now_ms) {
  std::erase_if(buckets_, [&](const auto& item) { return refilled(item.second, now_ms) >= burst_; });
}

void RateLimiter::configure(double rate, double burst, std::size_t max_keys) {
  rate_ = rate;
  burst_ = burst;
  max_keys_ = max_keys;
  for (auto& [key, bucket] : buckets_) bucket.tokens = std::min(bucket.tokens, burst_);
}

}  // namespace keyfed
