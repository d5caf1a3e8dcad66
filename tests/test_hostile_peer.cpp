// The hostile peer library (tests/hostile_peer.h) against a real node: each
// step it offers does what it says on the wire. The hostile scenarios
// themselves (budgets, cut-offs) are tested elsewhere, on top of it.
#include <catch2/catch.hpp>

#include "fed_harness.h"
#include "hostile_peer.h"

using namespace keyfed;
using namespace keyfed::hostile;
using namespace keyfed::test;
using namespace std::chrono_literals;

namespace {

}  // namespace

TEST_CASE("hostile peer: a legitimate flow from 127.0.0.2 gets CLAIM_OK and the message its ACK", "[hostile]") {
  TestLoop loop;
  FedNode alpha(loop, "alpha.test", fedkey("alpha-1"));
  LegitFlow flow{.connect = {.port = alpha.node->port(), .from = "127.0.0.2"},
                 .tls = client_tls(fedkey("beta-new")),
                 .domain = "beta.test",
                 .cpim = cpim_message("im:bob@beta.test", "im:alice@alpha.test", "hello")};
  FlowResult result;
  std::string local;
  run_on_thread(loop, [&] {
    result = connect_claim_message(flow);
    if (result.peer) local = result.peer->local_address();
  });
  INFO(to_string(result.failed_at) << ": " << result.detail);
  REQUIRE(result.ok());
  CHECK(local.starts_with("127.0.0.2:"));
  CHECK(result.connected <= result.handshaken);
  CHECK(result.handshaken <= result.claimed);
  CHECK(result.claimed <= result.acked);
  REQUIRE(alpha.delivered.size() == 1);
  CHECK(alpha.delivered[0].session.peer_address.starts_with("127.0.0.2:"));
  CHECK(alpha.audits_with("\"decision\":\"authenticated\"").size() == 1);
}

TEST_CASE("hostile peer: garbage sent byte by byte before TLS gets the connection closed", "[hostile]") {
  TestLoop loop;
  FedNode alpha(loop, "alpha.test", fedkey("alpha-1"));
  SendResult sent;
  bool closed = false;
  run_on_thread(loop, [&] {
    auto peer = HostilePeer::connect({.port = alpha.node->port(), .from = "127.0.0.3"});
    if (!peer) return;
    sent = peer->send_raw("GET / HTTP/1.0\r\n\r\n", Pacing::byte_by_byte(1ms));
    closed = peer->wait_closed(5s);
  });
  // The node gives up on the first bytes that cannot start a TLS record, so
  // the rest of the request may meet a closed connection.
  CHECK((sent.status == IoStatus::Ok || sent.status == IoStatus::Closed));
  CHECK(sent.written >= 5);
  CHECK(closed);
}

TEST_CASE("hostile peer: a silent connection is seen closed at the handshake timeout", "[hostile]") {
  TestLoop loop;
  FedNode alpha(loop, "alpha.test", fedkey("alpha-1"),
                [](NodeSettings& s) { s.limits.handshake_timeout = 300ms; });
  bool closed_early = true, closed = false;
  run_on_thread(loop, [&] {
    auto peer = HostilePeer::connect({.port = alpha.node->port()});
    if (!peer) return;
    closed_early = peer->wait_closed(0ms);
    closed = peer->wait_closed(5s);
  });
  CHECK_FALSE(closed_early);
  CHECK(closed);
}

TEST_CASE("hostile peer: TLS 1.2 and a foreign ALPN fail the handshake with OpenSSL's reason", "[hostile]") {
  TestLoop loop;
  FedNode alpha(loop, "alpha.test", fedkey("alpha-1"));
  TlsResult tls12, h2;
  run_on_thread(loop, [&] {
    if (auto peer = HostilePeer::connect({.port = alpha.node->port()})) {
      tls12 = peer->handshake({.min_version = TLS1_2_VERSION, .max_version = TLS1_2_VERSION});
    }
    if (auto peer = HostilePeer::connect({.port = alpha.node->port()})) {
      h2 = peer->handshake({.alpn = {"h2"}});
    }
  });
  CHECK_FALSE(tls12.ok);
  CHECK_THAT(tls12.error, Catch::Contains("protocol version"));
  CHECK_FALSE(tls12.server_sent_nothing);
  CHECK_FALSE(h2.ok);
  CHECK_THAT(h2.error, Catch::Contains("no application protocol"));
}

TEST_CASE("hostile peer: a claim without the domain's key is refused with ERROR ClaimRefused", "[hostile]") {
  TestLoop loop;
  FedNode alpha(loop, "alpha.test", fedkey("alpha-1"));
  auto gamma_key = client_tls(fedkey("gamma-1"));
  TlsResult tls;
  ClaimResult claim;
  bool closed = false;
  run_on_thread(loop, [&] {
    auto peer = HostilePeer::connect({.port = alpha.node->port()});
    if (!peer) return;
    tls = peer->handshake(*gamma_key);
    if (!tls) return;
    claim = peer->claim("beta.test");
    closed = peer->wait_closed(3s);
  });
  REQUIRE(tls.ok);
  CHECK(tls.version == "TLSv1.3");
  CHECK(tls.alpn == "keyfed/2");
  CHECK_FALSE(tls.server_spki.empty());
  CHECK(claim.status == ClaimStatus::Refused);
  REQUIRE(claim.error);
  CHECK(claim.error->code == ErrorCode::ClaimRefused);
  CHECK(closed);
}

TEST_CASE("hostile peer: a PING sent one TLS record per byte gets its PONG; never reading is reported", "[hostile]") {
  TestLoop loop;
  FedNode alpha(loop, "alpha.test", fedkey("alpha-1"));
  auto beta_key = client_tls(fedkey("beta-new"));
  std::string established;
  ReadResult pong;
  FloodResult flood;
  Drain after_bad_frame;
  run_on_thread(loop, [&] {
    auto peer = connect_and_claim({.port = alpha.node->port()}, *beta_key, "beta.test");
    if (!peer) {
      established = peer.error().message;
      return;
    }
    std::vector<std::uint8_t> token = {1, 2, 3};
    if (!peer->send(encode_ping(token), Pacing::byte_by_byte())) return;
    pong = peer->read_frame(3s);
    flood = peer->flood([&](std::uint64_t) { return encode_ping(token); }, 1s, 50ms);
    // A frame the node must refuse, then everything until it closes.
    std::vector<std::uint8_t> claim_again = encode_claim("beta.test");
    (void)peer->send(claim_again);
    after_bad_frame = peer->read_until_closed(5s);
  });
  INFO(established);
  REQUIRE(pong.ok());
  CHECK(pong.is(FrameType::Pong));
  CHECK(pong.frame->payload == std::vector<std::uint8_t>{1, 2, 3});
  CHECK(flood.bytes_written > 0);
  CHECK_FALSE(flood.closed);
  CHECK(after_bad_frame.closed);
  auto error = after_bad_frame.error();
  REQUIRE(error);
  CHECK(error->code == ErrorCode::ProtocolViolation);
}
