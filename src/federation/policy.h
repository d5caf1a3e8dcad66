// Who may federate with us: the decision table of docs/POLICY.md, applied to
// the outcome of the peer domain's key lookup and the key the peer presented;
// and the rule that keeps (or ends) a session when fresh answers arrive.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
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
  /// By normalized domain ("spam.example"), or "*.domain" for every name
  /// under a domain, at any depth (not the domain itself). POLICY.md §3.
  std::map<std::string, PeerOverride> overrides;
  /// How long a session may outlive the expiry of the last answer that
  /// confirmed its key while every lookup since has been temp-fail (§4).
  std::chrono::seconds max_key_staleness{900};

  bool operator==(const PolicyConfig&) const = default;
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

/// True when some peer may be admitted without a key (no-keys or insecure
/// domains accepted unauthenticated): only then may a TLS client omit its
/// certificate (docs/PROTOCOL.md §2).
bool admits_unauthenticated(const PolicyConfig& config);

/// The override for `domain`: an exact entry, else the longest "*.suffix"
/// entry that `domain` is under. POLICY.md §3.
std::optional<PeerOverride> find_override(const PolicyConfig& config, std::string_view domain);

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
/// the peer's certificate, or empty when it sent none. A `refuse` override
/// applies to the domain and to every name its answer was aliased through.
PolicyVerdict decide(const PolicyConfig& config, Direction direction, const DomainKeys& answer,
                     std::span<const std::uint8_t> peer_spki);

/// Who published an answer's keys, for budgets (docs/SECURITY.md,
/// "Budgets"): the zone that signed the KEY RRset (so every name of one zone,
/// whether a wildcard, an alias into it or explicit records, counts as one),
/// else the alias target or the wildcard, else the domain itself. One key
/// holder cannot multiply its sessions by claiming many names.
std::string key_principal(const DomainKeys& answer);

/// True for decisions where the peer proved it holds a key of the domain.
bool proved_key(Decision decision);

/// What a session was admitted on: enough to judge it again against any
/// later answer, whatever the key cache remembers in between (POLICY.md §4).
struct SessionAuthentication {
  Direction direction = Direction::Inbound;
  Decision decision = Decision::Refuse;
  std::vector<std::uint8_t> peer_spki;  ///< the key the peer presented (empty: none)
  std::optional<FederationKey> key;     ///< the published key it matched, if any
};

struct RecheckVerdict {
  bool keep = true;
  /// The answer came from the domain and still supports the session (false
  /// for temp-fail: nothing was confirmed, see max_key_staleness).
  bool confirmed = false;
  std::string reason;  ///< why the session ends, when !keep
  PolicyVerdict verdict;
};

/// POLICY.md §4: a live session stays only while every fresh answer gives
/// the decision it was admitted with, for the key it presented; a temp-fail
/// answer changes nothing (the staleness limit handles long failures).
RecheckVerdict recheck(const PolicyConfig& config, const SessionAuthentication& session, const DomainKeys& fresh);

}  // namespace keyfed
