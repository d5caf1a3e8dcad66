// The node's configuration file (TOML), documented with a commented example
// in docs/CONFIG.md.
#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <string>
#include <vector>
#include <string_view>

#include "common/log.h"
#include "common/result.h"
#include "dnskey/key_cache.h"
#include "dnskey/resolver_config.h"
#include "federation/node.h"
#include "store/sqlite_store.h"

namespace keyfed {

inline constexpr const char* kDefaultRootTrustAnchor = "/usr/share/dns/root.key";

inline constexpr int kDefaultFederationPort = 5269;

/// A peer reached at a fixed address instead of through discovery.
struct StaticPeer {
  std::string domain;
  std::string address;
  int port = kDefaultFederationPort;
};

/// [store] (docs/STORE.md): the database file, relative to the config file.
/// Default: the config file's name with ".db" (keyfed.toml -> keyfed.db).
struct StoreSettings {
  std::filesystem::path path;
  StoreSync synchronous = StoreSync::Full;
  bool operator==(const StoreSettings&) const = default;
};

/// [control] (docs/CONTROL.md): the Unix socket local users and the CLI
/// speak to. Default: the config file's name with ".sock". Mode 0600, or
/// 0660 with `group`: the file's permissions are the access control.
struct ControlSettings {
  std::filesystem::path socket;
  std::string group;
  bool operator==(const ControlSettings&) const = default;
};

/// [delivery] (docs/STORE.md, "Delivery").
struct DeliverySettings {
  std::chrono::seconds retry_first{2};    ///< the first retry, within seconds
  std::chrono::seconds retry_max{300};    ///< backoff cap
  std::chrono::seconds lifetime{259200};  ///< given up after this (three days)
  std::chrono::seconds idle_close{300};   ///< a session opened for delivery closes after this idle
  bool operator==(const DeliverySettings&) const = default;
};

/// [policy] presence_default and inbox_default (docs/STORE.md,
/// "Authorization"): what a user's allow/deny lists say about someone they
/// do not name. Presence is private unless allowed; an inbox is open unless
/// denied.
struct AccessDefaults {
  bool presence_allow = false;
  bool inbox_allow = true;
  bool operator==(const AccessDefaults&) const = default;
};

/// The catch-all entry of `users`: any local part is a user of the domain.
inline constexpr std::string_view kAnyUser = "*";

struct NodeConfig {
  std::filesystem::path source;  ///< the file it was read from
  ResolverConfig resolver;
  KeyCacheConfig key_cache;
  LogLevel log_level = LogLevel::Info;
  // Only `keyfed run` needs these ([node], [[domains]], [policy], [limits], [[peers]]).
  std::string listen_address = "127.0.0.1";
  int listen_port = kDefaultFederationPort;
  NodeSettings federation;  ///< domains empty when the file has no [[domains]]
  std::vector<StaticPeer> peers;
  /// [[domains]] users: hosted domain -> its users' local parts ("*": any).
  std::map<std::string, std::vector<std::string>> users;
  StoreSettings store;
  ControlSettings control;
  DeliverySettings delivery;
  AccessDefaults access;
};

/// Reads and checks the whole file: TOML syntax, known keys only, value
/// types and ranges, readable zone and trust anchor files (relative paths are
/// taken from the config file's directory). Errors name the file and line.
Result<NodeConfig> load_node_config(const std::filesystem::path& path);

/// The same checks on configuration text already in memory (the fuzzer's
/// entry point). `path` names the file in errors, and relative zone, trust
/// anchor and key file names are taken from its directory; the text itself
/// is not read from it.
Result<NodeConfig> parse_node_config(std::string_view text, const std::filesystem::path& path);

/// Text whose tables and arrays could nest deeper than this is refused before
/// toml++ parses it (toml++ recurses over the tree; a real file needs ~4).
inline constexpr int kMaxConfigNesting = 128;

/// The check parse_node_config() makes before toml++ sees the text: refuses
/// nesting deeper than kMaxConfigNesting, and non-ASCII characters where
/// toml++ 3.3 has undefined behaviour (outside strings and comments, and
/// after a backslash in a """string"""). Errors name `path` and the line.
Status screen_config_text(std::string_view text, const std::filesystem::path& path);

}  // namespace keyfed
