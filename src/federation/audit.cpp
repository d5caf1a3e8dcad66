#include "federation/audit.h"

#include <nlohmann/json.hpp>

#include "common/clock.h"
#include "federation/node.h"

namespace keyfed {

std::string_view to_string(AuditEvent event) {
  switch (event) {
    case AuditEvent::Handshake: return "handshake";
    case AuditEvent::Claim: return "claim";
    case AuditEvent::Connect: return "connect";
    case AuditEvent::Revoke: return "revoke";
  }
  return "claim";
}

std::string audit_json(const SessionInfo& info, AuditEvent event, const PolicyVerdict& verdict,
                       std::optional<DnsOutcome> outcome) {
  nlohmann::json line = {{"time", utc_now_rfc3339()},
                         {"event", to_string(event)},
                         {"session", info.id},
                         {"direction", to_string(info.direction)},
                         {"peer_address", info.peer_address},
                         {"local_domain", info.local_domain},
                         {"claimed_domain", info.peer_domain},
                         {"decision", to_string(verdict.decision)},
                         {"reason", verdict.reason}};
  if (outcome) line["outcome"] = to_string(*outcome);
  if (verdict.key) {
    line["key_tag"] = verdict.key->key_tag;
    line["spki_sha256"] = verdict.key->spki_sha256;
  }
  // ASCII only, and bytes that are not UTF-8 replaced rather than thrown on:
  // the reason may quote DNS data.
  return line.dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
}

}  // namespace keyfed
