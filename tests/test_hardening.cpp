// The hardening issue's findings, one test case each (or one section each of
// a finding's points), played against real nodes on loopback, mostly by a
// hostile peer that is not a keyfed node (tests/hostile_peer.h). Each of
// them failed on the federation core before the fix it names.
// docs/SECURITY.md describes the defenses; docs/POLICY.md the decisions.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <thread>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <openssl/err.h>

#include "common/openssl_call.h"
#include "child_process.h"
#include "daemon/daemon.h"
#include "fed_harness.h"
#include "federation/identity.h"
#include "federation/presence.h"
#include "federation/rate_limiter.h"
#include "hostile_peer.h"

using namespace keyfed;
using namespace keyfed::hostile;
using namespace keyfed::test;
using namespace std::chrono_literals;

namespace {

std::filesystem::path fresh_key(const TempDir& dir, const std::string& name) {
  auto path = dir.path() / (name + ".pem");
  REQUIRE(generate_key_file(path, kAlgorithmEd25519).ok());
  return path;
}

nlohmann::json last_audit(const FedNode& n) {
  REQUIRE_FALSE(n.audit_lines.empty());
  return nlohmann::json::parse(n.audit_lines.back());
}

bool closed_with(const FedNode& n, std::string_view text) {
  for (const auto& [info, why] : n.closed) {
    if (why.find(text) != std::string::npos) return true;
  }
  return false;
}

// One claim by a hostile peer, from `from`, with `key`: what came back.
ClaimResult claim_once(TestLoop& loop, int port, const std::filesystem::path& key, const std::string& domain,
                       const std::string& from = "127.0.0.1") {
  ClaimResult result;
  auto tls = client_tls(key);
  run_on_thread(loop, [&] {
    auto peer = HostilePeer::connect({.port = port, .from = from});
    if (!peer) {
      result.detail = peer.error().message;
      return;
    }
    if (TlsResult t = peer->handshake(*tls); !t) {
      result.detail = t.error;
      return;
    }
    result = peer->claim(domain);
  });
  return result;
}

void run_for(TestLoop& loop, std::chrono::milliseconds duration) {
  auto until = std::chrono::steady_clock::now() + duration;
  uv_timer_t tick;
  uv_timer_init(loop.get(), &tick);
  uv_timer_start(&tick, [](uv_timer_t*) {}, 10, 10);
  loop.run_until([&] { return std::chrono::steady_clock::now() >= until; }, duration + 5s);
  uv_close(reinterpret_cast<uv_handle_t*>(&tick), nullptr);
  uv_run(loop.get(), UV_RUN_NOWAIT);
}

std::string hello_from_beta(const std::string& text = "hello") {
  return cpim_message("im:bob@beta.test", "im:alice@alpha.test", text);
}

}  // namespace

// ---- 1. OpenSSL's error queue ------------------------------------------------------

TEST_CASE("finding 1: errors OpenSSL queues for one operation never close another peer's session",
          "[hardening][openssl]") {
  TestLoop loop;
  FedNode alpha(loop, "alpha.test", fedkey("alpha-1"));
  FedNode beta(loop, "beta.test", fedkey("beta-new"));
  auto session = beta.connect_to(alpha, "alpha.test");
  REQUIRE(session.ok());
  TempDir dir;

  SECTION("a claim for a domain whose KEY RRset holds an off-curve P-256 key") {
    // mixed.test publishes an off-curve P-256 point: parsing it queues errors.
    ClaimResult claim = claim_once(loop, alpha.node->port(), fedkey("gamma-1"), "mixed.test");
    CHECK(claim.status == ClaimStatus::Refused);
  }
  SECTION("a refused reload with a key file that is not a key") {
    auto junk = dir.path() / "junk.pem";
    // PEM armour around no key at all (the label is split so that no
    // committed file looks like it holds a private key).
    const std::string label = std::string("PRIVATE") + " KEY";
    std::ofstream(junk) << "-----BEGIN " << label << "-----\nnot base64 at all\n-----END " << label << "-----\n";
    chmod(junk.c_str(), 0600);
    NodeSettings bad = alpha.node->settings();
    bad.domains[0].key_files = {junk};
    CHECK_FALSE(alpha.node->reload(bad).ok());
  }
  SECTION("a hosted domain name over 64 characters put into the certificate subject") {
    NodeSettings more = alpha.node->settings();
    more.domains.push_back({std::string(60, 'a') + ".long.test", {fedkey("gamma-1")}});
    REQUIRE(alpha.node->reload(more).ok());
  }
  CHECK(ERR_peek_error() == 0);
  // The established session still carries messages.
  REQUIRE(beta.send(session->id, hello_from_beta()).ok());
  CHECK(alpha.delivered.size() == 1);
  for (const auto& [info, why] : alpha.closed) CHECK(info.peer_domain != "beta.test");
}

// ---- 2. CPIM sender binding ----------------------------------------------------------

