#include "federation/limits.h"

#include "federation/frames.h"

namespace keyfed {

Status check_node_limits(const NodeLimits& l) {
  using std::chrono::milliseconds;
  if (l.connect_timeout < milliseconds(50) || l.connect_timeout > milliseconds(600000)) {
    return make_error("connect_timeout_ms must be within 50..600000");
  }
  if (l.handshake_timeout < milliseconds(100) || l.handshake_timeout > milliseconds(600000)) {
    return make_error("handshake_timeout_ms must be within 100..600000");
  }
  if (l.idle_timeout < milliseconds(100)) return make_error("idle_timeout_ms must be at least 100");
  if (l.keepalive_interval < milliseconds(50)) return make_error("keepalive_interval_ms must be at least 50");
  if (l.max_sessions < 1) return make_error("max_sessions must be at least 1");
  if (l.max_frame_size < 1024 || l.max_frame_size > kHardMaxFrameSize) {
    return make_error("max_frame_size must be within 1024..{}", kHardMaxFrameSize);
  }
  if (!(l.message_rate > 0) || !(l.message_burst >= 1)) {
    return make_error("message_rate must be positive and message_burst at least 1");
  }
  if (l.rekey_bytes < 4096) return make_error("rekey_bytes must be at least 4096");
  if (l.rekey_interval < std::chrono::seconds(1)) return make_error("rekey_interval must be at least 1 s");
  if (l.max_inbound_unauthenticated < 1 || l.max_unauthenticated_per_source < 1 || l.max_inbound_authenticated < 1 ||
      l.max_outbound < 1 || l.max_sessions_per_peer_domain < 1) {
    return make_error("session budgets (max_inbound_unauthenticated, max_unauthenticated_per_source, "
                      "max_inbound_authenticated, max_outbound, max_sessions_per_peer_domain) must be at least 1");
  }
  if (!(l.connection_rate_per_source > 0) || !(l.connection_burst_per_source >= 1) ||
      !(l.lookup_rate_per_source > 0) || !(l.lookup_burst_per_source >= 1) || !(l.lookup_rate_total > 0) ||
      !(l.lookup_burst_total >= 1)) {
    return make_error("per-source rates must be positive and their bursts at least 1");
  }
  if (l.max_pending_lookups < 1) return make_error("max_pending_lookups must be at least 1");
  if (l.max_tracked_sources < 16) return make_error("max_tracked_sources must be at least 16");
  if (l.max_subscriptions_per_session < 1 || l.max_subscriptions < 1) {
    return make_error("max_subscriptions_per_session and max_subscriptions must be at least 1");
  }
  if (l.send_queue_high_water < 4096 || l.send_queue_limit < l.send_queue_high_water) {
    return make_error("send_queue_high_water must be at least 4096 and send_queue_limit at least as large");
  }
  if (l.send_stall_timeout < milliseconds(100)) return make_error("send_stall_timeout_ms must be at least 100");
  return ok_status();
}

}  // namespace keyfed
