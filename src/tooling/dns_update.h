// RFC 2136 dynamic updates of KEY records, signed with TSIG (RFC 8945), built,
// signed, sent and checked with the ldns library. docs/KEYS.md, "Rolling keys".
#pragma once

#include <chrono>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace keyfed {

/// A TSIG key. The secret is never logged nor put in an error message.
struct TsigKey {
  std::string name;       ///< key name, without trailing dot ("keyfed-update")
  std::string algorithm;  ///< "hmac-sha256" (also hmac-sha1, -sha224, -sha384, -sha512, hmac-md5)
  std::string secret;     ///< base64, as in the file
};

/// Parses a TSIG key in one of two forms (docs/KEYS.md, "TSIG key files"):
///   key "NAME" { algorithm hmac-sha256; secret "BASE64"; };   (BIND, tsig-keygen, Knot's keymgr -t)
///   hmac-sha256:NAME:BASE64                                    (knsupdate -y, kdig -y)
/// Exactly one key; errors name `origin` and never quote the secret.
Result<TsigKey> parse_tsig_key(std::string_view text, const std::string& origin);

/// Reads a TSIG key file; refuses a file readable or writable by group or
/// others, a symbolic link, or anything but a regular file.
Result<TsigKey> read_tsig_file(const std::filesystem::path& file);

/// "ADDR" or "ADDR@PORT" (numeric IPv4 or IPv6; port 53 by default).
struct DnsServer {
  std::string address;
  int port = 53;
};
Result<DnsServer> parse_dns_server(std::string_view text);

/// One update of `zone`: RRs (presentation form, "owner TTL IN TYPE RDATA")
/// to add, and specific RRs to delete (RFC 2136 §2.5.4: class NONE, TTL 0;
/// other RRs of the RRset stay). Adding an RR that exists, or deleting one
/// that does not, changes nothing (RFC 2136 §3.4.2), so an update may be
/// sent again after a crash.
struct DnsUpdate {
  std::string zone;
  std::vector<std::string> add;
  std::vector<std::string> remove;
};

struct UpdateOptions {
  std::chrono::milliseconds timeout{5000};  ///< the whole exchange
  bool tcp = true;
};

/// Builds, TSIG-signs and sends the update; checks the response's ID, its
/// TSIG (an unsigned or wrongly signed answer is an error) and its RCODE
/// (named: REFUSED, NOTAUTH (TSIG refused), NOTZONE, ...). What the server
/// says is quoted with untrusted().
Status send_dns_update(const DnsServer& server, const TsigKey& key, const DnsUpdate& update,
                       const UpdateOptions& options = {});

}  // namespace keyfed