TEST_CASE("finding 2: a peer cannot smuggle another sender past the strict CPIM reader", "[hardening][cpim]") {
  TestLoop loop;
  FedNode alpha(loop, "alpha.test", fedkey("alpha-1"));
  struct Attack {
    std::string name, cpim;
    NackCode code;
  };
  const std::string body = "\r\nContent-Type: text/plain\r\n\r\ntrust me";
  std::vector<Attack> attacks = {
      {"two addresses in From", "From: <im:ceo@alpha.test> <im:m@beta.test>\r\nTo: <im:alice@alpha.test>\r\n" + body,
       NackCode::MalformedMessage},
      {"a NUL in the user part", std::string("From: <im:ceo\0x@beta.test>\r\nTo: <im:alice@alpha.test>\r\n", 53) + body,
       NackCode::MalformedMessage},
      {"a lower-case from before the real From",
       "from: <im:ceo@alpha.test>\r\nFrom: <im:m@beta.test>\r\nTo: <im:alice@alpha.test>\r\n" + body,
       NackCode::MalformedMessage},
      {"a space before the colon", "From : <im:ceo@alpha.test>\r\nFrom: <im:m@beta.test>\r\nTo: <im:alice@alpha.test>\r\n" + body,
       NackCode::MalformedMessage},
      {"a bare CR ending a header", "From: <im:m@beta.test>\rFrom: <im:ceo@alpha.test>\r\nTo: <im:alice@alpha.test>\r\n" + body,
       NackCode::MalformedMessage},
      {"an @ in the user part", "From: <im:ceo@alpha.test@beta.test>\r\nTo: <im:alice@alpha.test>\r\n" + body,
       NackCode::MalformedMessage},
      {"recipients all of domains not hosted here",
       "From: <im:m@beta.test>\r\nTo: <im:eve@evil.test>\r\ncc: <im:mallory@evil.test>\r\n" + body,
       NackCode::UnknownRecipient},
      {"a From of another domain", "From: <im:ceo@alpha.test>\r\nTo: <im:alice@alpha.test>\r\n" + body,
       NackCode::SenderNotPeer},
      {"a Require the node does not implement (RFC 3862 3.3.11)",
       "From: <im:m@beta.test>\r\nTo: <im:alice@alpha.test>\r\nNS: x <urn:example:x>\r\nRequire: x.Vital\r\n"
       "x.Vital: yes\r\n" + body,
       NackCode::MalformedMessage},
  };
  auto tls = client_tls(fedkey("beta-new"));
  std::vector<AckResult> answers(attacks.size());
  AckResult legit;
  run_on_thread(loop, [&] {
    auto peer = connect_and_claim({.port = alpha.node->port()}, *tls, "beta.test");
    if (!peer) return;
    for (std::size_t i = 0; i < attacks.size(); ++i) {
      answers[i] = peer->send_message(static_cast<std::uint32_t>(i + 1), attacks[i].cpim);
    }
    legit = peer->send_message(100, hello_from_beta("still here"));
  });
  for (std::size_t i = 0; i < attacks.size(); ++i) {
    INFO(attacks[i].name << ": " << answers[i].detail);
    REQUIRE(answers[i].status == AckResult::Status::Nack);
    CHECK(answers[i].nack->code == attacks[i].code);
  }
  CHECK_THAT(answers.back().nack->text, Catch::Contains("Vital"));  // the NACK names what it does not implement
  CHECK(legit.ok());  // the session survives bad messages
  REQUIRE(alpha.delivered.size() == 1);
  CHECK(alpha.delivered[0].message.from.uri == "im:bob@beta.test");
}

// ---- 3. Unauthenticated amplification ----------------------------------------------------

