// What bench_federation and bench_store share: the bare OpenSSL handshake
// baseline, and a bare federation node (resolver, key cache, node) on a loop
// with a blocking connect, for timing authenticated handshakes
// (docs/BENCH.md).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "config/node_config.h"
#include "dnskey/key_cache.h"
#include "dnskey/resolver.h"
#include "federation/identity.h"
#include "federation/node.h"

namespace keyfed::bench {

[[noreturn]] inline void die(const std::string& why) {
  std::fprintf(stderr, "bench: %s\n", why.c_str());
  std::exit(1);
}

// ---- bare OpenSSL baseline -------------------------------------------------

inline int accept_any(int, X509_STORE_CTX*) { return 1; }

inline SslCtxPtr bare_ctx(bool server, const DomainIdentity& id) {
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

/// A federation node hosting one domain, listening on 127.0.0.1 (any port),
/// with its own resolver and key cache over the testbed.
struct Side {
  std::unique_ptr<KeyResolver> resolver;
  std::unique_ptr<KeyCache> cache;
  std::unique_ptr<Node> node;
};

inline Side make_side(uv_loop_t* loop, const NodeConfig& base, const std::string& domain,
                      const std::filesystem::path& key) {
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

/// Opens a session from `from` (as `local`) to the node on 127.0.0.1:`port`
/// (as `peer`), running `loop` until it is established.
inline SessionInfo connect_once(uv_loop_t* loop, Side& from, int port, const std::string& local,
                                const std::string& peer) {
  std::optional<Result<SessionInfo>> result;
  from.node->connect(local, peer, "127.0.0.1", port, [&](Result<SessionInfo> r) { result = std::move(r); });
  while (!result) uv_run(loop, UV_RUN_ONCE);
  if (!result->ok()) die(result->error().message);
  return **result;
}

}  // namespace keyfed::bench
