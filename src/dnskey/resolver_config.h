// How a node resolves: production (recursion or forwarders, root trust
// anchor) or testbed (signed zone files loaded as libunbound auth-zones).
// docs/CONFIG.md, "[resolver]".
#pragma once

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "common/result.h"

namespace keyfed {

enum class ResolverMode { Production, Testbed };

/// A zone file and the zone it holds (the owner of its SOA).
struct ZoneFile {
  std::string origin;  ///< without trailing dot; "test" for the testbed parent
  std::filesystem::path path;

  bool operator==(const ZoneFile&) const = default;
};

struct ResolverConfig {
  ResolverMode mode = ResolverMode::Production;
  /// File of DS or DNSKEY lines (production: the root's, e.g. /usr/share/dns/root.key).
  std::filesystem::path trust_anchor;
  /// Testbed: the zones served; names outside them are refused at once.
  std::vector<ZoneFile> zones;
  /// Production: "ADDR" or "ADDR@PORT"; empty means full recursion from the root.
  std::vector<std::string> forwarders;
  /// Testbed, instead of zone files: "ADDR@PORT" of one authoritative DNS
  /// server (loopback, e.g. Knot DNS run by `keyfed testbed --dns knot`)
  /// asked every question, so each lookup crosses a real DNS server.
  std::string server;
  /// Past this, a query is cancelled and its outcome is temp-fail.
  std::chrono::milliseconds query_timeout{3000};
  /// A KEY answer with more records than this is refused unread
  /// (docs/SECURITY.md, "Budgets"; the same default as kDefaultMaxKeyRecords).
  std::size_t max_key_records = 16;
  /// Production: queries per second libunbound sends to the servers of any
  /// one zone (its `ratelimit`), so random names cannot turn the node into a
  /// flood relay against another domain's servers. 0: no limit.
  unsigned upstream_ratelimit = 100;

  bool operator==(const ResolverConfig&) const = default;
};

inline constexpr std::chrono::milliseconds kMinQueryTimeout{10};
inline constexpr std::chrono::milliseconds kMaxQueryTimeout{60000};
inline constexpr std::size_t kMaxMaxKeyRecords = 1024;

/// Parses a zone file with ldns and returns its origin; the error names the
/// file and line ("beta.zone:7: Syntax error, could not parse the RR").
Result<ZoneFile> inspect_zone_file(const std::filesystem::path& path);

/// Checks that every record of the file is a DS or DNSKEY; same error style.
Status check_trust_anchor_file(const std::filesystem::path& path);

/// Checks the whole configuration (files readable and well-formed, timeout and
/// max_key_records in range, testbed has zones) before a libunbound context is
/// built from it.
Status check_resolver_config(const ResolverConfig& config);

}  // namespace keyfed
