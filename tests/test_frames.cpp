// Wire protocol frames (docs/PROTOCOL.md). CPIM is in test_cpim.cpp.
#include <fstream>
#include <sstream>

#include <catch2/catch.hpp>

#include "federation/frames.h"
#include "harness.h"

using namespace keyfed;

namespace {

Frame only_frame(const std::vector<std::uint8_t>& bytes) {
  FrameReader reader(kHardMaxFrameSize);
  reader.feed(bytes);
  auto frame = reader.next();
  REQUIRE(frame.ok());
  REQUIRE(frame->has_value());
  CHECK(reader.buffered() == 0);
  return **frame;
}

}  // namespace

TEST_CASE("frames have the documented layout", "[frames]") {
  // docs/PROTOCOL.md §3 hex examples.
  CHECK(to_hex(encode_claim("beta.test")) == "0100000009626574612e74657374");
  CHECK(to_hex(encode_claim_ok()) == "0200000000");
  CHECK(to_hex(encode_ack(7)) == "110000000400000007");
  CHECK(to_hex(encode_nack({7, NackCode::SenderNotPeer, "x"})) == "1200000007000000070001" "78");
  CHECK(to_hex(encode_ping(std::vector<std::uint8_t>{1, 2})) == "30000000020102");
  CHECK(to_hex(encode_unsupported(0x55)) == "3e0000000155");
  CHECK(to_hex(encode_error({ErrorCode::ClaimRefused, "no"})) == "3f0000000400036e6f");
}

TEST_CASE("every typed frame survives a round trip", "[frames]") {
  Frame m = only_frame(encode_message({42, {'h', 'i'}}));
  CHECK(m.type == static_cast<std::uint8_t>(FrameType::Message));
  auto message = parse_message(m.payload);
  REQUIRE(message.ok());
  CHECK(message->id == 42);
  CHECK(message->cpim == std::vector<std::uint8_t>{'h', 'i'});

  auto nack = parse_nack(only_frame(encode_nack({9, NackCode::RateLimited, "slow down"})).payload);
  REQUIRE(nack.ok());
  CHECK(nack->code == NackCode::RateLimited);
  CHECK(nack->text == "slow down");

  auto sub = parse_presence(only_frame(encode_presence(FrameType::Subscribe, {3, "pres:a@x.test", "pres:b@y.test"})).payload);
  REQUIRE(sub.ok());
  CHECK(sub->watcher == "pres:a@x.test");
  CHECK(sub->presentity == "pres:b@y.test");

  auto notify =
      parse_notify(only_frame(encode_notify({"pres:a@x.test", "pres:b@y.test", "<presence/>"})).payload);
  REQUIRE(notify.ok());
  CHECK(notify->watcher == "pres:a@x.test");
  CHECK(notify->presentity == "pres:b@y.test");
  CHECK(notify->document == "<presence/>");
  CHECK_FALSE(parse_notify(std::vector<std::uint8_t>{0, 1, 'x'}).ok());  // the presentity missing

  auto error = parse_error(only_frame(encode_error({ErrorCode::KeyRevoked, "gone"})).payload);
  REQUIRE(error.ok());
  CHECK(error->code == ErrorCode::KeyRevoked);
  CHECK(*parse_claim(only_frame(encode_claim("beta.test")).payload) == "beta.test");
}

TEST_CASE("the frame reader reassembles split input and refuses oversized frames early", "[frames]") {
  auto a = encode_ack(1);
  auto b = encode_message({2, std::vector<std::uint8_t>(100, 'x')});
  std::vector<std::uint8_t> stream = a;
  stream.insert(stream.end(), b.begin(), b.end());
  FrameReader reader(1024);
  std::size_t frames = 0;
  for (std::uint8_t byte : stream) {  // one byte at a time
    reader.feed({&byte, 1});
    while (true) {
      auto f = reader.next();
      REQUIRE(f.ok());
      if (!f->has_value()) break;
      ++frames;
    }
  }
  CHECK(frames == 2);

  FrameReader small(64);
  auto header_only = encode_message({1, std::vector<std::uint8_t>(65, 'x')});
  header_only.resize(kFrameHeaderSize);  // the declared length is enough to refuse
  small.feed(header_only);
  auto refused = small.next();
  REQUIRE_FALSE(refused.ok());
  CHECK_THAT(refused.error().message, Catch::Contains("exceeds the limit of 64"));
}

TEST_CASE("truncated payloads are errors, not crashes", "[frames]") {
  CHECK_FALSE(parse_ack(std::vector<std::uint8_t>{0, 0, 1}).ok());
  CHECK_FALSE(parse_ack(std::vector<std::uint8_t>{0, 0, 0, 1, 9}).ok());
  CHECK_FALSE(parse_nack(std::vector<std::uint8_t>{0, 0, 0, 1, 0}).ok());
  CHECK_FALSE(parse_presence(std::vector<std::uint8_t>{0, 0, 0, 1, 0, 9, 'a'}).ok());
  CHECK_FALSE(parse_message(std::vector<std::uint8_t>{1}).ok());
  CHECK_FALSE(parse_claim({}).ok());
  CHECK_FALSE(is_known_frame_type(0x55));
}
