#include "dnskey/outcome.h"

namespace keyfed {

std::string_view to_string(DnsOutcome outcome) {
  switch (outcome) {
    case DnsOutcome::Keys: return "keys";
    case DnsOutcome::Unusable: return "unusable";
    case DnsOutcome::NoKeys: return "no-keys";
    case DnsOutcome::Insecure: return "insecure";
    case DnsOutcome::Bogus: return "bogus";
    case DnsOutcome::TempFail: return "temp-fail";
  }
  return "temp-fail";
}

std::optional<DnsOutcome> dns_outcome_from_string(std::string_view word) {
  for (DnsOutcome outcome : kAllDnsOutcomes) {
    if (to_string(outcome) == word) return outcome;
  }
  return std::nullopt;
}

bool is_answer_from_domain(DnsOutcome outcome) {
  return outcome != DnsOutcome::Bogus && outcome != DnsOutcome::TempFail;
}

}  // namespace keyfed
