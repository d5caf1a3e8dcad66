// libFuzzer target: KEY RDATA (docs/KEYS.md, "Record") on arbitrary bytes:
// flags (2), protocol (1), algorithm (1), then the key. Seeds: fuzz/corpus/key_record.
#include <cstddef>
#include <cstdint>

#include "dnskey/key_record.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 4) return 0;
  auto flags = static_cast<std::uint16_t>(data[0] << 8 | data[1]);
  auto key = keyfed::make_federation_key(flags, data[2], data[3], {data + 4, size - 4});
  if (key) (void)key->key_base64();
  return 0;
}
