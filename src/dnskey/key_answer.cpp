#include "dnskey/key_answer.h"

#include <algorithm>
#include <cctype>

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

LdnsPktPtr parse_packet(const ub_result& result) {
  ldns_pkt* raw = nullptr;
  if (result.answer_packet == nullptr || result.answer_len <= 0 ||
      ldns_wire2pkt(&raw, static_cast<const std::uint8_t*>(result.answer_packet),
                    static_cast<std::size_t>(result.answer_len)) != LDNS_STATUS_OK) {
    return nullptr;
  }
  return LdnsPktPtr(raw);
}

LdnsRrListPtr records_of(const ldns_pkt* packet, ldns_rr_type type) {
  if (packet == nullptr) return LdnsRrListPtr(ldns_rr_list_new());
  LdnsRrListPtr list(ldns_pkt_rr_list_by_type(packet, type, LDNS_SECTION_ANSWER));
  return list ? std::move(list) : LdnsRrListPtr(ldns_rr_list_new());
}

// A name as keyfed compares names: lower-cased (DNS names are not
// case-sensitive: an alias written _impp._tcp.GAMMA.test is gamma.test's),
// without the trailing dot.
std::string name_text(const ldns_rdf* name) {
  MallocString text(ldns_rdf2str(name));
  std::string out = text ? text.get() : "";
  if (out.size() > 1 && out.back() == '.') out.pop_back();
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// docs/KEYS.md, "Aliases and wildcards": the names a CNAME or DNAME chain
// led through, and whether the KEY RRset's signature says it was expanded
// from a wildcard (RFC 4035 section 5.3.4: fewer labels than the owner).
void read_aliases(const ldns_pkt* packet, DomainKeys& out) {
  for (ldns_rr_type type : {LDNS_RR_TYPE_CNAME, LDNS_RR_TYPE_DNAME}) {
    LdnsRrListPtr list = records_of(packet, type);
    for (std::size_t i = 0; i < ldns_rr_list_rr_count(list.get()); ++i) {
      const ldns_rr* rr = ldns_rr_list_rr(list.get(), i);
      if (ldns_rr_rd_count(rr) == 1) out.aliases.push_back(name_text(ldns_rr_rdf(rr, 0)));
    }
  }
  LdnsRrListPtr sigs = records_of(packet, LDNS_RR_TYPE_RRSIG);
  for (std::size_t i = 0; i < ldns_rr_list_rr_count(sigs.get()); ++i) {
    const ldns_rr* rr = ldns_rr_list_rr(sigs.get(), i);
    if (ldns_rr_rd_count(rr) < 8 || ldns_rdf2rr_type(ldns_rr_rrsig_typecovered(rr)) != LDNS_RR_TYPE_KEY) continue;
    out.signer = name_text(ldns_rr_rrsig_signame(rr));
    // RFC 4034 section 3.1.5: 32-bit seconds since the epoch (serial
    // arithmetic past 2106 is not needed for signatures of this century).
    auto expiration = static_cast<std::int64_t>(ldns_rdf2native_int32(ldns_rr_rrsig_expiration(rr)));
    if (out.signatures_expire == 0 || expiration < out.signatures_expire) out.signatures_expire = expiration;
    std::uint8_t labels = ldns_rdf2native_int8(ldns_rr_rrsig_labels(rr));
    std::uint8_t owner_labels = ldns_dname_label_count(ldns_rr_owner(rr));
    if (labels >= owner_labels) continue;
    out.wildcard = true;
    // The wildcard stands under the owner's last `labels` labels.
    std::string owner = name_text(ldns_rr_owner(rr));
    std::size_t at = owner.size();
    for (std::uint8_t n = 0; n < labels && at != std::string::npos; ++n) {
      at = at == 0 ? std::string::npos : owner.rfind('.', at - 1);
    }
    out.wildcard_parent = at == std::string::npos ? owner : owner.substr(at + 1);
  }
}

// The number of records in the answer's final RRset, as libunbound already
// holds them: counted without decoding anything.
std::size_t record_count(const ub_result& result) {
  std::size_t n = 0;
  if (result.data != nullptr) {
    while (result.data[n] != nullptr) ++n;
  }
  return n;
}

}  // namespace

LdnsRrListPtr answer_records(const ub_result& result, ldns_rr_type type) {
  LdnsPktPtr packet = parse_packet(result);
  return records_of(packet.get(), type);
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
DomainKeys classify_answer(const std::string& domain, const ub_result& result, std::size_t max_key_records,
                           KeyRecordMemo* memo) {
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
  // docs/SECURITY.md, "Budgets": an answer's cost is bounded before decoding it.
  std::size_t count = denial ? 0 : record_count(result);
  bool too_many = count > max_key_records;
  std::string too_many_reason =
      fmt::format("{} publishes {} KEY records, more than max_key_records ({}); none was read", domain, count,
                  max_key_records);
  LdnsPktPtr packet = denial || too_many ? nullptr : parse_packet(result);
  if (packet) read_aliases(packet.get(), out);

  if (!result.secure) {
    out.outcome = DnsOutcome::Insecure;
    if (packet) {
      KeyRecordSet records = parse_key_records(records_of(packet.get(), LDNS_RR_TYPE_KEY).get(), memo);
      out.keys = std::move(records.keys);
      out.skipped = std::move(records.skipped);
    }
    out.reason = fmt::format("no DNSSEC chain of trust to {}; {}", domain,
                             too_many           ? too_many_reason
                             : out.keys.empty() ? "no usable key published"
                                                : fmt::format("{} unvalidated key(s) published",
                                                              out.keys.size()));
    return out;
  }
  if (denial) {
    out.outcome = DnsOutcome::NoKeys;
    out.reason = result.nxdomain ? "NXDOMAIN proven by DNSSEC" : "NODATA proven by DNSSEC";
    return out;
  }
  if (too_many) {
    out.outcome = DnsOutcome::Unusable;
    out.reason = std::move(too_many_reason);
    return out;
  }
  KeyRecordSet records = parse_key_records(records_of(packet.get(), LDNS_RR_TYPE_KEY).get(), memo);
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
