#include "fed_harness.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include "common/c_handles.h"
#include "federation/identity.h"

namespace keyfed::test {

std::filesystem::path fedkey(const std::string& name) { return testbed_dir() / "fedkeys" / (name + ".pem"); }

FedNode::FedNode(TestLoop& l, const std::string& d, const std::filesystem::path& key_file,
                 std::function<void(NodeSettings&)> adjust, ClockFn clock, int port)
    : loop(l), domain(d) {
  auto r = KeyResolver::create(loop.get(), testbed_resolver_config());
  REQUIRE(r.ok());
  resolver = std::move(r).value();
  cache = std::make_unique<KeyCache>(*resolver, KeyCacheConfig{}, std::move(clock));
  NodeSettings settings;
  settings.domains = {{domain, {key_file}}};
  settings.limits.handshake_timeout = std::chrono::milliseconds(3000);
  settings.revalidate_interval = std::chrono::milliseconds(0);
  if (adjust) adjust(settings);
  Node::Handlers handlers;
  handlers.audit = [this](const std::string& line) { audit_lines.push_back(line); };
  handlers.on_message = [this](const DeliveredMessage& m) { delivered.push_back(m); };
  handlers.on_notify = [this](const SessionInfo&, const NotifyPayload& n) { notified.push_back(n); };
  handlers.on_session_closed = [this](const SessionInfo& s, const std::string& why) { closed.emplace_back(s, why); };
  auto n = Node::create(loop.get(), *cache, std::move(settings), std::move(handlers));
  if (!n) FAIL("node: " << n.error().message);
  node = std::move(n).value();
  REQUIRE(node->listen("127.0.0.1", port).ok());
}

FedNode::~FedNode() {
  node.reset();
  cache.reset();
  resolver.reset();
}

Result<SessionInfo> FedNode::connect_to(FedNode& peer, const std::string& peer_domain) {
  std::optional<Result<SessionInfo>> result;
  node->connect(domain, peer_domain, "127.0.0.1", peer.node->port(), [&](Result<SessionInfo> r) { result = std::move(r); });
  loop.run_until([&] { return result.has_value(); });
  // Let the responder finish its side too.
  loop.run_until([&] {
    if (!result->ok()) return true;
    for (const SessionInfo& s : peer.node->sessions()) {
      if (s.established && s.peer_domain == domain) return true;
    }
    return false;
  });
  return std::move(*result);
}

Status FedNode::send(std::uint64_t session_id, const std::string& cpim) {
  std::optional<Status> result;
  Status started = node->send_message(session_id, {cpim.begin(), cpim.end()}, [&](Status s) { result = std::move(s); });
  if (!started) return started;
  loop.run_until([&] { return result.has_value(); });
  return std::move(*result);
}

std::vector<std::string> FedNode::audits_with(std::string_view text) const {
  std::vector<std::string> out;
  for (const std::string& line : audit_lines) {
    if (line.find(text) != std::string::npos) out.push_back(line);
  }
  return out;
}

std::shared_ptr<const hostile::TlsClientContext> client_tls(const std::filesystem::path& key, std::string sni) {
  hostile::TlsOptions options;
  options.key_file = key;
  options.sni = std::move(sni);
  auto context = hostile::TlsClientContext::create(options);
  if (!context) FAIL("TLS context for " << key << ": " << context.error().message);
  return std::make_shared<const hostile::TlsClientContext>(std::move(context).value());
}

std::string cpim_message(const std::string& from, const std::string& to, const std::string& text) {
  return "From: <" + from + ">\r\nTo: <" + to + ">\r\nDateTime: 2026-11-23T05:00:00Z\r\n\r\n" +
         "Content-Type: text/plain\r\n\r\n" + text;
}

namespace {

bool write_all(int fd, const void* data, std::size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w <= 0) return false;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

void run_script(const RawClientScript& script, RawClientResult& result) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(script.port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    result.tls_error = "connect failed";
    ::close(fd);
    return;
  }
  auto read_until_close = [&](auto&& read_some) {
    FrameReader reader(kHardMaxFrameSize);
    std::uint8_t buf[16384];
    for (;;) {
      int n = read_some(buf, sizeof buf);
      if (n <= 0) {
        result.closed_by_server = true;
        return;
      }
      reader.feed({buf, static_cast<std::size_t>(n)});
      for (;;) {
        auto f = reader.next();
        if (!f || !f->has_value()) break;
        result.frames.push_back(**f);
      }
    }
  };
  if (!script.tls) {
    write_all(fd, script.garbage.data(), script.garbage.size());
    if (script.idle_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(script.idle_ms));
    read_until_close([&](std::uint8_t* b, std::size_t n) { return static_cast<int>(::recv(fd, b, n, 0)); });
    ::close(fd);
    return;
  }
  SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  if (script.max_tls_version != 0) SSL_CTX_set_max_proto_version(ctx.get(), script.max_tls_version);
  SSL_CTX_set_alpn_protos(ctx.get(), kAlpnWire, sizeof kAlpnWire);
  SslPtr ssl(SSL_new(ctx.get()));
  SSL_set_fd(ssl.get(), fd);
  SSL_set_tlsext_host_name(ssl.get(), script.sni.c_str());
  if (!script.key_file.empty()) {
    auto identity = load_domain_identity(script.claim.empty() ? "client.test" : script.claim, script.key_file);
    if (!identity) {  // no Catch2 assertions off the main thread
      result.tls_error = identity.error().message;
      ::close(fd);
      return;
    }
    SSL_use_certificate(ssl.get(), identity->certificate.get());
    SSL_use_PrivateKey(ssl.get(), identity->key.get());
  }
  if (SSL_connect(ssl.get()) != 1) {
    char err[256];
    ERR_error_string_n(ERR_get_error(), err, sizeof err);
    result.tls_error = err;
    ::close(fd);
    return;
  }
  result.tls_ok = true;
  if (script.idle_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(script.idle_ms));
  if (!script.claim.empty()) {
    auto claim = encode_claim(script.claim);
    SSL_write(ssl.get(), claim.data(), static_cast<int>(claim.size()));
  }
  if (!script.frames_after_claim.empty()) {
    // Wait for CLAIM_OK (or an ERROR), then send the scripted frames.
    FrameReader reader(kHardMaxFrameSize);
    std::uint8_t buf[4096];
    bool ok = false;
    while (!ok) {
      int n = SSL_read(ssl.get(), buf, sizeof buf);
      if (n <= 0) break;
      reader.feed({buf, static_cast<std::size_t>(n)});
      auto f = reader.next();
      if (f && f->has_value()) {
        result.frames.push_back(**f);
        ok = (*f)->type == static_cast<std::uint8_t>(FrameType::ClaimOk);
        if (!ok) break;
      }
    }
    for (const auto& frame : script.frames_after_claim) SSL_write(ssl.get(), frame.data(), static_cast<int>(frame.size()));
  }
  read_until_close([&](std::uint8_t* b, std::size_t n) { return SSL_read(ssl.get(), b, static_cast<int>(n)); });
  ::close(fd);
}

}  // namespace

