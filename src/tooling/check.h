// `keyfed check`: a domain's federation publication as a peer will see it
// (docs/CLI.md, "keyfed check"). Per domain: the KEY RRset's DNS outcome,
// our own key(s) among the validated keys, the signatures' remaining
// lifetime and the TTL, then discovery and a TLS 1.3 handshake with every
// server found, whose presented key must be one the domain publishes.
//
// Each problem is a Finding of a stable class (Problem, with its word and
// exit status); a domain's status, and the command's, is the most
// fundamental of its findings (check_status_of()).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "dnskey/key_cache.h"
#include "dnskey/key_record.h"
#include "dnskey/resolver_config.h"

namespace keyfed {

/// `keyfed check`'s exit statuses: a contract with scripts, never renumbered
/// (docs/CLI.md). 3 to 6 are `lookup`'s; 1 means warnings only (for other
/// commands it is an internal error).
enum class CheckStatus : int {
  Ok = 0,                  ///< nothing found
  Warnings = 1,            ///< warnings only
  BadInput = 2,            ///< arguments, configuration, zone, trust anchor or key file, domain name
  TempFail = 3,            ///< the KEY (or SRV) lookup was temp-fail
  Insecure = 4,            ///< no DNSSEC chain of trust
  Unusable = 5,            ///< a secure KEY RRset without a usable key
  Bogus = 6,               ///< DNSSEC validation failed (KEY, SRV or a server's address)
  NoKeys = 10,             ///< no KEY RRset at all (secure NXDOMAIN or NODATA)
  KeyNotPublished = 11,    ///< our key is not among the validated keys
  NoServer = 12,           ///< discovery finds no server (SRV ".", or no address)
  ServerUnreachable = 13,  ///< a server does not accept the connection in time
  ServerWrongKey = 14,     ///< a server presents a key the domain does not publish
  ServerTlsFailed = 15,    ///< a server accepts the connection but the TLS 1.3 handshake fails
};

/// The classes of findings. Each has one stable word (to_string) and one
/// status (status_of); warnings never decide a status above 1.
enum class Problem {
  TempFail,
  Insecure,
  Unusable,
  Bogus,
  NoKeys,
  KeyNotPublished,
  NoServer,
  ServerUnreachable,
  ServerWrongKey,
  ServerTlsFailed,
  SignaturesExpiring,  ///< warning: the KEY RRset's RRSIGs expire within --warn-days
  TtlTooLow,           ///< warning: KEY TTL under the key cache's min_ttl (peers keep it longer)
  TtlTooHigh,          ///< warning: KEY TTL over max_ttl (peers re-ask sooner)
};

enum class Severity { Error, Warning };

/// "temp-fail", "insecure", "unusable", "bogus", "no-keys",
/// "key-not-published", "no-server", "server-unreachable", "server-wrong-key",
/// "server-tls-failed", "signatures-expiring", "ttl-too-low", "ttl-too-high".
std::string_view to_string(Problem problem);
/// "error" or "warning".
std::string_view to_string(Severity severity);
/// The status a finding of this class gives as an error (warnings give 1).
CheckStatus status_of(Problem problem);

struct Finding {
  Problem problem;
  Severity severity = Severity::Error;
  std::string detail;  ///< one line; text from DNS or a peer quoted with untrusted()
};

struct DomainReport {
  std::string domain;  ///< normalized
  std::vector<Finding> findings;
  std::string summary;  ///< what was checked, for the "ok" line
  CheckStatus status() const;
};

/// The most fundamental of several statuses: the DNS outcomes first (3 to 6,
/// the highest, as `lookup`), then the lowest of 10 and up, then 2, then 1, then 0.
CheckStatus most_fundamental(CheckStatus a, CheckStatus b);
/// The command's status over every domain's.
CheckStatus overall_status(const std::vector<DomainReport>& reports);

/// A key we hold for a domain, loaded as the node loads it.
struct OwnKey {
  std::filesystem::path file;
  FederationKey public_key;
};

struct CheckSettings {
  ResolverConfig resolver;
  KeyCacheConfig key_cache;  ///< its min_ttl and max_ttl judge the KEY TTL
  int default_port = 5269;   ///< discovery without SRV
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds handshake_timeout{10000};
  std::chrono::seconds warn_before{std::chrono::hours(24 * 7)};  ///< --warn-days
};

/// What `--key` or the configuration's [[domains]] give for each checked
/// domain (empty: no key check for it).
using OwnKeys = std::vector<std::vector<OwnKey>>;

/// Loads a private key file exactly as the node does (load_domain_identity:
/// permissions, format) and keeps its public key.
Result<OwnKey> load_own_key(const std::string& domain, const std::filesystem::path& file);

/// Checks every domain (normalized); `own_keys` is empty or has one entry per
/// domain. Resolution runs on a private loop with the node's resolver and
/// discovery; each server is probed with bounded blocking I/O (connect and
/// handshake deadlines), so this always ends. An Error only when the check
/// cannot start (resolver settings, TLS context).
Result<std::vector<DomainReport>> run_check(const CheckSettings& settings, const std::vector<std::string>& domains,
                                            const OwnKeys& own_keys);

/// One line per finding, "DOMAIN SEVERITY PROBLEM: detail", or "DOMAIN ok:
/// summary" for a domain without findings; each line ends with "\n".
std::string check_report_text(const std::vector<DomainReport>& reports);
/// `--json`: an array with one {domain, status, findings: [{problem,
/// severity, detail}]} per domain.
nlohmann::json check_report_json(const std::vector<DomainReport>& reports);

}  // namespace keyfed