TEST_CASE("finding 3: what an unauthenticated client can make the node spend on DNS is bounded",
          "[hardening][budgets]") {
  TestLoop loop;
  TempDir dir;

  SECTION("claims that need a lookup are limited per source, and only strangers pay") {
    FedNode alpha(loop, "alpha.test", fedkey("alpha-1"), [](NodeSettings& s) {
      s.limits.lookup_burst_per_source = 3;
      s.limits.lookup_rate_per_source = 0.01;
    });
    auto stranger = fresh_key(dir, "stranger");
    for (int i = 0; i < 6; ++i) {
      ClaimResult claim = claim_once(loop, alpha.node->port(), stranger, fmt::format("r{}.example", i), "127.0.0.5");
      CHECK(claim.status == ClaimStatus::Refused);
    }
    CHECK(alpha.cache->stats().queries == 3);  // the other three were refused before any lookup
    CHECK(alpha.node->stats().refused_lookups == 3);
    CHECK_THAT(last_audit(alpha)["reason"].get<std::string>(), Catch::Contains("lookup_rate_per_source"));
    // Another source still gets its lookups, and a peer that authenticates gets its token back.
    CHECK(claim_once(loop, alpha.node->port(), stranger, "other.example", "127.0.0.6").status == ClaimStatus::Refused);
    CHECK(alpha.cache->stats().queries == 4);
    for (const char* domain : {"beta.test", "beta.test"}) {
      (void)domain;
      FedNode beta(loop, "beta.test", fedkey("beta-new"));
      alpha.cache->clear();  // every claim a cache miss
      CHECK(beta.connect_to(alpha, "alpha.test").ok());
    }
  }
  SECTION("a KEY RRset of 1000 records costs nothing to read: it is refused unread") {
    FedNode alpha(loop, "alpha.test", fedkey("alpha-1"));
    ClaimResult claim = claim_once(loop, alpha.node->port(), fresh_key(dir, "many"), "x1.many.wild.test");
    CHECK(claim.status == ClaimStatus::Refused);
    auto audit = last_audit(alpha);
    CHECK(audit["outcome"] == "unusable");
    auto entry = alpha.cache->peek("x1.many.wild.test");
    REQUIRE(entry);
    CHECK_THAT(entry->answer.reason, Catch::Contains("none was read"));
    CHECK(entry->answer.keys.empty());
    CHECK(entry->answer.skipped.empty());
    CHECK(alpha.cache->bytes() < 4096);
  }
  SECTION("a lookup is cancelled when its session closes") {
    SilentNameServer silent;
    FedNode alpha(loop, "alpha.test", fedkey("alpha-1"));
    ResolverConfig slow;
    slow.trust_anchor = testbed_dir() / "trust-anchor.ds";
    slow.forwarders = {silent.address()};
    slow.query_timeout = std::chrono::milliseconds(20000);
    REQUIRE(alpha.resolver->reload(slow).ok());
    auto tls = client_tls(fresh_key(dir, "hang"));
    run_on_thread(loop, [&] {
      auto peer = HostilePeer::connect({.port = alpha.node->port()});
      if (!peer || !peer->handshake(*tls)) return;
      auto claim = encode_claim("slow.example");
      peer->send(claim);
      std::this_thread::sleep_for(200ms);
      peer->reset();  // gone, without waiting for the answer
    });
    loop.run_until([&] { return alpha.node->sessions().empty(); });
    loop.run_until([&] { return alpha.resolver->pending() == 0; }, 5s);
    CHECK(alpha.cache->stats().cancelled == 1);
  }
}

// ---- 4. Per-session state ----------------------------------------------------------------------

TEST_CASE("finding 4: a peer that never reads is stopped, then cut off", "[hardening][budgets]") {
  TestLoop loop;
  FedNode alpha(loop, "alpha.test", fedkey("alpha-1"), [](NodeSettings& s) {
    s.limits.send_queue_high_water = 64 * 1024;
    s.limits.send_queue_limit = 256 * 1024;
    s.limits.send_stall_timeout = std::chrono::milliseconds(500);
  });
  auto tls = client_tls(fedkey("beta-new"));
  FloodResult flood;
  bool claimed = false;
  run_on_thread(loop, [&] {
    auto peer = connect_and_claim({.port = alpha.node->port()}, *tls, "beta.test");
    if (!peer) return;
    claimed = true;
    std::vector<std::uint8_t> pings;
    for (int i = 0; i < 256; ++i) {
      auto ping = encode_ping(std::vector<std::uint8_t>(64, 'p'));
      pings.insert(pings.end(), ping.begin(), ping.end());
    }
    flood = peer->flood([&](std::uint64_t) { return pings; }, 20s, 20s);
  }, 40s);
  REQUIRE(claimed);
  CHECK(flood.closed);
  CHECK(closed_with(alpha, "the peer"));
  CHECK(alpha.node->sessions().empty());
}

