// libFuzzer target: the frame reader and every payload parser
// (docs/PROTOCOL.md §3) on arbitrary bytes. Seeds: fuzz/corpus/frames.
#include <cstddef>
#include <cstdint>

#include "federation/frames.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  keyfed::FrameReader reader(4096);
  // Feed in two pieces to exercise reassembly.
  std::size_t half = size / 2;
  reader.feed({data, half});
  reader.feed({data + half, size - half});
  for (int i = 0; i < 64; ++i) {
    auto frame = reader.next();
    if (!frame || !frame->has_value()) break;
    const auto& payload = (*frame)->payload;
    (void)keyfed::parse_claim(payload);
    (void)keyfed::parse_message(payload);
    (void)keyfed::parse_ack(payload);
    (void)keyfed::parse_nack(payload);
    (void)keyfed::parse_presence(payload);
    (void)keyfed::parse_notify(payload);
    (void)keyfed::parse_unsupported(payload);
    (void)keyfed::parse_error(payload);
  }
  return 0;
}
