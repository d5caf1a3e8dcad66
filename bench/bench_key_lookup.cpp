// Key lookup cost, as ratios against bare libunbound in the same run
// (docs/BENCH.md). Machines here are noisy: only the ratios mean much.
//
//   bench_key_lookup TESTBED_DIR [--quick] [--json]
//
// cached: a KeyCache hit vs. libunbound answering from its own cache through
//         its asynchronous API (ub_resolve_async + ub_wait on a threaded
//         context, as an event-driven program uses it). Both: a domain
//         already looked up.
// cold:   create a node resolver, load the testbed, validate one lookup, tear
//         down; vs. the same with a bare ub_ctx and a synchronous ub_resolve().
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include <fmt/format.h>
#include <unbound.h>
#include <uv.h>

#include "config/node_config.h"
#include "dnskey/key_cache.h"
#include "dnskey/resolver.h"
#include "report.h"

using namespace keyfed;
using bench::Figure;
using bench::ns_per_op;
using Clock = std::chrono::steady_clock;

namespace {

const char* kDomain = "beta.test";
const char* kOwner = "_impp._tcp.beta.test.";


// The baseline's own libunbound configuration: the same zones and anchor,
// written the way a libunbound user would.
std::string write_bare_config(const ResolverConfig& config) {
  std::string path = "/tmp/keyfed-bench-unbound-XXXXXX";
  int fd = mkstemp(path.data());
  std::string text = "server:\n logfile: \"/dev/null\"\n local-zone: \"test.\" nodefault\n";
  for (const ZoneFile& z : config.zones) {
    text += fmt::format("auth-zone:\n name: \"{}.\"\n zonefile: \"{}\"\n for-upstream: yes\n for-downstream: no\n",
                        z.origin, std::filesystem::absolute(z.path).string());
  }
  if (write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size())) std::abort();
  close(fd);
  return path;
}

ub_ctx* bare_context(const std::string& conf, const ResolverConfig& config) {
  ub_ctx* ctx = ub_ctx_create();
  if (ub_ctx_config(ctx, conf.c_str()) != 0 || ub_ctx_add_ta_file(ctx, config.trust_anchor.c_str()) != 0) {
    std::fprintf(stderr, "bench: bare libunbound setup failed\n");
    std::exit(1);
  }
  return ctx;
}

void bare_async_lookup(ub_ctx* ctx) {
  bool secure = false;
  auto callback = [](void* data, int err, ub_result* result) {
    *static_cast<bool*>(data) = err == 0 && result->secure;
    ub_resolve_free(result);
  };
  if (ub_resolve_async(ctx, kOwner, 25, 1, &secure, callback, nullptr) != 0 || ub_wait(ctx) != 0 || !secure) {
    std::fprintf(stderr, "bench: bare libunbound async lookup was not secure\n");
    std::exit(1);
  }
}

void bare_lookup(ub_ctx* ctx) {
  ub_result* result = nullptr;
  if (ub_resolve(ctx, kOwner, 25, 1, &result) != 0 || !result->secure) {
    std::fprintf(stderr, "bench: bare libunbound lookup was not secure\n");
    std::exit(1);
  }
  ub_resolve_free(result);
}

// Runs `loop` until the cache hands back an answer for kDomain.
void keyfed_lookup(uv_loop_t* loop, KeyCache& cache) {
  bool done = false;
  cache.lookup(kDomain, [&](std::shared_ptr<const CachedKeys> e) {
    if (e->answer.outcome != DnsOutcome::Keys) {
      std::fprintf(stderr, "bench: keyfed lookup gave %s\n", std::string(to_string(e->answer.outcome)).c_str());
      std::exit(1);
    }
    done = true;
  });
  while (!done) uv_run(loop, UV_RUN_ONCE);
}


}  // namespace

int main(int argc, char** argv) {
  const bench::Options options = bench::parse_options(argc, argv, "bench_key_lookup");
  const bool quick = options.quick;
  set_log_level(LogLevel::Error);
  auto node = load_node_config(std::filesystem::path(options.testbed) / "keyfed.toml");
  if (!node) {
    std::fprintf(stderr, "bench: %s\n", node.error().message.c_str());
    return 2;
  }
  const ResolverConfig& rc = node->resolver;
  std::string bare_conf = write_bare_config(rc);
  const long hot = quick ? 20000 : 1000000;
  const long hot_bare = quick ? 2000 : 100000;
  const long cold = quick ? 5 : 100;
  std::vector<Figure> figures;

  uv_loop_t loop;
  uv_loop_init(&loop);
  {
    // Cached lookups.
    auto resolver = KeyResolver::create(&loop, rc);
    if (!resolver) return 1;
    KeyCache cache(**resolver, node->key_cache);
    keyfed_lookup(&loop, cache);  // warm
    long answered = 0;
    auto start = Clock::now();
    for (long i = 0; i < hot; ++i) {
      cache.lookup(kDomain, [&](std::shared_ptr<const CachedKeys>) { ++answered; });
    }
    auto keyfed_time = Clock::now() - start;
    if (answered != hot) return 1;

    ub_ctx* bare = bare_context(bare_conf, rc);
    ub_ctx_async(bare, 1);
    bare_async_lookup(bare);  // warm
    start = Clock::now();
    for (long i = 0; i < hot_bare; ++i) bare_async_lookup(bare);
    auto bare_time = Clock::now() - start;
    ub_ctx_delete(bare);
    figures.push_back({"cached lookup", ns_per_op(keyfed_time, hot), ns_per_op(bare_time, hot_bare), hot});
  }
  uv_run(&loop, UV_RUN_DEFAULT);

  {
    // Cold validated lookups: fresh context, zones loaded, chain validated.
    Clock::duration keyfed_time{}, bare_time{};
    for (long i = 0; i < cold; ++i) {
      auto start = Clock::now();
      {
        auto resolver = KeyResolver::create(&loop, rc);
        if (!resolver) return 1;
        KeyCache cache(**resolver, node->key_cache);
        keyfed_lookup(&loop, cache);
      }
      uv_run(&loop, UV_RUN_DEFAULT);
      keyfed_time += Clock::now() - start;

      start = Clock::now();
      ub_ctx* bare = bare_context(bare_conf, rc);
      bare_lookup(bare);
      ub_ctx_delete(bare);
      bare_time += Clock::now() - start;
    }
    figures.push_back({"cold validated lookup", ns_per_op(keyfed_time, cold), ns_per_op(bare_time, cold), cold});
  }
  uv_loop_close(&loop);
  unlink(bare_conf.c_str());

  bench::report(figures, options.json, "bare libunbound");
  return 0;
}