TEST_CASE("finding 4: subscriptions per session, frames before CLAIM and rate buckets are bounded",
          "[hardening][budgets]") {
  TestLoop loop;
  FedNode alpha(loop, "alpha.test", fedkey("alpha-1"),
                [](NodeSettings& s) { s.limits.max_subscriptions_per_session = 3; });
  auto tls = client_tls(fedkey("beta-new"));

  SECTION("the subscription beyond max_subscriptions_per_session is NACKed") {
    std::vector<ReadResult> answers;
    run_on_thread(loop, [&] {
      auto peer = connect_and_claim({.port = alpha.node->port()}, *tls, "beta.test");
      if (!peer) return;
      for (std::uint32_t i = 1; i <= 4; ++i) {
        peer->send(encode_presence(FrameType::Subscribe,
                                   {i, fmt::format("pres:w{}@beta.test", i), "pres:alice@alpha.test"}));
        ReadResult r = peer->read_frame(5s);
        answers.push_back(r);
        if (r.is(FrameType::Ack)) answers.push_back(peer->read_frame(5s));  // the NOTIFY
      }
    });
    REQUIRE(answers.size() == 7);
    for (int i : {0, 2, 4}) CHECK(answers[static_cast<std::size_t>(i)].is(FrameType::Ack));
    REQUIRE(answers[6].is(FrameType::Nack));
    auto nack = parse_nack(answers[6].frame->payload);
    REQUIRE(nack.ok());
    CHECK(nack->code == NackCode::LimitExceeded);
  }
  SECTION("a frame before CLAIM may not be longer than 1 KiB") {
    Drain drain;
    run_on_thread(loop, [&] {
      auto peer = HostilePeer::connect({.port = alpha.node->port()});
      if (!peer || !peer->handshake(*tls)) return;
      std::vector<std::uint8_t> header = {static_cast<std::uint8_t>(FrameType::Claim), 0, 0, 0x08, 0x00};  // 2048 bytes
      peer->send(header, Pacing::byte_by_byte());
      drain = peer->read_until_closed(5s);
    });
    REQUIRE(drain.error());
    CHECK(drain.error()->code == ErrorCode::FrameTooLarge);
  }
  SECTION("rate-limit buckets that refilled are forgotten") {
    RateLimiter limiter(10, 5, 1000);
    for (int i = 0; i < 100; ++i) CHECK(limiter.take(fmt::format("peer{}.test", i), 1000));
    CHECK(limiter.size() == 100);
    limiter.prune(1100);  // 0.1 s: 1 token back of the 1 taken
    CHECK(limiter.size() == 0);
    RateLimiter tiny(1, 1, 2);
    CHECK(tiny.take("a", 0));
    CHECK(tiny.take("b", 0));
    CHECK_FALSE(tiny.take("c", 0));  // a flood of new keys is refused, not remembered
    CHECK(tiny.size() == 2);
  }
  SECTION("a presence change reaches only the sessions watching it") {
    PresenceBook book(2, 4);
    REQUIRE(book.subscribe(1, "pres:w@beta.test", "pres:alice@alpha.test").ok());
    REQUIRE(book.subscribe(2, "pres:x@gamma.test", "pres:bob@alpha.test").ok());
    REQUIRE(book.subscribe(2, "pres:y@gamma.test", "pres:alice@alpha.test").ok());
    CHECK_FALSE(book.subscribe(2, "pres:z@gamma.test", "pres:carol@alpha.test").ok());  // per session
    REQUIRE(book.subscribe(3, "pres:v@delta.test", "pres:carol@alpha.test").ok());
    auto full = book.subscribe(4, "pres:u@eps.test", "pres:carol@alpha.test");  // the whole book
    REQUIRE_FALSE(full.ok());
    CHECK_THAT(full.error().message, Catch::Contains("max_subscriptions"));
    book.drop_session(3);
    CHECK(book.subscriptions() == 3);
    using Watchers = std::vector<std::pair<std::uint64_t, std::string>>;
    CHECK(book.watchers("pres:alice@alpha.test") == Watchers{{1, "pres:w@beta.test"}, {2, "pres:y@gamma.test"}});
    CHECK(book.watchers("pres:bob@alpha.test") == Watchers{{2, "pres:x@gamma.test"}});
    book.drop_session(2);
    CHECK(book.watchers("pres:bob@alpha.test").empty());
    CHECK(book.subscriptions_of(2) == 0);
  }
}

// ---- 5. Revocation independent of cache history -------------------------------------------------

TEST_CASE("finding 5: revocation does not depend on what the cache remembers", "[hardening][revocation]") {
  TestLoop loop;
  ManualClock clock;

  SECTION("a removed key ends its session even when the cache entry was evicted in between") {
    FedNode alpha(loop, "alpha.test", fedkey("alpha-1"), {}, clock.fn());
    REQUIRE(alpha.cache->reconfigure({.max_entries = 1}).ok());
    FedNode beta(loop, "beta.test", fedkey("beta-old"));
    REQUIRE(beta.connect_to(alpha, "alpha.test").ok());
    clock.advance(301s);
    lookup_now(loop, *alpha.cache, "gamma.test");  // beta.test's expired entry makes room
    REQUIRE_FALSE(alpha.cache->peek("beta.test"));
    REQUIRE(alpha.resolver->reload(testbed_resolver_config_with("beta.test", "beta.test.rolled.zone.signed")).ok());
    alpha.node->revalidate();
    loop.run_until([&] { return alpha.node->sessions().empty(); });
    CHECK_THAT(last_audit(alpha)["reason"].get<std::string>(), Catch::Contains("no longer published"));
    CHECK(last_audit(alpha)["event"] == "revoke");
  }
  SECTION("keys turning insecure, the key still listed, ends an authenticated session") {
    FedNode alpha(loop, "alpha.test", fedkey("alpha-1"), {}, clock.fn());
    FedNode beta(loop, "beta.test", fedkey("beta-old"));
    REQUIRE(beta.connect_to(alpha, "alpha.test").ok());
    REQUIRE(alpha.resolver->reload(testbed_resolver_config_with("test", "test.nobetads.zone.signed")).ok());
    clock.advance(301s);
    alpha.node->revalidate();
    loop.run_until([&] { return alpha.node->sessions().empty(); });
    auto audit = last_audit(alpha);
    CHECK(audit["event"] == "revoke");
    CHECK(audit["outcome"] == "insecure");
  }
  SECTION("keys that cannot be confirmed for max_key_staleness end the session") {
    FedNode alpha(loop, "alpha.test", fedkey("alpha-1"),
                  [](NodeSettings& s) { s.policy.max_key_staleness = std::chrono::seconds(60); }, clock.fn());
    FedNode beta(loop, "beta.test", fedkey("beta-new"));
    REQUIRE(beta.connect_to(alpha, "alpha.test").ok());
    // An outage of beta.test's servers: its zone is gone, the delegation to
    // it fails (SERVFAIL) on every lookup.
    ResolverConfig failing = testbed_resolver_config();
    std::erase_if(failing.zones, [](const ZoneFile& z) { return z.origin == "beta.test"; });
    REQUIRE(alpha.resolver->reload(failing).ok());
    clock.advance(301s);  // the answer expired; every lookup now fails
    alpha.node->revalidate();
    loop.run_until([&] { return alpha.resolver->pending() == 0; });
    CHECK(alpha.node->sessions().size() == 1);  // a temp-fail alone closes nothing
    clock.advance(61s);  // past max_key_staleness after the expiry
    alpha.node->revalidate();
    loop.run_until([&] { return alpha.node->sessions().empty(); });
    CHECK_THAT(last_audit(alpha)["reason"].get<std::string>(), Catch::Contains("max_key_staleness"));
  }
}

