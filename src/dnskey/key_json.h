// The JSON form of a cached key answer, as `keyfed lookup --json` and
// `keyfed keys --json` print it (docs/CLI.md): one shape for both.
#pragma once

#include <nlohmann/json.hpp>

#include "dnskey/key_cache.h"

namespace keyfed {

/// domain, outcome, keys (algorithm, algorithm_name, key_tag, key,
/// spki_sha256), ttl, expires_in, skipped, aliases, wildcard, and reason
/// when there is one.
nlohmann::json key_answer_json(const CachedKeys& entry, TimePoint now);

}  // namespace keyfed
