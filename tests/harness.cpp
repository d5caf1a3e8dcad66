#include "harness.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>

#include <catch2/catch.hpp>

#include "config/node_config.h"

namespace keyfed::test {

std::filesystem::path testbed_dir() { return KEYFED_TESTBED_DIR; }
std::filesystem::path testdata_dir() { return KEYFED_TESTDATA_DIR; }

ResolverConfig testbed_resolver_config() {
  Result<NodeConfig> config = load_node_config(testbed_dir() / "keyfed.toml");
  if (!config) FAIL("testbed config: " << config.error().message);
  return config->resolver;
}

ResolverConfig testbed_resolver_config_with(const std::string& origin, const std::string& file) {
  ResolverConfig config = testbed_resolver_config();
  for (ZoneFile& zone : config.zones) {
    if (zone.origin == origin) zone.path = testbed_dir() / file;
  }
  return config;
}

TempDir::TempDir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "keyfed-test-XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

SilentNameServer::SilentNameServer() {
  fd_ = socket(AF_INET, SOCK_DGRAM, 0);
  REQUIRE(fd_ >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  port_ = ntohs(addr.sin_port);
}

SilentNameServer::~SilentNameServer() { close(fd_); }

std::string SilentNameServer::address() const { return "127.0.0.1@" + std::to_string(port_); }

TestLoop::TestLoop() { REQUIRE(uv_loop_init(&loop_) == 0); }

TestLoop::~TestLoop() noexcept(false) {
  uv_run(&loop_, UV_RUN_DEFAULT);  // lets closing handles finish
  int rc = uv_loop_close(&loop_);
  if (std::uncaught_exceptions() == 0) CHECK(rc == 0);  // nothing left behind
}

void TestLoop::run_until(const std::function<bool()>& done, std::chrono::milliseconds limit) {
  uv_timer_t guard;
  uv_timer_init(&loop_, &guard);
  bool expired = false;
  guard.data = &expired;
  uv_timer_start(&guard, [](uv_timer_t* t) { *static_cast<bool*>(t->data) = true; },
                 static_cast<std::uint64_t>(limit.count()), 0);
  while (!done() && !expired) uv_run(&loop_, UV_RUN_ONCE);
  uv_close(reinterpret_cast<uv_handle_t*>(&guard), nullptr);
  uv_run(&loop_, UV_RUN_NOWAIT);  // runs the guard's close
  REQUIRE_FALSE(expired);
}

DomainKeys resolve_now(TestLoop& loop, KeyResolver& resolver, const std::string& domain) {
  std::optional<DomainKeys> answer;
  resolver.resolve(domain, [&](DomainKeys a) { answer = std::move(a); });
  loop.run_until([&] { return answer.has_value(); });
  return *answer;
}

std::shared_ptr<const CachedKeys> lookup_now(TestLoop& loop, KeyCache& cache, const std::string& domain) {
  std::shared_ptr<const CachedKeys> entry;
  cache.lookup(domain, [&](std::shared_ptr<const CachedKeys> e) { entry = std::move(e); });
  loop.run_until([&] { return entry != nullptr; });
  return entry;
}

std::filesystem::path scratch_path(const std::string& name) {
  static TempDir dir;
  static int counter = 0;
  return dir.path() / (std::to_string(++counter) + "-" + name);
}

}  // namespace keyfed::test
