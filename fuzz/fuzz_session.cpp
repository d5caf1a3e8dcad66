// libFuzzer target: a node's session after a real handshake (docs/PROTOCOL.md
// §4). The fuzzer is an initiator holding beta.test's key: it completes TLS
// 1.3 and CLAIM with an alpha.test node over memory (a MemoryTransport on the
// node's side, memory BIOs on its own), then sends each input as frames
// through TLS, and reads (and discards) what the node answers, so the node's
// whole path after decryption runs: frame reader, dispatch, strict CPIM,
// sender binding, presence, budgets. A session the input gets closed is
// replaced by a new one for the next input.
//
// Input: the first byte's low bit picks the form of the rest:
//   0: frames, each as type (1 byte), length (2 bytes, big-endian), payload
//      (that many bytes, or what is left): well-formed framing, so most
//      inputs reach the frame handlers;
//   1: raw bytes written into the TLS stream as they are.
// Seeds: fuzz/corpus/session. Needs the signed testbed (KEYFED_TESTBED_DIR).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "common/c_handles.h"
#include "common/log.h"
#include "common/uv_handle.h"
#include "config/node_config.h"
#include "dnskey/key_cache.h"
#include "dnskey/resolver.h"
#include "federation/frames.h"
#include "federation/identity.h"
#include "federation/node.h"
#include "federation/transport.h"

namespace {

using namespace keyfed;

// What passes between the node-side transport and the fuzzer.
struct MemoryPipe {
  std::vector<std::uint8_t> to_client;  // what the node wrote
  TransportUser* user = nullptr;        // the node's session; null once closed
  bool reading = true;
  bool closing = false;
};

// A Transport over memory: writes go to the pipe, and the fuzzer hands the
// session its bytes. Closing completes on the loop's next turn, as TCP's does.
class MemoryTransport final : public Transport {
 public:
  MemoryTransport(uv_loop_t* loop, std::shared_ptr<MemoryPipe> pipe) : pipe_(std::move(pipe)) {
    timer_ = make_uv_handle<uv_timer_t>();
    uv_timer_init(loop, timer_.get());
    timer_->data = this;
  }
  ~MemoryTransport() override { pipe_->user = nullptr; }
  void attach(TransportUser* user) override { pipe_->user = user; }
  std::string peer_address() const override { return "fuzz:1"; }
  std::string source() const override { return "fuzz"; }
  void write(std::vector<std::uint8_t> bytes) override {
    if (!pipe_->closing) pipe_->to_client.insert(pipe_->to_client.end(), bytes.begin(), bytes.end());
  }
  std::size_t queued_bytes() const override { return 0; }
  void set_reading(bool reading) override { pipe_->reading = reading; }
  void close(std::chrono::milliseconds) override {
    if (pipe_->closing) return;
    pipe_->closing = true;
    uv_timer_start(timer_.get(), [](uv_timer_t* t) {
      auto* self = static_cast<MemoryTransport*>(t->data);
      TransportUser* user = self->pipe_->user;
      self->pipe_->user = nullptr;
      if (user != nullptr) user->on_transport_closed();  // the session frees itself, and this
    }, 0, 0);
  }

