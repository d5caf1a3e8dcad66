// message/cpim (RFC 3862): a strict reader of the message-header block.
//
// A MESSAGE frame carries a CPIM object that begins directly with the CPIM
// message headers, ends them with an empty line (CRLF CRLF) and goes on with
// the encapsulated MIME object, which stays opaque (docs/PROTOCOL.md §5.1).
// The bytes are relayed and stored verbatim: nothing here re-encodes them.
// Consumers use the parsed CpimMessage and never re-parse the text.
//
// The reader is strict so that no downstream reader, however lenient, can see
// another sender or recipient than the one this node checked: whatever RFC
// 3862 §3 does not allow, or allows in two readings, is an error. Errors are
// values naming the line and the reason; the reader is safe on any bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"

namespace keyfed {

/// The namespace of unprefixed header names (RFC 3862 §3.2, §7.2).
inline constexpr std::string_view kCpimCoreNamespace = "urn:ietf:params:cpim-headers:";
/// The IMDN header namespace (RFC 5438 §7, usually declared "NS: imdn <...>").
inline constexpr std::string_view kImdnNamespace = "urn:ietf:params:imdn";

/// A header name resolved to its namespace, e.g. {kImdnNamespace, "Message-ID"}.
struct CpimHeaderName {
  std::string_view ns_uri;
  std::string_view name;
};

/// The URI schemes of user addresses: "im:" (RFC 3860) for messages,
/// "pres:" (RFC 3859) for presence.
enum class UriScheme { Im, Pres };

/// A user address: the URI of a From, To or cc header, or of a presence frame.
struct CpimAddress {
  std::string uri;          ///< as written between '<' and '>', e.g. "im:alice@alpha.test"
  std::string formal_name;  ///< the display name, decoded (quotes and escapes removed); empty if none
  std::string user;         ///< "alice", as written (1 to 64 characters, dot-atom)
  std::string domain;       ///< "alpha.test", normalized by normalize_domain (lower case)
};

/// One header line of the block, in order, with its namespace resolved.
struct CpimHeader {
  std::size_t line = 0;  ///< 1-based line number within the header block
  std::string prefix;    ///< the Name-prefix as written; empty when unprefixed
  std::string name;      ///< the Name (after the prefix and '.')
  std::string ns_uri;    ///< kCpimCoreNamespace when unprefixed, else the NS-declared URI
  /// ";name=value" parameters in order; quoted Strings are unquoted and their
  /// escapes decoded, Tokens are as written. Names are unique (ignoring case).
  std::vector<std::pair<std::string, std::string>> params;
  std::string value;  ///< the Header-value exactly as written (escapes not decoded)
};

/// A Subject header (RFC 3862 §3.3.5).
struct CpimSubject {
  std::string lang;  ///< the ";lang=" language tag as written; empty if none
  std::string text;  ///< the value with escapes decoded
};

/// An NS declaration (RFC 3862 §3.3.7): `prefix` stands for `uri` in the
/// header names that follow it.
struct CpimNamespace {
  std::string prefix;
  std::string uri;
};

/// One header name listed by Require (RFC 3862 §3.3.11).
struct CpimRequirement {
  std::string written;  ///< as written, e.g. "MyFeatures.VitalMessageOption"
  std::string ns_uri;   ///< resolved with the NS declarations before the Require line
  std::string name;     ///< "VitalMessageOption"
};

/// A message-header block that passed every rule of parse_cpim.
struct CpimMessage {
  CpimAddress from;               ///< the one From header
  std::vector<CpimAddress> to;    ///< every To header, in order; at least one
  std::vector<CpimAddress> cc;    ///< every cc header, in order; may be empty
  std::optional<std::string> datetime;      ///< DateTime as written; a valid RFC 3339 date-time
  std::vector<CpimSubject> subjects;        ///< in order; no two with the same language
  std::vector<CpimNamespace> namespaces;    ///< NS declarations, in order
  std::vector<CpimRequirement> required;    ///< Require names, in order
  std::vector<CpimHeader> headers;          ///< every header line (core ones included), in order
  /// Bytes of the header block through its terminating empty line: the
  /// encapsulated MIME object starts at this offset of the message.
  std::size_t header_block_size = 0;

  /// The first header named `name` in namespace `ns_uri`, or nullptr. The
  /// pointer is valid as long as this message is not modified or destroyed.
  const CpimHeader* find(std::string_view ns_uri, std::string_view name) const;

  /// The encapsulated MIME object of `message`, the bytes this was parsed
  /// from: everything after the header block, never parsed here.
  std::span<const std::uint8_t> mime_object(std::span<const std::uint8_t> message) const {
    return message.subspan(header_block_size);
  }
};

/// Budgets a peer's message may use (docs/PROTOCOL.md §5.1).
struct CpimLimits {
  std::size_t max_header_block = 16 * 1024;  ///< bytes, the final CRLF CRLF included
  std::size_t max_headers = 64;              ///< header lines
  std::size_t max_recipients = 32;           ///< To and cc headers together
  std::size_t max_line = 998;                ///< bytes of one line without its CRLF (as RFC 5322 §2.1.1)
};

/// Reads the message-header block at the start of `message` (RFC 3862 §3,
/// strictly; the rules are listed in docs/PROTOCOL.md §5.1). Reads no byte
/// past the empty line that ends the block, nor past
/// `limits.max_header_block`: the result never depends on the MIME object.
/// On success the message has exactly one From, at least one To, valid
/// addresses with normalized domains, and every prefix declared. The error
/// says which line and why, e.g. "line 2: header name 'from' differs only in
/// case from 'From' (ambiguous)".
Result<CpimMessage> parse_cpim(std::span<const std::uint8_t> message, const CpimLimits& limits = {});

/// Parses a user URI `scheme:user@domain` and nothing else: the scheme in
/// lower case, a user of 1 to 64 characters from `A-Z a-z 0-9 ! $ & ' * + - =
/// _ ~ .` (no leading, trailing or double dot), exactly one '@', and a
/// host-style domain without a trailing dot. No '%' escapes, no "?headers".
/// `formal_name` of the result is empty. Safe on any bytes; the error quotes
/// the URI with non-printable bytes escaped.
Result<CpimAddress> parse_user_uri(std::string_view uri, UriScheme scheme);

/// RFC 3862 §3.3.11: fails, naming the first header listed by Require that
/// the caller does not understand. The core headers (From, To, cc, DateTime,
/// Subject, NS, Require) are always understood; anything else must be in
/// `understood` (compared exactly, namespace and name).
Status check_required(const CpimMessage& message, std::span<const CpimHeaderName> understood);

/// The IMDN headers (RFC 5438 §7) in kImdnNamespace: Message-ID,
/// Disposition-Notification, Original-To, IMDN-Record-Route, IMDN-Route.
/// Static storage; for check_required by callers that implement IMDN.
std::span<const CpimHeaderName> imdn_header_names();


}  // namespace keyfed
