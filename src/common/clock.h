// Time as the key cache sees it. Production code uses the steady clock; unit
// tests inject a manual clock so TTL expiry is tested without sleeping.
#pragma once

#include <chrono>
#include <ctime>
#include <functional>
#include <string>

namespace keyfed {

using SteadyClock = std::chrono::steady_clock;
using TimePoint = SteadyClock::time_point;
using Seconds = std::chrono::seconds;

/// Returns the current time; must be monotonic.
using ClockFn = std::function<TimePoint()>;

inline ClockFn steady_clock_fn() {
  return [] { return SteadyClock::now(); };
}

/// The wall-clock time now, RFC 3339 in UTC to the second
/// ("2026-11-24T08:00:00Z"): audit lines, CPIM DateTime.
inline std::string utc_now_rfc3339() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace keyfed
