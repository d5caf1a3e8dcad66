// libFuzzer target: CPIM routing headers (RFC 3862) on arbitrary bytes.
// Seeds: tests/testdata/cpim.
#include <cstddef>
#include <cstdint>

#include "federation/cpim.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  (void)keyfed::parse_cpim_routing({data, size});
  return 0;
}
