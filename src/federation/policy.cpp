#include "federation/policy.h"

#include <algorithm>

#include <fmt/format.h>
#include <openssl/crypto.h>

namespace keyfed {
namespace {

std::optional<FederationKey> matching_key(const std::vector<FederationKey>& keys,
                                          std::span<const std::uint8_t> spki) {
  for (const FederationKey& key : keys) {
    if (key.spki_der.size() == spki.size() && CRYPTO_memcmp(key.spki_der.data(), spki.data(), spki.size()) == 0) {
      return key;
    }
  }
  return std::nullopt;
}

PolicyVerdict verdict(Decision decision, std::string reason, std::optional<FederationKey> key = std::nullopt) {
  return PolicyVerdict{decision, std::move(reason), std::move(key), false};
}

// POLICY.md §1, rows "keys" and "insecure (weak-auth)": the peer must prove it
// holds one of these keys.
PolicyVerdict require_key(const DomainKeys& answer, std::span<const std::uint8_t> peer_spki, Decision on_match,
                          std::string_view what) {
  PolicyVerdict out;
  if (peer_spki.empty()) {
    out = verdict(Decision::Refuse, fmt::format("{} publishes {} keys but the peer sent no certificate",
                                                answer.domain, what));
  } else if (auto key = matching_key(answer.keys, peer_spki)) {
    out = verdict(on_match, fmt::format("peer holds {} key {} of {}", what, key->key_tag, answer.domain), key);
  } else {
    out = verdict(Decision::Refuse, fmt::format("the peer's key is not one of the {} key(s) {} publishes",
                                                answer.keys.size(), answer.domain));
  }
  out.key_checked = true;
  return out;
}

// The domain an alias target names: "_impp._tcp.provider.test" is provider.test's key name.
std::string_view alias_domain(std::string_view name) {
  constexpr std::string_view kPrefix = "_impp._tcp.";
  if (name.starts_with(kPrefix)) name.remove_prefix(kPrefix.size());
  return name;
}

// docs/KEYS.md, "Aliases and wildcards": where the keys came from, for the reason.
std::string provenance(const DomainKeys& answer) {
  std::string out;
  if (!answer.aliases.empty()) out += fmt::format(" (via alias {})", answer.aliases.back());
  if (answer.wildcard) out += " (from a wildcard)";
  return out;
}

}  // namespace

std::string_view to_string(Decision decision) {
  switch (decision) {
    case Decision::Authenticated: return "authenticated";
    case Decision::WeaklyAuthenticated: return "weakly-authenticated";
    case Decision::Unauthenticated: return "unauthenticated";
    case Decision::Refuse: return "refuse";
    case Decision::Defer: return "defer";
  }
  return "refuse";
}

std::string_view to_string(Direction direction) {
  return direction == Direction::Inbound ? "inbound" : "outbound";
}

std::string_view to_string(InsecurePolicy policy) {
  switch (policy) {
    case InsecurePolicy::Refuse: return "refuse";
    case InsecurePolicy::Unauthenticated: return "unauthenticated";
    case InsecurePolicy::WeakAuth: return "weak-auth";
  }
  return "refuse";
}

std::optional<InsecurePolicy> insecure_policy_from_string(std::string_view word) {
  for (InsecurePolicy p : {InsecurePolicy::Refuse, InsecurePolicy::Unauthenticated, InsecurePolicy::WeakAuth}) {
    if (to_string(p) == word) return p;
  }
  return std::nullopt;
}

bool is_accepted(Decision decision) {
  return decision == Decision::Authenticated || decision == Decision::WeaklyAuthenticated ||
         decision == Decision::Unauthenticated;
}

bool proved_key(Decision decision) {
  return decision == Decision::Authenticated || decision == Decision::WeaklyAuthenticated;
}

std::string key_principal(const DomainKeys& answer) {
  if (!answer.signer.empty()) return answer.signer;
  if (!answer.aliases.empty()) return std::string(alias_domain(answer.aliases.back()));
  if (answer.wildcard && !answer.wildcard_parent.empty()) {
    return "*." + std::string(alias_domain(answer.wildcard_parent));
  }
  return answer.domain;
}

bool admits_unauthenticated(const PolicyConfig& config) {
  return config.allow_unauthenticated || config.insecure == InsecurePolicy::Unauthenticated;
}

std::optional<PeerOverride> find_override(const PolicyConfig& config, std::string_view domain) {
  if (auto it = config.overrides.find(std::string(domain)); it != config.overrides.end()) return it->second;
  // "*.suffix": the longest suffix wins, so a narrower entry can refine a wider one.
  for (std::size_t dot = domain.find('.'); dot != std::string_view::npos; dot = domain.find('.', dot + 1)) {
    std::string wildcard = fmt::format("*.{}", domain.substr(dot + 1));
    if (auto it = config.overrides.find(wildcard); it != config.overrides.end()) return it->second;
  }
  return std::nullopt;
}

PolicyVerdict decide(const PolicyConfig& config, Direction direction, const DomainKeys& answer,
                     std::span<const std::uint8_t> peer_spki) {
  std::optional<PeerOverride> override_of = find_override(config, answer.domain);
  // POLICY.md §3: an explicit refusal wins over everything, also when it
  // names a domain this one's keys are aliased to.
  if (override_of == PeerOverride::Refuse) {
    return verdict(Decision::Refuse, fmt::format("{} is refused by configuration", answer.domain));
  }
  for (const std::string& alias : answer.aliases) {
    if (find_override(config, alias_domain(alias)) == PeerOverride::Refuse) {
      return verdict(Decision::Refuse, fmt::format("{}'s keys are an alias of {}, which is refused by configuration",
                                                   answer.domain, alias));
    }
  }
  bool require_auth = override_of == PeerOverride::RequireAuth;

  switch (answer.outcome) {
    case DnsOutcome::Keys: {
      PolicyVerdict out = require_key(answer, peer_spki, Decision::Authenticated, "validated");
      out.reason += provenance(answer);
      return out;
    }

    case DnsOutcome::Bogus:
    case DnsOutcome::TempFail: {
      // Never read as "no keys": no downgrade (POLICY.md §1).
      Decision d = direction == Direction::Inbound ? Decision::Refuse : Decision::Defer;
      return verdict(d, fmt::format("key lookup for {} was {}: {}", answer.domain, to_string(answer.outcome),
                                    answer.reason));
    }

    case DnsOutcome::Unusable:
      return verdict(Decision::Refuse, fmt::format("{} publishes keys, but none is usable", answer.domain));

    case DnsOutcome::NoKeys:
      if (require_auth) {
        return verdict(Decision::Refuse,
                       fmt::format("{} must authenticate (configuration) but publishes no key", answer.domain));
      }
      if (!config.allow_unauthenticated) {
        return verdict(Decision::Refuse,
                       fmt::format("{} provably publishes no key and unauthenticated peers are not allowed",
                                   answer.domain));
      }
      return verdict(Decision::Unauthenticated, fmt::format("{} provably publishes no key", answer.domain));

    case DnsOutcome::Insecure:
      if (require_auth) {
        return verdict(Decision::Refuse,
                       fmt::format("{} must authenticate (configuration) but its keys are not validated",
                                   answer.domain));
      }
      switch (config.insecure) {
        case InsecurePolicy::Refuse:
          return verdict(Decision::Refuse, fmt::format("{} has no DNSSEC chain of trust", answer.domain));
        case InsecurePolicy::Unauthenticated:
          return verdict(Decision::Unauthenticated,
                         fmt::format("{} has no DNSSEC chain of trust; accepted unauthenticated", answer.domain));
        case InsecurePolicy::WeakAuth: {
          PolicyVerdict out = require_key(answer, peer_spki, Decision::WeaklyAuthenticated, "unvalidated");
          out.reason += provenance(answer);
          return out;
        }
      }
  }
  return verdict(Decision::Refuse, "unknown lookup outcome");
}

RecheckVerdict recheck(const PolicyConfig& config, const SessionAuthentication& session, const DomainKeys& fresh) {
  RecheckVerdict out;
  if (fresh.outcome == DnsOutcome::TempFail) {
    // Our failure to ask is not a statement by the domain (KEYS.md, "Caching").
    out.reason = fresh.reason;
    return out;
  }
  out.verdict = decide(config, session.direction, fresh, session.peer_spki);
  const PolicyVerdict& v = out.verdict;
  if (is_accepted(v.decision) && v.decision == session.decision) {
    out.confirmed = true;
    return out;
  }
  out.keep = false;
  if (session.decision == Decision::Unauthenticated && fresh.outcome == DnsOutcome::Keys) {
    out.reason = fmt::format("{} now publishes keys; the unauthenticated session must end", fresh.domain);
  } else if (session.key && v.key_checked && !fresh.keys.empty() && !is_accepted(v.decision)) {
    out.reason = fmt::format("key {} of {} is no longer published ({})", session.key->key_tag, fresh.domain,
                             to_string(fresh.outcome));
  } else if (!is_accepted(v.decision)) {
    out.reason = v.reason;
  } else {
    out.reason = fmt::format("{} would now be {} rather than {}: {}", fresh.domain, to_string(v.decision),
                             to_string(session.decision), v.reason);
  }
  return out;
}

}  // namespace keyfed