void run_on_thread(TestLoop& loop, const std::function<void()>& body, std::chrono::milliseconds limit) {
  std::atomic<bool> done{false};
  // The loop only wakes on events; a short repeating timer lets it notice
  // that the thread has finished.
  uv_timer_t tick;
  uv_timer_init(loop.get(), &tick);
  uv_timer_start(&tick, [](uv_timer_t*) {}, 5, 5);
  std::thread thread([&] {
    body();
    done = true;
  });
  struct Cleanup {  // also when run_until fails the test (it throws)
    TestLoop& loop;
    uv_timer_t& tick;
    std::thread& thread;
    ~Cleanup() {
      if (thread.joinable()) thread.join();
      uv_close(reinterpret_cast<uv_handle_t*>(&tick), nullptr);
      uv_run(loop.get(), UV_RUN_NOWAIT);
    }
  } cleanup{loop, tick, thread};
  loop.run_until([&] { return done.load(); }, limit);
}

RawClient::RawClient(RawClientScript script) : script_(std::move(script)) {
  thread_ = std::thread([this] {
    run_script(script_, result_);
    done_ = true;
  });
}

RawClient::~RawClient() {
  if (thread_.joinable()) thread_.join();
}

RawClientResult RawClient::wait(TestLoop& loop) {
  // The loop only wakes on events; a short repeating timer lets it notice
  // that the client thread has finished.
  uv_timer_t tick;
  uv_timer_init(loop.get(), &tick);
  uv_timer_start(&tick, [](uv_timer_t*) {}, 10, 10);
  loop.run_until([&] { return done_.load(); });
  uv_close(reinterpret_cast<uv_handle_t*>(&tick), nullptr);
  uv_run(loop.get(), UV_RUN_NOWAIT);
  thread_.join();
  return result_;
}

}  // namespace keyfed::test
