// What DNS says about a domain's keys: one resolver answer, classified into
// exactly one DnsOutcome (docs/KEYS.md, "Outcomes").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/c_handles.h"
#include "dnskey/key_record.h"
#include "dnskey/outcome.h"

struct ub_result;

namespace keyfed {

struct DomainKeys {
  std::string domain;  ///< normalized, without the _impp._tcp prefix
  DnsOutcome outcome = DnsOutcome::TempFail;
  std::vector<FederationKey> keys;     ///< validated keys (Keys) or unvalidated ones (Insecure)
  std::vector<SkippedRecord> skipped;  ///< KEY records that were not usable
  std::uint32_t ttl = 0;               ///< TTL the resolver returned (RFC 2308 for denials)
  std::string reason;                  ///< why, for every outcome but Keys (bogus: libunbound's words)
  /// Names the answer was reached through by CNAME or DNAME, in order,
  /// lower-cased, without trailing dots (docs/KEYS.md, "Aliases and
  /// wildcards"). Empty for a direct answer.
  std::vector<std::string> aliases;
  bool wildcard = false;  ///< the KEY RRset was synthesized from a wildcard
  /// For a wildcard answer, the name the wildcard stands under ("wild.test"
  /// for *.wild.test), lower-cased; empty otherwise.
  std::string wildcard_parent;
  /// The zone whose key signed the KEY RRset (the RRSIG's signer name),
  /// lower-cased: who published these keys. Empty when unsigned.
  std::string signer;
  /// The earliest expiration (UNIX time, seconds) of the RRSIGs over the KEY
  /// RRset in the answer; 0 when the answer carries none (unsigned,
  /// denials). `keyfed check` warns ahead of it; an expired signature is
  /// already bogus.
  std::int64_t signatures_expire = 0;
};

/// How many KEY records an answer may hold before it is refused unparsed
/// (docs/SECURITY.md, "Budgets"): the cost of an answer is bounded before
/// any of it is decoded.
inline constexpr std::size_t kDefaultMaxKeyRecords = 16;

/// Classifies libunbound's answer to the KEY query for `domain`. An answer
/// with more than `max_key_records` records is `unusable` (secure) or
/// `insecure` without keys, and none of its records is decoded. Records are
/// decoded through `memo` when one is given.
DomainKeys classify_answer(const std::string& domain, const ub_result& result,
                           std::size_t max_key_records = kDefaultMaxKeyRecords, KeyRecordMemo* memo = nullptr);

/// The answer-section records of one type in libunbound's answer packet
/// (empty if there is none or it does not parse).
LdnsRrListPtr answer_records(const ub_result& result, ldns_rr_type type);

/// A TempFail answer with the given reason (timeouts, resolver errors).
DomainKeys temp_fail(const std::string& domain, std::string reason);

}  // namespace keyfed
