// Time as the key cache sees it. Production code uses the steady clock; unit
// tests inject a manual clock so TTL expiry is tested without sleeping.
#pragma once

#include <chrono>
#include <functional>

namespace keyfed {

using SteadyClock = std::chrono::steady_clock;
using TimePoint = SteadyClock::time_point;
using Seconds = std::chrono::seconds;

/// Returns the current time; must be monotonic.
using ClockFn = std::function<TimePoint()>;

inline ClockFn steady_clock_fn() {
  return [] { return SteadyClock::now(); };
}

}  // namespace keyfed