namespace {

// A responder for beta.test that holds beta-old: it takes the CLAIM and
// answers CLAIM_OK only when told to, so a key change can land in between.
class SlowResponder {
 public:
  SlowResponder() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(fd_, 1) == 0);
    socklen_t len = sizeof addr;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    auto identity = load_domain_identity("beta.test", fedkey("beta-old"));
    REQUIRE(identity.ok());
    identity_ = std::make_unique<DomainIdentity>(std::move(identity).value());
    thread_ = std::thread([this] { serve(); });
  }
  ~SlowResponder() {
    go_ = true;
    thread_.join();
    ::close(fd_);
  }
  int port() const { return port_; }
  bool claimed() const { return claimed_; }
  void answer() { go_ = true; }

 private:
  void serve() {
    int conn = ::accept(fd_, nullptr, nullptr);
    if (conn < 0) return;
    SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
    SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION);
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, [](int, X509_STORE_CTX*) { return 1; });
    SSL_CTX_set_alpn_select_cb(
        ctx.get(),
        [](SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in, unsigned int inlen,
           void*) {
          unsigned char* selected = nullptr;
          SSL_select_next_proto(&selected, outlen, kAlpnWire, sizeof kAlpnWire, in, inlen);
          *out = selected;
          return SSL_TLSEXT_ERR_OK;
        },
        nullptr);
    SSL_CTX_use_certificate(ctx.get(), identity_->certificate.get());
    SSL_CTX_use_PrivateKey(ctx.get(), identity_->key.get());
    SslPtr ssl(SSL_new(ctx.get()));
    SSL_set_fd(ssl.get(), conn);
    if (SSL_accept(ssl.get()) == 1) {
      std::uint8_t buf[512];
      if (SSL_read(ssl.get(), buf, sizeof buf) > 0) claimed_ = true;
      while (!go_) std::this_thread::sleep_for(5ms);
      auto ok = encode_claim_ok();
      SSL_write(ssl.get(), ok.data(), static_cast<int>(ok.size()));
      timeval tv{2, 0};
      setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      while (SSL_read(ssl.get(), buf, sizeof buf) > 0) {
      }
    }
    ERR_clear_error();
    ::close(conn);
  }

  int fd_ = -1;
  int port_ = 0;
  std::unique_ptr<DomainIdentity> identity_;
  std::atomic<bool> claimed_{false};
  std::atomic<bool> go_{false};
  std::thread thread_;
};

}  // namespace

TEST_CASE("finding 5: a key removed between the outbound lookup and CLAIM_OK is not missed",
          "[hardening][revocation]") {
  TestLoop loop;
  ManualClock clock;
  FedNode alpha(loop, "alpha.test", fedkey("alpha-1"), {}, clock.fn());
  SlowResponder responder;
  std::optional<Result<SessionInfo>> result;
  alpha.node->connect("alpha.test", "beta.test", "127.0.0.1", responder.port(),
                      [&](Result<SessionInfo> r) { result = std::move(r); });
  uv_timer_t tick;
  uv_timer_init(loop.get(), &tick);
  uv_timer_start(&tick, [](uv_timer_t*) {}, 5, 5);
  loop.run_until([&] { return responder.claimed(); });
  // beta.test retires beta-old while our CLAIM waits for its CLAIM_OK.
  REQUIRE(alpha.resolver->reload(testbed_resolver_config_with("beta.test", "beta.test.rolled.zone.signed")).ok());
  clock.advance(301s);
  lookup_now(loop, *alpha.cache, "beta.test");
  responder.answer();
  loop.run_until([&] { return result.has_value(); });
  uv_close(reinterpret_cast<uv_handle_t*>(&tick), nullptr);
  REQUIRE_FALSE(result->ok());
  CHECK_THAT(result->error().message, Catch::Contains("no longer published"));
  CHECK(last_audit(alpha)["event"] == "revoke");
}

