// The six outcomes of a domain key lookup (docs/KEYS.md, "Outcomes").
#pragma once

#include <array>
#include <optional>
#include <string_view>

namespace keyfed {

enum class DnsOutcome {
  Keys,      ///< secure KEY RRset with at least one usable key
  Unusable,  ///< secure KEY RRset, but no key keyfed can use
  NoKeys,    ///< DNSSEC-proven absence (secure NXDOMAIN or NODATA)
  Insecure,  ///< no chain of trust; keys, if any, are unvalidated
  Bogus,     ///< DNSSEC validation failed
  TempFail,  ///< SERVFAIL, refusal, timeout: no answer to judge
};

inline constexpr std::array<DnsOutcome, 6> kAllDnsOutcomes = {
    DnsOutcome::Keys,     DnsOutcome::Unusable, DnsOutcome::NoKeys,
    DnsOutcome::Insecure, DnsOutcome::Bogus,    DnsOutcome::TempFail};

/// The stable word used in logs, JSON and the CLI: "keys", "unusable",
/// "no-keys", "insecure", "bogus", "temp-fail".
std::string_view to_string(DnsOutcome outcome);
std::optional<DnsOutcome> dns_outcome_from_string(std::string_view word);

/// True for outcomes that are a statement by the domain (its zone answered and
/// the answer was judged), false for bogus and temp-fail.
bool is_answer_from_domain(DnsOutcome outcome);

}  // namespace keyfed
