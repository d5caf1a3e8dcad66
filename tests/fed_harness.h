// Federation test harness: real nodes with real TLS on loopback, each with
// its own resolver and key cache over the signed testbed, all on one loop;
// and a blocking raw TLS client (on its own thread) to play misbehaving peers.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "federation/frames.h"
#include "federation/node.h"
#include "harness.h"
#include "hostile_peer.h"

namespace keyfed::test {

std::filesystem::path fedkey(const std::string& name);  // build/testbed/fedkeys/NAME.pem

/// A node and everything it needs; records what its handlers saw.
struct FedNode {
  FedNode(TestLoop& loop, const std::string& domain, const std::filesystem::path& key_file,
          std::function<void(NodeSettings&)> adjust = {}, ClockFn clock = steady_clock_fn(), int port = 0);
  ~FedNode();

  /// Connects as this node's first domain to `peer` (a node listening on loopback) and waits.
  Result<SessionInfo> connect_to(FedNode& peer, const std::string& peer_domain);
  /// Sends a CPIM message over a session and waits for ACK/NACK.
  Status send(std::uint64_t session_id, const std::string& cpim);
  std::vector<std::string> audits_with(std::string_view text) const;

  TestLoop& loop;
  std::string domain;
  std::unique_ptr<KeyResolver> resolver;
  std::unique_ptr<KeyCache> cache;
  std::unique_ptr<Node> node;
  std::vector<std::string> audit_lines;
  std::vector<DeliveredMessage> delivered;
  std::vector<NotifyPayload> notified;
  std::vector<std::pair<SessionInfo, std::string>> closed;
};

/// A hostile peer's TLS context presenting `key` (0600 PEM), asking for `sni`.
std::shared_ptr<const hostile::TlsClientContext> client_tls(const std::filesystem::path& key,
                                                            std::string sni = "alpha.test");

/// A CPIM message (RFC 3862) from `from` to `to`.
std::string cpim_message(const std::string& from, const std::string& to, const std::string& text);

/// Runs `body` on its own thread while `loop` runs on this one, and returns
/// once body has returned: how a blocking client (hostile::HostilePeer) talks
/// to a FedNode. No Catch2 assertions inside body: keep its results in
/// variables and check them afterwards.
void run_on_thread(TestLoop& loop, const std::function<void()>& body,
                   std::chrono::milliseconds limit = std::chrono::seconds(30));

/// What a raw client should do; runs on its own thread with blocking I/O.
struct RawClientScript {
  int port = 0;
  std::string sni = "alpha.test";
  bool tls = true;                 ///< false: send `garbage` over plain TCP
  int max_tls_version = 0;         ///< e.g. TLS1_2_VERSION; 0: TLS 1.3
  std::string key_file;            ///< empty: no client certificate
  std::string claim;               ///< empty: send no CLAIM
  std::vector<std::vector<std::uint8_t>> frames_after_claim;  ///< raw frames to send after CLAIM_OK
  std::string garbage;
  int idle_ms = 0;                 ///< stay connected, silent, this long before reading
};

struct RawClientResult {
  bool tls_ok = false;
  std::string tls_error;
  std::vector<Frame> frames;  ///< frames received until the server closed
  bool closed_by_server = false;
};

class RawClient {
 public:
  explicit RawClient(RawClientScript script);
  ~RawClient();
  bool done() const { return done_; }
  /// Runs `loop` until the client is done, then joins it.
  RawClientResult wait(TestLoop& loop);

 private:
  RawClientScript script_;
  RawClientResult result_;
  std::atomic<bool> done_{false};
  std::thread thread_;
};

}  // namespace keyfed::test
