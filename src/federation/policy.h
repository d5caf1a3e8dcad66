// Who may federate with us: the decision table of docs/POLICY.md, applied to
// the outcome of the peer domain's key lookup and the key the peer presented.
#pragma once

#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"
#include "dnskey/key_answer.h"

namespace keyfed {

enum class Direction { Inbound, Outbound };

/// What to do with a domain whose lookup is `insecure` (POLICY.md §2).
enum class InsecurePolicy {
  Refuse,           ///< default
  Unauthenticated,  ///< encrypted, marked unauthenticated
  WeakAuth,         ///< accept only a key among the unvalidated ones, marked weak
};

/// Per-peer-domain override (POLICY.md §3).
enum class PeerOverride {
  RequireAuth,  ///< only `keys` with a matching key is accepted
  Refuse,       ///< never federate with this domain
};

struct PolicyConfig {
  bool allow_unauthenticated = false;  ///< `no-keys` peers may connect unauthenticated
  InsecurePolicy insecure = InsecurePolicy::Refuse;
  std::map<std::string, PeerOverride> overrides;  ///< by normalized domain
};

enum class Decision {
  Authenticated,        ///< peer holds one of the domain's validated keys
  WeaklyAuthenticated,  ///< peer holds one of the domain's unvalidated (insecure) keys
  Unauthenticated,      ///< encrypted, but nobody vouches for the peer's domain
  Refuse,
  Defer,                ///< outbound only: try again later (bogus, temp-fail)
};

std::string_view to_string(Decision decision);
std::string_view to_string(Direction direction);
std::string_view to_string(InsecurePolicy policy);
std::optional<InsecurePolicy> insecure_policy_from_string(std::string_view word);

/// True for decisions that let a session proceed.
bool is_accepted(Decision decision);

struct PolicyVerdict {
  Decision decision = Decision::Refuse;
  std::string reason;
  std::optional<FederationKey> key;  ///< the published key the peer proved it holds
  /// The decision came from comparing the peer's key: with another key (or
  /// none) it could differ. When false, the answer alone decided, so an
  /// outbound decision can be made before connecting.
  bool key_checked = false;
};

/// Applies POLICY.md's table. `peer_spki` is the DER SubjectPublicKeyInfo of
/// the peer's certificate, or empty when it sent none.
PolicyVerdict decide(const PolicyConfig& config, Direction direction, const DomainKeys& answer,
                     std::span<const std::uint8_t> peer_spki);

}  // namespace keyfed
