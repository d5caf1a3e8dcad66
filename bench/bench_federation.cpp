// Federation cost as ratios against bare OpenSSL in the same run (docs/BENCH.md).
//
//   bench_federation TESTBED_DIR [--quick] [--json]
//
// handshake: an authenticated keyfed session between two nodes on loopback
//            (TCP, TLS 1.3 with both certificates, CLAIM, policy against the
//            warm key cache), vs. a bare OpenSSL TLS 1.3 mutual-authentication
//            handshake between two SSL objects over a BIO pair, same keys.
// message:   one CPIM message and its ACK over an established session, vs.
//            the same bytes written and read both ways over a bare TLS 1.3
//            BIO pair.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "config/node_config.h"
#include "fed_bench.h"
#include "report.h"

using namespace keyfed;
using bench::BarePair;
using bench::Figure;
using bench::Side;
using bench::bare_ctx;
using bench::die;
using bench::make_side;
using bench::ns_per_op;
using Clock = std::chrono::steady_clock;

namespace {

SessionInfo connect_once(uv_loop_t* loop, Side& beta, Side& alpha) {
  return bench::connect_once(loop, beta, alpha.node->port(), "beta.test", "alpha.test");
}

}  // namespace

int main(int argc, char** argv) {
  const bench::Options options = bench::parse_options(argc, argv, "bench_federation");
  const bool quick = options.quick;
  set_log_level(LogLevel::Error);
  std::filesystem::path tb = options.testbed;
  auto base = load_node_config(tb / "keyfed.toml");
  if (!base) die(base.error().message);
  const long handshakes = quick ? 20 : 500;
  const long messages = quick ? 200 : 20000;
  std::vector<Figure> figures;

  auto alpha_id = load_domain_identity("alpha.test", tb / "fedkeys" / "alpha-1.pem");
  auto beta_id = load_domain_identity("beta.test", tb / "fedkeys" / "beta-new.pem");
  if (!alpha_id || !beta_id) die("cannot load testbed keys");
  std::string cpim = "From: <im:bob@beta.test>\r\nTo: <im:alice@alpha.test>\r\n\r\nContent-Type: text/plain\r\n\r\n" +
                     std::string(160, 'x');

  uv_loop_t loop;
  uv_loop_init(&loop);
  {
    Side alpha = make_side(&loop, *base, "alpha.test", tb / "fedkeys" / "alpha-1.pem");
    Side beta = make_side(&loop, *base, "beta.test", tb / "fedkeys" / "beta-new.pem");
    connect_once(&loop, beta, alpha);  // warms both key caches

    auto start = Clock::now();
    for (long i = 0; i < handshakes; ++i) {
      SessionInfo s = connect_once(&loop, beta, alpha);
      beta.node->close_session(s.id, "bench");
    }
    auto keyfed_hs = Clock::now() - start;

    SslCtxPtr client_ctx = bare_ctx(false, *beta_id), server_ctx = bare_ctx(true, *alpha_id);
    start = Clock::now();
    for (long i = 0; i < handshakes; ++i) BarePair(client_ctx.get(), server_ctx.get()).handshake();
    auto bare_hs = Clock::now() - start;
    figures.push_back({"authenticated handshake", ns_per_op(keyfed_hs, handshakes), ns_per_op(bare_hs, handshakes), handshakes});

    SessionInfo session = connect_once(&loop, beta, alpha);
    long acked = 0;
    start = Clock::now();
    for (long i = 0; i < messages; ++i) {
      Status sent = beta.node->send_message(session.id, {cpim.begin(), cpim.end()}, [&](Status s) {
        if (!s) die(s.error().message);
        ++acked;
      });
      if (!sent) die(sent.error().message);
    }
    while (acked < messages) uv_run(&loop, UV_RUN_ONCE);
    auto keyfed_msg = Clock::now() - start;

    BarePair pair(client_ctx.get(), server_ctx.get());
    pair.handshake();
    std::string ack(9, 'a');  // an ACK frame is 9 bytes
    start = Clock::now();
    for (long i = 0; i < messages; ++i) {
      pair.transfer(pair.client.get(), pair.server.get(), cpim);
      pair.transfer(pair.server.get(), pair.client.get(), ack);
    }
    auto bare_msg = Clock::now() - start;
    figures.push_back({"message + ACK", ns_per_op(keyfed_msg, messages), ns_per_op(bare_msg, messages), messages});
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);

  bench::report(figures, options.json, "bare OpenSSL (same keys, TLS 1.3, both certificates)");
  return 0;
}
