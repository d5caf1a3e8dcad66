#include "dnskey/key_answer.h"

#include <algorithm>

#include "common/ldns.h"
#include <unbound.h>

#include "common/c_handles.h"
#include "dnskey/domain_name.h"

namespace keyfed {
namespace {

constexpr int kRcodeNoError = 0;
constexpr int kRcodeServFail = 2;
constexpr int kRcodeNxDomain = 3;
constexpr int kRcodeRefused = 5;

std::string rcode_name(int rcode) {
  const ldns_lookup_table* entry = ldns_lookup_by_id(ldns_rcodes, rcode);
  return entry != nullptr ? entry->name : fmt::format("RCODE{}", rcode);
}

}  // namespace

LdnsRrListPtr answer_records(const ub_result& result, ldns_rr_type type) {
  ldns_pkt* raw = nullptr;
  if (result.answer_packet == nullptr || result.answer_len <= 0 ||
      ldns_wire2pkt(&raw, static_cast<const std::uint8_t*>(result.answer_packet),
                    static_cast<std::size_t>(result.answer_len)) != LDNS_STATUS_OK) {
    return LdnsRrListPtr(ldns_rr_list_new());
  }
  LdnsPktPtr packet(raw);
  return LdnsRrListPtr(ldns_pkt_rr_list_by_type(packet.get(), type, LDNS_SECTION_ANSWER));
}

DomainKeys temp_fail(const std::string& domain, std::string reason) {
  DomainKeys out;
  out.domain = domain;
  out.outcome = DnsOutcome::TempFail;
  out.reason = std::move(reason);
  return out;
}

// docs/KEYS.md, "Outcomes": bogus is decided first, so that a failed
// validation can never be read as an absence of keys.
DomainKeys classify_answer(const std::string& domain, const ub_result& result) {
  DomainKeys out;
  out.domain = domain;
  out.ttl = static_cast<std::uint32_t>(std::max(result.ttl, 0));

  if (result.bogus) {
    out.outcome = DnsOutcome::Bogus;
    out.reason = result.why_bogus != nullptr ? result.why_bogus : "DNSSEC validation failed";
    out.ttl = 0;
    return out;
  }
  if (result.rcode != kRcodeNoError && result.rcode != kRcodeNxDomain) {
    out.outcome = DnsOutcome::TempFail;
    out.ttl = 0;
    if (result.rcode == kRcodeRefused) {
      out.reason = fmt::format("REFUSED: {} is outside the zones this resolver serves",
                               key_owner_name(domain));
    } else if (result.rcode == kRcodeServFail) {
      out.reason = "SERVFAIL: no name server gave a usable answer";
    } else {
      out.reason = fmt::format("resolver answered {}", rcode_name(result.rcode));
    }
    return out;
  }

  bool denial = result.nxdomain || !result.havedata;
  if (!result.secure) {
    out.outcome = DnsOutcome::Insecure;
    if (!denial) {
      KeyRecordSet records = parse_key_records(answer_records(result, LDNS_RR_TYPE_KEY).get());
      out.keys = std::move(records.keys);
      out.skipped = std::move(records.skipped);
    }
    out.reason = fmt::format("no DNSSEC chain of trust to {}; {}", domain,
                             out.keys.empty() ? "no usable key published"
                                              : fmt::format("{} unvalidated key(s) published",
                                                            out.keys.size()));
    return out;
  }
  if (denial) {
    out.outcome = DnsOutcome::NoKeys;
    out.reason = result.nxdomain ? "NXDOMAIN proven by DNSSEC" : "NODATA proven by DNSSEC";
    return out;
  }
  KeyRecordSet records = parse_key_records(answer_records(result, LDNS_RR_TYPE_KEY).get());
  out.keys = std::move(records.keys);
  out.skipped = std::move(records.skipped);
  if (out.keys.empty()) {
    out.outcome = DnsOutcome::Unusable;
    out.reason = fmt::format("none of the {} validated KEY record(s) is usable", records.key_records);
  } else {
    out.outcome = DnsOutcome::Keys;
  }
  return out;
}

}  // namespace keyfed
