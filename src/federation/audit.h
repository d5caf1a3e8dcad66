// Audit lines: one JSON object per authentication decision (docs/POLICY.md §5).
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "dnskey/outcome.h"
#include "federation/policy.h"

namespace keyfed {

struct SessionInfo;

enum class AuditEvent {
  Handshake,  ///< refused in the TLS handshake (no client certificate), before any claim
  Claim,      ///< inbound decision on a CLAIM
  Connect,    ///< outbound decision on the responder
  Revoke,     ///< a live session ended by a fresh answer, a reload or staleness (§4)
};

std::string_view to_string(AuditEvent event);

/// The audit line's JSON object (ASCII, one line). `outcome` is absent when
/// no lookup was made (a handshake refusal, a budget refusal before lookup).
std::string audit_json(const SessionInfo& session, AuditEvent event, const PolicyVerdict& verdict,
                       std::optional<DnsOutcome> outcome);

}  // namespace keyfed