 private:
  std::shared_ptr<MemoryPipe> pipe_;
  UvHandle<uv_timer_t> timer_;
};

struct World {
  uv_loop_t loop{};
  std::unique_ptr<KeyResolver> resolver;
  std::unique_ptr<KeyCache> cache;
  std::unique_ptr<Node> node;
  SslCtxPtr client_ctx;
  std::unique_ptr<DomainIdentity> identity;
  // The session in use.
  std::shared_ptr<MemoryPipe> pipe;
  SslPtr client;
  BIO* client_in = nullptr;   // owned by client: bytes from the node
  BIO* client_out = nullptr;  // owned by client: bytes for the node
  FrameReader reader{kHardMaxFrameSize};
  bool claimed = false;
};

World* g_world = nullptr;

[[noreturn]] void die(const std::string& why) {
  std::fprintf(stderr, "fuzz_session: %s\n", why.c_str());
  std::abort();
}

bool alive(const World& w) { return w.pipe && w.pipe->user != nullptr && !w.pipe->closing; }

// Moves bytes both ways until nothing moves; the client reads (and drops)
// what the node sent, noting CLAIM_OK.
void pump(World& w) {
  for (int round = 0; round < 256; ++round) {
    bool moved = false;
    if (std::size_t n = BIO_ctrl_pending(w.client_out); n > 0) {
      std::vector<std::uint8_t> bytes(n);
      BIO_read(w.client_out, bytes.data(), static_cast<int>(n));
      if (alive(w) && w.pipe->reading) w.pipe->user->on_transport_bytes(bytes);
      moved = true;
    }
    if (w.pipe && !w.pipe->to_client.empty()) {
      BIO_write(w.client_in, w.pipe->to_client.data(), static_cast<int>(w.pipe->to_client.size()));
      w.pipe->to_client.clear();
      moved = true;
    }
    if (SSL_is_init_finished(w.client.get())) {
      std::uint8_t plain[16384];
      for (;;) {
        ERR_clear_error();
        int n = SSL_read(w.client.get(), plain, sizeof plain);
        if (n <= 0) break;
        w.reader.feed({plain, static_cast<std::size_t>(n)});
        moved = true;
      }
      for (;;) {
        auto frame = w.reader.next();
        if (!frame || !frame->has_value()) break;
        if ((*frame)->type == static_cast<std::uint8_t>(FrameType::ClaimOk)) w.claimed = true;
      }
    }
    uv_run(&w.loop, UV_RUN_NOWAIT);
    if (!moved) return;
  }
}

// A new session up to CLAIM_OK, or false.
bool open_session(World& w) {
  w.pipe = std::make_shared<MemoryPipe>();
  w.claimed = false;
  w.reader = FrameReader(kHardMaxFrameSize);
  w.client.reset(SSL_new(w.client_ctx.get()));
  w.client_in = BIO_new(BIO_s_mem());
  w.client_out = BIO_new(BIO_s_mem());
  BIO_set_mem_eof_return(w.client_in, -1);
  SSL_set_bio(w.client.get(), w.client_in, w.client_out);
  SSL_set_connect_state(w.client.get());
  SSL_set_tlsext_host_name(w.client.get(), "alpha.test");
  w.node->serve(std::make_unique<MemoryTransport>(&w.loop, w.pipe));
  for (int i = 0; i < 32 && !SSL_is_init_finished(w.client.get()); ++i) {
    ERR_clear_error();
    SSL_do_handshake(w.client.get());
    pump(w);
  }
  if (!SSL_is_init_finished(w.client.get()) || !alive(w)) return false;
  auto claim = encode_claim("beta.test");
  SSL_write(w.client.get(), claim.data(), static_cast<int>(claim.size()));
  // The first claim waits on a real lookup (libunbound's thread); later ones hit the cache.
  for (int i = 0; i < 2000 && !w.claimed && alive(w); ++i) {
    pump(w);
    if (!w.claimed) uv_run(&w.loop, UV_RUN_ONCE);
  }
  return w.claimed && alive(w);
}

World* make_world() {
  auto* w = new World;
  uv_loop_init(&w->loop);
  set_log_level(LogLevel::Error);
  std::filesystem::path testbed = std::getenv("KEYFED_TESTBED_DIR") ? std::getenv("KEYFED_TESTBED_DIR")
                                                                     : KEYFED_TESTBED_DIR;
  Result<NodeConfig> config = load_node_config(testbed / "keyfed.toml");
  if (!config) die(config.error().message);
  auto resolver = KeyResolver::create(&w->loop, config->resolver);
  if (!resolver) die(resolver.error().message);
  w->resolver = std::move(resolver).value();
  w->cache = std::make_unique<KeyCache>(*w->resolver, config->key_cache);
  NodeSettings settings;
  settings.domains = {{"alpha.test", {testbed / "fedkeys" / "alpha-1.pem"}}};
  settings.revalidate_interval = std::chrono::milliseconds(0);
  // One source opens every session: its budgets must not be what the fuzzer explores.
  settings.limits.connection_rate_per_source = 1e9;
  settings.limits.connection_burst_per_source = 1e9;
  settings.limits.message_rate = 1e9;
  settings.limits.message_burst = 1e9;
  settings.limits.max_subscriptions_per_session = 64;
  Node::Handlers handlers;
  handlers.audit = [](const std::string&) {};  // one line per session: noise here
  auto node = Node::create(&w->loop, *w->cache, settings, std::move(handlers));
  if (!node) die(node.error().message);
  w->node = std::move(node).value();
  auto identity = load_domain_identity("beta.test", testbed / "fedkeys" / "beta-new.pem");
  if (!identity) die(identity.error().message);
  w->identity = std::make_unique<DomainIdentity>(std::move(identity).value());
  w->client_ctx.reset(SSL_CTX_new(TLS_client_method()));
  SSL_CTX_set_min_proto_version(w->client_ctx.get(), TLS1_3_VERSION);
  SSL_CTX_set_verify(w->client_ctx.get(), SSL_VERIFY_NONE, nullptr);
  SSL_CTX_set_alpn_protos(w->client_ctx.get(), kAlpnWire, sizeof kAlpnWire);
  SSL_CTX_use_certificate(w->client_ctx.get(), w->identity->certificate.get());
  SSL_CTX_use_PrivateKey(w->client_ctx.get(), w->identity->key.get());
  // A harness that cannot set up a session fuzzes nothing: fail loudly.
  if (!open_session(*w)) die("cannot open the first session (is the testbed signed and fresh?)");
  return w;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (g_world == nullptr) g_world = make_world();
  World& w = *g_world;
  if (size == 0) return 0;
  if (!alive(w) && !open_session(w)) {
    pump(w);
    return 0;
  }
  bool raw = (data[0] & 1) != 0;
  std::vector<std::uint8_t> bytes;
  if (raw) {
    bytes.assign(data + 1, data + size);
  } else {
    for (std::size_t at = 1; at + 3 <= size;) {
      std::uint8_t type = data[at];
      std::size_t length = static_cast<std::size_t>(data[at + 1]) << 8 | data[at + 2];
      at += 3;
      length = std::min(length, size - at);
      auto frame = encode_frame(static_cast<FrameType>(type), {data + at, length});
      bytes.insert(bytes.end(), frame.begin(), frame.end());
      at += length;
    }
  }
  if (!bytes.empty()) {
    ERR_clear_error();
    SSL_write(w.client.get(), bytes.data(), static_cast<int>(bytes.size()));
  }
  pump(w);
  return 0;
}
