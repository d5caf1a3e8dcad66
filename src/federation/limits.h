// The node's limits and budgets: docs/CONFIG.md "[limits]", and the budgets
// of docs/SECURITY.md. Every resource a stranger can make the node spend has
// one here, with its default.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>

#include "common/result.h"

namespace keyfed {

struct NodeLimits {
  std::chrono::milliseconds connect_timeout{5000};     ///< per address tried
  std::chrono::milliseconds handshake_timeout{10000};  ///< TLS + claim + key lookup, after TCP connect
  std::chrono::milliseconds idle_timeout{300000};      ///< nothing received for this long: close
  std::chrono::milliseconds keepalive_interval{60000}; ///< PING when nothing was sent for this long
  std::size_t max_sessions = 1000;                     ///< every session, of every kind
  std::size_t max_frame_size = 64 * 1024;
  double message_rate = 100;   ///< messages per second per peer domain (token bucket)
  double message_burst = 200;  ///< bucket size
  std::uint64_t rekey_bytes = std::uint64_t{1} << 30;  ///< TLS KeyUpdate after this many bytes sent
  std::chrono::seconds rekey_interval{3600};           ///< ... or this long

  // Session budgets by kind (docs/SECURITY.md, "Budgets"): each kind has its
  // own, so one kind cannot crowd out another.
  std::size_t max_inbound_unauthenticated = 100;  ///< inbound sessions not authenticated yet
  std::size_t max_unauthenticated_per_source = 64;  ///< ... of them from one source address
  std::size_t max_inbound_authenticated = 800;
  std::size_t max_outbound = 100;
  /// Authenticated inbound sessions of one peer domain; names whose keys come
  /// from one wildcard or one alias target count as one (key_principal()).
  std::size_t max_sessions_per_peer_domain = 16;
  // Rates of unauthenticated work, per source address. A connection that
  // ends in a session authenticated by a key is given back; a lookup never
  // is (a peer's keys are then cached: it needs no more).
  double connection_rate_per_source = 20;   ///< new connections per second
  double connection_burst_per_source = 100;
  double lookup_rate_per_source = 10;       ///< claims that need a DNS lookup, per second
  double lookup_burst_per_source = 100;
  double lookup_rate_total = 100;           ///< ... all sources together
  double lookup_burst_total = 200;
  std::size_t max_pending_lookups = 256;    ///< claims waiting on DNS, all sources together
  std::size_t max_tracked_sources = 65536;  ///< rate-limit buckets kept at most
  // Per-session state.
  std::size_t max_subscriptions_per_session = 1000;
  std::size_t max_subscriptions = 20000;  ///< all sessions together
  std::size_t send_queue_high_water = 64 * 1024;   ///< bytes queued to a peer: stop reading from it
  std::size_t send_queue_limit = 256 * 1024;       ///< ... and close it
  std::chrono::milliseconds send_stall_timeout{30000};  ///< above high water this long: close

  bool operator==(const NodeLimits&) const = default;
};

/// Frames before the session is established are at most this long: a CLAIM
/// is a domain name, an ERROR a short reason (docs/PROTOCOL.md §3).
inline constexpr std::size_t kMaxFrameBeforeClaim = 1024;

/// Checks ranges (docs/CONFIG.md); the error names the setting.
Status check_node_limits(const NodeLimits& limits);

}  // namespace keyfed
