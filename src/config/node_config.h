// The node's configuration file (TOML), documented with a commented example
// in docs/CONFIG.md.
#pragma once

#include <filesystem>

#include "common/log.h"
#include "common/result.h"
#include "dnskey/key_cache.h"
#include "dnskey/resolver_config.h"

namespace keyfed {

inline constexpr const char* kDefaultRootTrustAnchor = "/usr/share/dns/root.key";

struct NodeConfig {
  std::filesystem::path source;  ///< the file it was read from
  ResolverConfig resolver;
  KeyCacheConfig key_cache;
  LogLevel log_level = LogLevel::Info;
};

/// Reads and checks the whole file: TOML syntax, known keys only, value
/// types and ranges, readable zone and trust anchor files (relative paths are
/// taken from the config file's directory). Errors name the file and line.
Result<NodeConfig> load_node_config(const std::filesystem::path& path);

}  // namespace keyfed