// ---- 6. Reload ----------------------------------------------------------------------------------

namespace {

NodeConfig daemon_config(const std::filesystem::path& key, const std::string& domain = "alpha.test") {
  NodeConfig config;
  config.source = "test.toml";
  config.resolver = testbed_resolver_config();
  config.listen_address = "127.0.0.1";
  config.listen_port = 0;
  config.federation.domains = {{domain, {key}}};
  config.federation.revalidate_interval = std::chrono::milliseconds(0);
  config.store.path = scratch_path("keyfed.db");
  config.control.socket = scratch_path("keyfed.sock");
  config.federation.limits.handshake_timeout = std::chrono::milliseconds(3000);
  return config;
}

std::unique_ptr<Daemon> start_daemon(TestLoop& loop, NodeConfig config, std::vector<std::string>* audits) {
  Node::Handlers handlers;
  handlers.audit = [audits](const std::string& line) { audits->push_back(line); };
  auto daemon = Daemon::start(loop.get(), std::move(config), std::move(handlers));
  if (!daemon) FAIL(daemon.error().message);
  return std::move(daemon).value();
}

Result<SessionInfo> connect_to_daemon(TestLoop& loop, FedNode& from, Daemon& daemon, const std::string& domain) {
  std::optional<Result<SessionInfo>> result;
  from.node->connect(from.domain, domain, "127.0.0.1", daemon.node().port(),
                     [&](Result<SessionInfo> r) { result = std::move(r); });
  loop.run_until([&] { return result.has_value(); });
  return std::move(*result);
}

}  // namespace

TEST_CASE("finding 6: a reload applies every section, or none", "[hardening][reload]") {
  TestLoop loop;
  std::vector<std::string> audits;
  NodeConfig config = daemon_config(fedkey("alpha-1"));
  auto daemon = start_daemon(loop, config, &audits);
  FedNode beta_old(loop, "beta.test", fedkey("beta-old"));
  auto session = connect_to_daemon(loop, beta_old, *daemon, "alpha.test");
  REQUIRE(session.ok());

  SECTION("new zones: keys validated before are not kept; the session they authenticated ends at once") {
    NodeConfig next = config;
    next.resolver = testbed_resolver_config_with("beta.test", "beta.test.rolled.zone.signed");
    REQUIRE(daemon->reload(next).ok());
    loop.run_until([&] { return daemon->node().sessions().empty(); });
    CHECK_THAT(audits.back(), Catch::Contains("\"event\":\"revoke\""));
    FedNode again(loop, "beta.test", fedkey("beta-old"));
    CHECK_FALSE(connect_to_daemon(loop, again, *daemon, "alpha.test").ok());  // refused now, not after a TTL
  }
  SECTION("a new trust anchor: nothing validated under the old one authenticates") {
    TempDir dir;
    auto anchor = dir.path() / "other.ds";
    std::ofstream(anchor) << "test. 3600 IN DS 12345 15 2 "
                             "0000000000000000000000000000000000000000000000000000000000000000\n";
    NodeConfig next = config;
    next.resolver.trust_anchor = anchor;
    REQUIRE(daemon->reload(next).ok());
    loop.run_until([&] { return daemon->node().sessions().empty(); });
    CHECK_THAT(audits.back(), Catch::Contains("bogus"));
  }
  SECTION("a refused reload leaves every part as it was, the resolver included") {
    TempDir dir;
    NodeConfig next = config;
    next.resolver = testbed_resolver_config_with("beta.test", "beta.test.rolled.zone.signed");
    next.federation.domains[0].key_files = {dir.path() / "missing.pem"};
    next.key_cache.max_entries = 7;
    CHECK_FALSE(daemon->reload(next).ok());
    CHECK(daemon->resolver().config() == config.resolver);
    CHECK(daemon->cache().config().max_entries == config.key_cache.max_entries);
    FedNode again(loop, "beta.test", fedkey("beta-old"));
    CHECK(connect_to_daemon(loop, again, *daemon, "alpha.test").ok());
  }
  SECTION("[key_cache], [node], [limits] and [[peers]] are applied") {
    FedNode gamma(loop, "gamma.test", fedkey("gamma-1"));
    NodeConfig next = config;
    next.key_cache.max_entries = 7;
    next.listen_port = free_port();
    next.federation.limits.max_frame_size = 4096;
    next.peers = {{"gamma.test", "127.0.0.1", gamma.node->port()}};
    int old_port = daemon->node().port();
    REQUIRE(daemon->reload(next).ok());
    CHECK(daemon->cache().config().max_entries == 7);
    CHECK(daemon->node().port() == next.listen_port);
    CHECK(daemon->node().settings().limits.max_frame_size == 4096);
    loop.run_until([&] {
      for (const SessionInfo& s : gamma.node->sessions()) {
        if (s.established && s.peer_domain == "alpha.test") return true;
      }
      return false;
    });
    FedNode again(loop, "beta.test", fedkey("beta-new"));
    CHECK(connect_to_daemon(loop, again, *daemon, "alpha.test").ok());  // on the new port
    std::optional<Result<SessionInfo>> old;
    again.node->connect("beta.test", "alpha.test", "127.0.0.1", old_port,
                        [&](Result<SessionInfo> r) { old = std::move(r); });
    loop.run_until([&] { return old.has_value(); });
    CHECK_FALSE(old->ok());  // nothing listens there any more
  }
  SECTION("a new refuse override ends the live sessions it now refuses") {
    NodeConfig next = config;
    next.federation.policy.overrides["*.test"] = PeerOverride::Refuse;
    REQUIRE(daemon->reload(next).ok());
    loop.run_until([&] { return daemon->node().sessions().empty(); });
    CHECK_THAT(audits.back(), Catch::Contains("refused by configuration"));
  }
}

