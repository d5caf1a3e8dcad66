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
#include "dnskey/key_cache.h"
#include "dnskey/resolver.h"
#include "report.h"
#include "federation/identity.h"
#include "federation/node.h"

using namespace keyfed;
using bench::Figure;
using bench::ns_per_op;
using Clock = std::chrono::steady_clock;

namespace {

[[noreturn]] void die(const std::string& why) {
  std::fprintf(stderr, "bench: %s\n", why.c_str());
  std::exit(1);
}


// ---- bare OpenSSL baseline -------------------------------------------------

int accept_any(int, X509_STORE_CTX*) { return 1; }

SslCtxPtr bare_ctx(bool server, const DomainIdentity& id) {
  SslCtxPtr ctx(SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()));
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION);
  SSL_CTX_set1_groups_list(ctx.get(), "X25519");
  SSL_CTX_set_num_tickets(ctx.get(), 0);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, accept_any);
  SSL_CTX_use_certificate(ctx.get(), id.certificate.get());
  SSL_CTX_use_PrivateKey(ctx.get(), id.key.get());
  return ctx;
}

struct BarePair {
  SslPtr client, server;
  BarePair(SSL_CTX* c, SSL_CTX* s) : client(SSL_new(c)), server(SSL_new(s)) {
    BIO *a = nullptr, *b = nullptr;
    BIO_new_bio_pair(&a, 1 << 16, &b, 1 << 16);
    SSL_set_bio(client.get(), a, a);
    SSL_set_bio(server.get(), b, b);
    SSL_set_connect_state(client.get());
    SSL_set_accept_state(server.get());
  }
  void handshake() {
    for (int i = 0; i < 20; ++i) {
      int c = SSL_do_handshake(client.get());
      int s = SSL_do_handshake(server.get());
      if (c == 1 && s == 1) {
        // Both sides look at the peer's key, as keyfed does.
        if (certificate_spki(SSL_get0_peer_certificate(client.get())).empty() ||
            certificate_spki(SSL_get0_peer_certificate(server.get())).empty()) {
          die("bare handshake without certificates");
        }
        return;
      }
    }
    die("bare handshake did not finish");
  }
  void transfer(SSL* from, SSL* to, const std::string& data) {
    SSL_write(from, data.data(), static_cast<int>(data.size()));
    std::size_t got = 0;
    char buf[4096];
    while (got < data.size()) {
      int n = SSL_read(to, buf, sizeof buf);
      if (n <= 0) die("bare read failed");
      got += static_cast<std::size_t>(n);
    }
  }
};

// ---- keyfed ----------------------------------------------------------------

struct Side {
  std::unique_ptr<KeyResolver> resolver;
  std::unique_ptr<KeyCache> cache;
  std::unique_ptr<Node> node;
};

Side make_side(uv_loop_t* loop, const NodeConfig& base, const std::string& domain, const std::filesystem::path& key) {
  Side side;
  auto resolver = KeyResolver::create(loop, base.resolver);
  if (!resolver) die(resolver.error().message);
  side.resolver = std::move(resolver).value();
  side.cache = std::make_unique<KeyCache>(*side.resolver, base.key_cache);
  NodeSettings settings;
  settings.domains = {{domain, {key}}};
  settings.revalidate_interval = std::chrono::milliseconds(0);
  settings.limits.message_rate = 1e9;
  settings.limits.message_burst = 1e9;
  Node::Handlers handlers;
  handlers.audit = [](const std::string&) {};
  auto node = Node::create(loop, *side.cache, settings, handlers);
  if (!node) die(node.error().message);
  side.node = std::move(node).value();
  if (!side.node->listen("127.0.0.1", 0)) die("listen failed");
  return side;
}

SessionInfo connect_once(uv_loop_t* loop, Side& from, Side& to, const std::string& local, const std::string& peer) {
  std::optional<Result<SessionInfo>> result;
  from.node->connect(local, peer, "127.0.0.1", to.node->port(), [&](Result<SessionInfo> r) { result = std::move(r); });
  while (!result) uv_run(loop, UV_RUN_ONCE);
  if (!result->ok()) die(result->error().message);
  return **result;
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
    connect_once(&loop, beta, alpha, "beta.test", "alpha.test");  // warms both key caches

    auto start = Clock::now();
    for (long i = 0; i < handshakes; ++i) {
      SessionInfo s = connect_once(&loop, beta, alpha, "beta.test", "alpha.test");
      beta.node->close_session(s.id, "bench");
    }
    auto keyfed_hs = Clock::now() - start;

    SslCtxPtr client_ctx = bare_ctx(false, *beta_id), server_ctx = bare_ctx(true, *alpha_id);
    start = Clock::now();
    for (long i = 0; i < handshakes; ++i) BarePair(client_ctx.get(), server_ctx.get()).handshake();
    auto bare_hs = Clock::now() - start;
    figures.push_back({"authenticated handshake", ns_per_op(keyfed_hs, handshakes), ns_per_op(bare_hs, handshakes), handshakes});

    SessionInfo session = connect_once(&loop, beta, alpha, "beta.test", "alpha.test");
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
