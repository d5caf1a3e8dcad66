// libFuzzer target: the strict CPIM header reader (RFC 3862) and the user URI
// parser on arbitrary bytes. Seeds: tests/testdata/cpim (accept/ and reject/).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "federation/cpim.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::span<const std::uint8_t> bytes(data, size);
  auto message = keyfed::parse_cpim(bytes);
  if (message) {
    // What the reader promises on success.
    if (message->header_block_size > bytes.size() || message->to.empty() || message->from.domain.empty()) std::abort();
    if (message->mime_object(bytes).size() != bytes.size() - message->header_block_size) std::abort();
    (void)keyfed::check_required(*message, keyfed::imdn_header_names());
  }
  std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)keyfed::parse_user_uri(text, keyfed::UriScheme::Im);
  (void)keyfed::parse_user_uri(text, keyfed::UriScheme::Pres);
  return 0;
}