TEST_CASE("finding 6: a reload that drops a hosted domain while an outbound connect is pending",
          "[hardening][reload]") {
  TestLoop loop;
  FedNode beta(loop, "beta.test", fedkey("beta-new"));
  FedNode both(loop, "alpha.test", fedkey("alpha-1"),
               [](NodeSettings& s) { s.domains.push_back({"gamma.test", {fedkey("gamma-1")}}); });
  std::optional<Result<SessionInfo>> result;
  both.node->connect("gamma.test", "beta.test", "127.0.0.1", beta.node->port(),
                     [&](Result<SessionInfo> r) { result = std::move(r); });
  NodeSettings fewer = both.node->settings();
  fewer.domains.pop_back();
  REQUIRE(both.node->reload(fewer).ok());
  loop.run_until([&] { return result.has_value(); });
  REQUIRE_FALSE(result->ok());
  CHECK_THAT(result->error().message, Catch::Contains("no longer hosted"));
  CHECK(both.connect_to(beta, "beta.test").ok());  // the node goes on
}

// ---- 9. Session budgets by kind -------------------------------------------------------------

TEST_CASE("finding 9: silent connections from one source cannot keep the node from federating",
          "[hardening][budgets]") {
  TestLoop loop;
  FedNode alpha(loop, "alpha.test", fedkey("alpha-1"), [](NodeSettings& s) {
    s.limits.max_sessions = 30;
    s.limits.max_inbound_unauthenticated = 20;
    s.limits.max_unauthenticated_per_source = 8;
    s.limits.handshake_timeout = std::chrono::milliseconds(30000);  // the silent ones would stay
  });
  FedNode gamma(loop, "gamma.test", fedkey("gamma-1"));
  std::atomic<bool> opened{false}, done{false};
  std::thread silent([&] {
    std::vector<HostilePeer> peers;
    for (int i = 0; i < 40; ++i) {
      auto peer = HostilePeer::connect({.port = alpha.node->port(), .from = "127.0.0.7"});
      if (peer) peers.push_back(std::move(peer).value());
    }
    opened = true;
    while (!done) std::this_thread::sleep_for(10ms);
  });
  uv_timer_t tick;
  uv_timer_init(loop.get(), &tick);
  uv_timer_start(&tick, [](uv_timer_t*) {}, 5, 5);
  loop.run_until([&] { return opened.load(); });
  run_for(loop, 200ms);
  // A peer from another address is served, and the node still opens sessions itself.
  FedNode beta(loop, "beta.test", fedkey("beta-new"));
  auto inbound = beta.connect_to(alpha, "alpha.test");
  CHECK(inbound.ok());
  auto outbound = alpha.connect_to(gamma, "gamma.test");
  CHECK(outbound.ok());
  CHECK(alpha.node->stats().evicted >= 32);
  done = true;
  uv_close(reinterpret_cast<uv_handle_t*>(&tick), nullptr);
  silent.join();
}

// ---- 10. Aliases and subdomains ----------------------------------------------------------

