// Shared test harness: a real libuv loop, the real signed testbed (built by
// tools/make-testbed.sh), and helpers to drive lookups to completion.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include <uv.h>

#include "common/clock.h"
#include "dnskey/key_cache.h"
#include "dnskey/resolver.h"

namespace keyfed::test {

std::filesystem::path testbed_dir();   // build/testbed
std::filesystem::path testdata_dir();  // tests/testdata

/// The testbed's resolver settings: trust anchor plus every zone of keyfed.toml.
ResolverConfig testbed_resolver_config();
/// The same, with the zone of `origin` read from another signed file of the
/// testbed (a variant: "beta.test.rolled.zone.signed", "test.nobetads.zone.signed").
ResolverConfig testbed_resolver_config_with(const std::string& origin, const std::string& file);

/// A fresh private directory, removed with the object.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

/// Owns a libuv loop; the destructor checks (REQUIREs) that every handle was
/// closed, i.e. uv_loop_close() succeeds.
/// A fresh path (nothing there yet) in a directory that lives as long as the
/// test process: for the store and control socket of in-process daemons.
std::filesystem::path scratch_path(const std::string& name);

class TestLoop {
 public:
  TestLoop();
  ~TestLoop() noexcept(false);
  uv_loop_t* get() { return &loop_; }
  /// Runs the loop until `done()` holds; fails the test after `limit`.
  void run_until(const std::function<bool()>& done,
                 std::chrono::milliseconds limit = std::chrono::seconds(20));

 private:
  uv_loop_t loop_;
};

/// Resolves one domain with the resolver and waits for the answer.
DomainKeys resolve_now(TestLoop& loop, KeyResolver& resolver, const std::string& domain);

/// A UDP socket on loopback that receives queries and never answers: a name
/// server that has gone silent. address() is "127.0.0.1@PORT" for forwarders.
class SilentNameServer {
 public:
  SilentNameServer();
  ~SilentNameServer();
  std::string address() const;

 private:
  int fd_ = -1;
  int port_ = 0;
};

/// A clock that moves only when told to.
class ManualClock {
 public:
  TimePoint now() const { return now_; }
  void advance(Seconds by) { now_ += by; }
  ClockFn fn() {
    return [this] { return now_; };
  }

 private:
  TimePoint now_ = TimePoint{} + std::chrono::hours(1000);
};

/// Looks a domain up through the cache and waits for the answer.
std::shared_ptr<const CachedKeys> lookup_now(TestLoop& loop, KeyCache& cache, const std::string& domain);

}  // namespace keyfed::test
