// Minimal message/cpim (RFC 3862) reading: the headers needed for routing.
// The message bytes are relayed verbatim; this never re-encodes them.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "common/result.h"

namespace keyfed {

struct CpimAddress {
  std::string uri;     ///< e.g. "im:alice@alpha.test"
  std::string user;    ///< "alice"
  std::string domain;  ///< "alpha.test", normalized
};

struct CpimRouting {
  CpimAddress from;
  std::vector<CpimAddress> to;  ///< every To header, in order; at least one
};

/// Reads the From and To message headers (RFC 3862 section 3.3: header lines
/// up to the first empty line; an address is the URI between '<' and '>', or
/// the whole value). Errors say which header is missing or malformed.
Result<CpimRouting> parse_cpim_routing(std::span<const std::uint8_t> message);

/// Parses an "im:" or "pres:" URI of the form scheme:user@domain.
Result<CpimAddress> parse_im_uri(std::string_view uri);

}  // namespace keyfed