TEST_CASE("finding 10: aliases and wildcards, as docs/KEYS.md decides them", "[hardening][policy]") {
  TestLoop loop;
  TempDir dir;
  SECTION("a CNAME'd KEY name: the domain's own zone named those keys") {
    FedNode alpha(loop, "alpha.test", fedkey("alpha-1"));
    CHECK(claim_once(loop, alpha.node->port(), fedkey("alpha-1"), "alias.test").ok());
    CHECK_THAT(last_audit(alpha)["reason"].get<std::string>(), Catch::Contains("via alias _impp._tcp.alpha.test"));
    CHECK(claim_once(loop, alpha.node->port(), fedkey("gamma-1"), "dname.test").ok());
  }
  SECTION("refusing a domain refuses the domains whose keys are aliases of its keys") {
    FedNode alpha(loop, "alpha.test", fedkey("alpha-1"),
                  [](NodeSettings& s) { s.policy.overrides["gamma.test"] = PeerOverride::Refuse; });
    CHECK(claim_once(loop, alpha.node->port(), fedkey("gamma-1"), "dname.test").status == ClaimStatus::Refused);
    CHECK_THAT(last_audit(alpha)["reason"].get<std::string>(), Catch::Contains("alias of _impp._tcp.gamma.test"));
  }
  SECTION("a wildcard's key authenticates any name under it, and *.domain refuses every subdomain") {
    FedNode open(loop, "alpha.test", fedkey("alpha-1"));
    CHECK(claim_once(loop, open.node->port(), fedkey("wild-1"), "anything.wild.test").ok());
    CHECK_THAT(last_audit(open)["reason"].get<std::string>(), Catch::Contains("from a wildcard"));
    FedNode closed(loop, "alpha.test", fedkey("alpha-1"),
                   [](NodeSettings& s) { s.policy.overrides["*.wild.test"] = PeerOverride::Refuse; });
    CHECK(claim_once(loop, closed.node->port(), fedkey("wild-1"), "anything.wild.test").status ==
          ClaimStatus::Refused);
    CHECK(claim_once(loop, closed.node->port(), fedkey("wild-1"), "deeper.anything.wild.test").status ==
          ClaimStatus::Refused);
    CHECK_THAT(last_audit(closed)["reason"].get<std::string>(), Catch::Contains("refused by configuration"));
  }
}

// ---- 11. Key files --------------------------------------------------------------------------

TEST_CASE("finding 11: a key file is checked through the descriptor it is read from", "[hardening][keys]") {
  TempDir dir;
  auto real = dir.path() / "real.pem";
  std::filesystem::copy_file(fedkey("alpha-1"), real);
  auto link = dir.path() / "link.pem";
  std::filesystem::create_symlink(real, link);
  auto link_result = load_domain_identity("alpha.test", link);
  REQUIRE_FALSE(link_result.ok());
  CHECK_THAT(link_result.error().message, Catch::Contains("symbolic link"));
  auto fifo = dir.path() / "fifo.pem";
  REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
  auto fifo_result = load_domain_identity("alpha.test", fifo);
  REQUIRE_FALSE(fifo_result.ok());
  CHECK_THAT(fifo_result.error().message, Catch::Contains("not a regular file"));
  CHECK(load_domain_identity("alpha.test", real).ok());
  CHECK(ERR_peek_error() == 0);
}

// ---- every refusal of docs/POLICY.md §1 and §3, by a hostile peer ------------------------------

TEST_CASE("every refusal of docs/POLICY.md, played by a peer that is not a keyfed node", "[hardening][policy]") {
  TestLoop loop;
  TempDir dir;
  struct Row {
    std::string name, domain;
    std::filesystem::path key;
    std::function<void(NodeSettings&)> policy;
    std::string reason;
  };
  auto stranger = fresh_key(dir, "stranger");
  std::vector<Row> rows = {
      {"keys, another key", "beta.test", stranger, {}, "not one of the 2 key(s) beta.test publishes"},
      {"keys, another domain's key", "beta.test", fedkey("gamma-1"), {}, "not one of the 2 key(s)"},
      {"bogus (tampered)", "tampered.test", fedkey("tampered-1"), {}, "was bogus"},
      {"bogus (expired)", "expired.test", fedkey("expired-1"), {}, "was bogus"},
      {"bogus (wrong DS)", "badds.test", stranger, {}, "was bogus"},
      {"temp-fail", "elsewhere.example", stranger, {}, "was temp-fail"},
      {"unusable", "unsupported.test", stranger, {}, "none is usable"},
      {"no-keys, unauthenticated not allowed", "nokey.test", stranger, {}, "unauthenticated peers are not allowed"},
      {"insecure, refused", "insecure.test", fedkey("insecure-1"), {}, "no DNSSEC chain of trust"},
      {"insecure weak-auth, another key", "insecure.test", stranger,
       [](NodeSettings& s) { s.policy.insecure = InsecurePolicy::WeakAuth; }, "not one of the 1 key(s)"},
      {"require-auth override, no-keys", "nokey.test", stranger,
       [](NodeSettings& s) {
         s.policy.allow_unauthenticated = true;
         s.policy.overrides["nokey.test"] = PeerOverride::RequireAuth;
       },
       "must authenticate"},
      {"refuse override, right key", "beta.test", fedkey("beta-new"),
       [](NodeSettings& s) { s.policy.overrides["beta.test"] = PeerOverride::Refuse; }, "refused by configuration"},
  };
  for (const Row& row : rows) {
    INFO(row.name);
    FedNode alpha(loop, "alpha.test", fedkey("alpha-1"), row.policy);
    ClaimResult claim = claim_once(loop, alpha.node->port(), row.key, row.domain);
    REQUIRE(claim.status == ClaimStatus::Refused);
    CHECK(claim.error->code == ErrorCode::ClaimRefused);
    auto audit = last_audit(alpha);
    CHECK(audit["decision"] == "refuse");
    CHECK_THAT(audit["reason"].get<std::string>(), Catch::Contains(row.reason));
    CHECK(alpha.delivered.empty());
  }
}
