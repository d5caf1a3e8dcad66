// Federation domain names: validation and the owner name of their keys.
#pragma once

#include <string>
#include <string_view>

#include "common/result.h"

namespace keyfed {

/// Checks that `input` is a host-style domain name (letters, digits and
/// hyphens in labels of 1 to 63 characters, at most 253 characters, an
/// optional trailing dot) and returns it lower-cased without the trailing dot.
/// The error names the offending label.
Result<std::string> normalize_domain(std::string_view input);

/// The owner name of a domain's federation KEY RRset, "_impp._tcp.<domain>."
/// (docs/KEYS.md, "Record"). `domain` must be normalized.
std::string key_owner_name(std::string_view domain);

}  // namespace keyfed
