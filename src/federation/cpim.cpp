// The strict CPIM header reader (RFC 3862 §3; docs/PROTOCOL.md §5.1).
//
// Two passes over the header block. The first (scan_block) finds the empty
// line that ends it and checks every byte: CRLF line ends only, no control
// characters, valid UTF-8, the size limits. The second (HeaderReader) reads
// each line with the RFC 3862 grammar, in order, since an NS declaration only
// applies to the lines after it.
#include "federation/cpim.h"

#include <algorithm>
#include <array>

#include "dnskey/domain_name.h"

namespace keyfed {
namespace {

// RFC 3862 §3.3: the core header names, case-sensitive.
constexpr std::array<std::string_view, 7> kCoreNames = {"From", "To", "cc", "DateTime", "Subject", "NS", "Require"};

// RFC 5438 §7.
constexpr std::array<CpimHeaderName, 5> kImdnNames = {{
    {kImdnNamespace, "Message-ID"},
    {kImdnNamespace, "Disposition-Notification"},
    {kImdnNamespace, "Original-To"},
    {kImdnNamespace, "IMDN-Record-Route"},
    {kImdnNamespace, "IMDN-Route"},
}};

constexpr std::size_t kMaxUserLength = 64;

bool is_alpha(unsigned char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
bool is_hex(unsigned char c) { return is_digit(c) || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f'); }
char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return lower(x) == lower(y); });
}

// RFC 3862 §3.1: NAMECHAR = %x21 / %x23-27 / %x2a-2b / %x2d / %x5e-60 / %x7c / %x7e / ALPHA / DIGIT
bool is_namechar(char ch) {
  auto c = static_cast<unsigned char>(ch);
  return c == 0x21 || (c >= 0x23 && c <= 0x27) || c == 0x2a || c == 0x2b || c == 0x2d || (c >= 0x5e && c <= 0x60) ||
         c == 0x7c || c == 0x7e || is_alpha(c) || is_digit(c);
}

// TOKENCHAR = NAMECHAR / "." / UCS-high. The block is valid UTF-8 by then,
// so every byte >= 0x80 belongs to a UCS-high character.
bool is_tokenchar(char ch) { return is_namechar(ch) || ch == '.' || static_cast<unsigned char>(ch) >= 0x80; }

// The user part of an address: docs/PROTOCOL.md §5.1 (a subset of RFC 5322 atext).
bool is_user_char(char ch) {
  auto c = static_cast<unsigned char>(ch);
  return is_alpha(c) || is_digit(c) || std::string_view("!$&'*+-=_~.").find(ch) != std::string_view::npos;
}

// RFC 3986 §2: the characters a URI may hold (reserved, unreserved, '%').
bool is_uri_char(char ch) {
  auto c = static_cast<unsigned char>(ch);
  return is_alpha(c) || is_digit(c) || std::string_view("-._~:/?#[]@!$&'()*+,;=%").find(ch) != std::string_view::npos;
}

const char* control_name(char32_t cp) {
  switch (cp) {
    case 0x00: return " (NUL)";
    case 0x09: return " (TAB)";
    case 0x0a: return " (LF)";
    case 0x0d: return " (CR)";
    case 0x1b: return " (ESC)";
    case 0x7f: return " (DEL)";
    case 0x85: return " (NEL)";
    default: return "";
  }
}

// Control characters in the C0 and C1 sets and DEL, plus the Unicode line and
// paragraph separators that some readers take for line breaks.
bool is_forbidden_char(char32_t cp) { return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || cp == 0x2028 || cp == 0x2029; }

std::string describe_char(char32_t cp) {
  if (cp >= 0x21 && cp < 0x7f) return fmt::format("'{}'", static_cast<char>(cp));
  if (cp == 0x20) return "a space";
  const char* kind = "";
  if (cp == 0x2028 || cp == 0x2029) {
    kind = "line separator ";
  } else if (is_forbidden_char(cp)) {
    kind = "control character ";
  }
  return fmt::format("{}U+{:04X}{}", kind, static_cast<std::uint32_t>(cp), control_name(cp));
}

// One byte of text that may hold anything, for messages.
std::string describe_byte(char ch) {
  auto c = static_cast<unsigned char>(ch);
  return c < 0x80 ? describe_char(c) : fmt::format("the byte 0x{:02x}", c);
}

// For error messages about text that may hold anything (presence frames):
// printable ASCII as is, other bytes as \xHH, at most 100 bytes.
std::string printable(std::string_view s) {
  constexpr std::size_t kMax = 100;
  std::string out;
  for (std::size_t i = 0; i < s.size() && i < kMax; ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  if (s.size() > kMax) out += "...";
  return out;
}

// One UTF-8 character (RFC 3629 §4) at the start of `s`: its length and code
// point, or length 0 when it is not well-formed (truncated, overlong, a
// surrogate, above U+10FFFF, a stray continuation byte).
struct Utf8Char {
  std::size_t length = 0;
  char32_t cp = 0;
};

Utf8Char decode_utf8(std::span<const std::uint8_t> s) {
  if (s.empty()) return {};
  std::uint8_t lead = s[0];
  if (lead < 0x80) return {1, lead};
  std::size_t length = 0;
  char32_t cp = 0;
  char32_t min = 0;
  if (lead >= 0xc2 && lead <= 0xdf) {
    length = 2, cp = lead & 0x1fu, min = 0x80;
  } else if (lead >= 0xe0 && lead <= 0xef) {
    length = 3, cp = lead & 0x0fu, min = 0x800;
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    length = 4, cp = lead & 0x07u, min = 0x10000;
  } else {
    return {};
  }
  if (s.size() < length) return {};
  for (std::size_t i = 1; i < length; ++i) {
    if ((s[i] & 0xc0u) != 0x80u) return {};
    cp = (cp << 6) | (s[i] & 0x3fu);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return {};
  return {length, cp};
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xc0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xe0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else {
    out.push_back(static_cast<char>(0xf0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3f)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  }
}

// ---------------------------------------------------------------------------
// Pass 1: the block's bytes.

struct Block {
  std::vector<std::string_view> lines;  // without their CRLF
  std::size_t size = 0;                 // through the empty line
};

Result<Block> scan_block(std::span<const std::uint8_t> message, const CpimLimits& limits) {
  const std::size_t end = std::min(message.size(), limits.max_header_block);
  const char* text = reinterpret_cast<const char*>(message.data());
  Block block;
  std::size_t line_start = 0;
  std::size_t i = 0;
  auto where = [&] { return fmt::format("line {}, column {}", block.lines.size() + 1, i - line_start + 1); };
  while (i < end) {
    std::uint8_t b = message[i];
    if (b == '\r') {
      if (i + 1 == end && end < message.size()) break;  // the LF would be past the limit
      if (i + 1 == end || message[i + 1] != '\n') {
        return make_error("{}: bare CR (every line must end with CRLF)", where());
      }
      if (i - line_start > limits.max_line) {
        return make_error("line {} is longer than {} bytes", block.lines.size() + 1, limits.max_line);
      }
      if (i == line_start) {
        block.size = i + 2;
        return block;
      }
      if (block.lines.size() == limits.max_headers) {
        return make_error("line {}: more than {} header lines", block.lines.size() + 1, limits.max_headers);
      }
      block.lines.emplace_back(text + line_start, i - line_start);
      i += 2;
      line_start = i;
      continue;
    }
    if (b == '\n') return make_error("{}: bare LF (every line must end with CRLF)", where());
    if (i - line_start >= limits.max_line) {
      return make_error("line {} is longer than {} bytes", block.lines.size() + 1, limits.max_line);
    }
    Utf8Char c = decode_utf8(message.subspan(i, end - i));
    if (c.length == 0) {
      if (end < message.size() && end - i < 4) break;  // cut by the limit
      return make_error("{}: invalid UTF-8 (byte 0x{:02x})", where(), b);
    }
    if (is_forbidden_char(c.cp)) return make_error("{}: {} is not allowed", where(), describe_char(c.cp));
    i += c.length;
  }
  if (message.size() > limits.max_header_block) {
    return make_error("the header block is longer than {} bytes (no empty line within them)", limits.max_header_block);
  }
  return make_error("the message headers do not end with an empty line (CRLF CRLF)");
}

// ---------------------------------------------------------------------------
// Pass 2: the grammar, line by line.

// A read position in one line.
struct Cursor {
  std::string_view s;
  std::size_t pos = 0;

  bool done() const { return pos >= s.size(); }
  char peek() const { return done() ? '\0' : s[pos]; }
  bool eat(char c) {
    if (done() || s[pos] != c) return false;
    ++pos;
    return true;
  }
  template <typename Pred>
  std::string_view take_while(Pred pred) {
    std::size_t start = pos;
    while (!done() && pred(s[pos])) ++pos;
    return s.substr(start, pos - start);
  }
  std::string_view rest() const { return s.substr(std::min(pos, s.size())); }
};

// The character at the cursor, for messages (the line is valid UTF-8).
std::string describe_at(const Cursor& c) {
  if (c.done()) return "the end of the line";
  Utf8Char u = decode_utf8({reinterpret_cast<const std::uint8_t*>(c.s.data()) + c.pos, c.s.size() - c.pos});
  return describe_char(u.length == 0 ? static_cast<unsigned char>(c.peek()) : u.cp);
}

// RFC 3862 §3.1 Escape: "\" followed by u 4HEXDIG, b, t, n, r, DQUOTE, "'" or
// "\". The cursor is on the backslash. Escapes that stand for a control
// character (\b \t \n \r, \u0000-\u001F, \u007F-\u009F), a line separator
// or a surrogate are refused: they would bring back what the block may not
// hold.
Status decode_escape(Cursor& c, std::string& out) {
  ++c.pos;  // '\'
  char e = c.peek();
  if (c.done()) return make_error("a '\\' ends the value (it must start an escape)");
  std::string what = describe_at(c);
  ++c.pos;
  switch (e) {
    case '"': out.push_back('"'); return ok_status();
    case '\'': out.push_back('\''); return ok_status();
    case '\\': out.push_back('\\'); return ok_status();
    case 'b':
    case 't':
    case 'n':
    case 'r': return make_error("the escape '\\{}' stands for a control character", e);
    case 'u': {
      std::string_view hex = c.s.substr(c.pos, 4);
      auto hex_digit = [](char h) { return is_hex(static_cast<unsigned char>(h)); };
      if (hex.size() != 4 || !std::all_of(hex.begin(), hex.end(), hex_digit)) {
        return make_error("the escape '\\u' needs four hexadecimal digits");
      }
      c.pos += 4;
      char32_t cp = 0;
      for (char h : hex) {
        cp = cp * 16 + static_cast<char32_t>(is_digit(static_cast<unsigned char>(h)) ? h - '0' : lower(h) - 'a' + 10);
      }
      if (cp >= 0xd800 && cp <= 0xdfff) return make_error("the escape '\\u{}' is a surrogate", hex);
      if (is_forbidden_char(cp)) return make_error("the escape '\\u{}' stands for {}", hex, describe_char(cp));
      append_utf8(out, cp);
      return ok_status();
    }
    default: return make_error("'\\' before {} is not an escape (a '\\' must start one of \\uXXXX \\\" \\' \\\\)", what);
  }
}

// A Header-value (*HEADERCHAR) with its escapes decoded; every '\' must start
// a valid escape.
Result<std::string> decode_value(std::string_view value) {
  Cursor c{value};
  std::string out;
  while (!c.done()) {
    if (c.peek() == '\\') {
      if (Status s = decode_escape(c, out); !s) return s.error();
    } else {
      out.push_back(c.s[c.pos++]);
    }
  }
  return out;
}

// String = DQUOTE *( Str-char / Escape ) DQUOTE; the cursor is on the first
// DQUOTE. Str-char is everything but DQUOTE and '\' once controls are out.
Result<std::string> read_string(Cursor& c) {
  ++c.pos;
  std::string out;
  while (true) {
    if (c.done()) return make_error("a quoted string has no closing '\"'");
    char ch = c.peek();
    if (ch == '"') {
      ++c.pos;
      return out;
    }
    if (ch == '\\') {
      if (Status s = decode_escape(c, out); !s) return s.error();
    } else {
      out.push_back(ch);
      ++c.pos;
    }
  }
}

// RFC 5646 language tags, checked for their shape only: subtags of 1 to 8
// letters or digits joined by '-', the first of letters.
bool is_language_tag(std::string_view tag) {
  std::size_t start = 0;
  bool first = true;
  while (true) {
    std::size_t dash = std::min(tag.find('-', start), tag.size());
    std::string_view sub = tag.substr(start, dash - start);
    if (sub.empty() || sub.size() > 8) return false;
    for (char ch : sub) {
      auto u = static_cast<unsigned char>(ch);
      if (!is_alpha(u) && (first || !is_digit(u))) return false;
    }
    if (dash == tag.size()) return true;
    start = dash + 1;
    first = false;
  }
}

// RFC 3339 §5.6 date-time, with the ranges of §5.7 (leap years, a leap
// second only as :60 after minute 59). The error says what is wrong.
Status check_datetime(std::string_view s) {
  std::size_t pos = 0;
  auto number = [&](std::size_t digits, int& out) {
    if (s.size() - pos < digits) return false;
    out = 0;
    for (std::size_t k = 0; k < digits; ++k) {
      auto c = static_cast<unsigned char>(s[pos + k]);
      if (!is_digit(c)) return false;
      out = out * 10 + (c - '0');
    }
    pos += digits;
    return true;
  };
  auto literal = [&](std::string_view options) {
    if (pos >= s.size() || options.find(s[pos]) == std::string_view::npos) return false;
    ++pos;
    return true;
  };
  int year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0;
  if (!number(4, year) || !literal("-") || !number(2, month) || !literal("-") || !number(2, day) || !literal("Tt") ||
      !number(2, hour) || !literal(":") || !number(2, minute) || !literal(":") || !number(2, second)) {
    return make_error("is not of the form YYYY-MM-DDTHH:MM:SS");
  }
  if (literal(".")) {
    std::size_t digits_start = pos;
    while (pos < s.size() && is_digit(static_cast<unsigned char>(s[pos]))) ++pos;
    if (pos == digits_start) return make_error("has a '.' without digits after it");
  }
  if (!literal("Zz")) {
    int offset_hour = 0, offset_minute = 0;
    if (!literal("+-") || !number(2, offset_hour) || !literal(":") || !number(2, offset_minute)) {
      return make_error("has no time offset (Z or +HH:MM or -HH:MM)");
    }
    if (offset_hour > 23 || offset_minute > 59) return make_error("has an offset out of range");
  }
  if (pos != s.size()) return make_error("has text after the time offset");
  bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
  constexpr std::array<int, 12> kDays = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (month < 1 || month > 12) return make_error("has month {}", month);
  int days = kDays[static_cast<std::size_t>(month - 1)] + (month == 2 && leap ? 1 : 0);
  if (day < 1 || day > days) return make_error("has day {} in a month of {} days", day, days);
  if (hour > 23) return make_error("has hour {}", hour);
  if (minute > 59) return make_error("has minute {}", minute);
  if (second > 60 || (second == 60 && minute != 59)) return make_error("has second {}", second);
  return ok_status();
}

bool is_core_name(std::string_view name) {
  return std::find(kCoreNames.begin(), kCoreNames.end(), name) != kCoreNames.end();
}

// The well-known name `name` differs from in case only, if any ("from" ->
// "From"): a lenient reader would take the header for that one.
std::optional<std::string_view> case_variant_of(std::string_view ns_uri, std::string_view name) {
  if (ns_uri == kCpimCoreNamespace) {
    for (std::string_view core : kCoreNames) {
      if (name != core && iequals(name, core)) return core;
    }
  } else if (ns_uri == kImdnNamespace) {
    for (const CpimHeaderName& imdn : kImdnNames) {
      if (name != imdn.name && iequals(name, imdn.name)) return imdn.name;
    }
  }
  return std::nullopt;
}

class HeaderReader {
 public:
  explicit HeaderReader(const CpimLimits& limits) : limits_(limits) {}

  Status read_line(std::size_t number, std::string_view text);
  Result<CpimMessage> finish(std::size_t block_size);

 private:
  struct Name {
    std::string_view prefix;
    std::string_view name;
    std::string ns_uri;
  };

  Result<Name> read_name(Cursor& c) const;
  Result<std::string> resolve(std::string_view prefix) const;
  Status read_param(Cursor& c, CpimHeader& header) const;
  Result<CpimAddress> read_address(std::string_view value) const;
  Status read_subject(const CpimHeader& header);
  Status read_ns(std::string_view value);
  Status read_require(std::string_view value);

  const CpimLimits& limits_;
  CpimMessage message_;
  bool have_from_ = false;
  std::size_t datetime_line_ = 0;
  std::size_t require_line_ = 0;
};

// Header-name = [ Name-prefix "." ] Name, resolved to its namespace.
Result<HeaderReader::Name> HeaderReader::read_name(Cursor& c) const {
  Name n;
  n.name = c.take_while(is_namechar);
  if (n.name.empty()) {
    if (c.peek() == ' ') return make_error("starts with a space (folded or continued lines are not allowed)");
    return make_error("starts with {}, not a header name", describe_at(c));
  }
  if (c.eat('.')) {
    n.prefix = n.name;
    n.name = c.take_while(is_namechar);
    if (n.name.empty()) return make_error("header name '{}.' has nothing after the '.'", n.prefix);
    if (c.peek() == '.') return make_error("header name '{}.{}.' has more than one '.'", n.prefix, n.name);
  }
  if (n.prefix.empty()) {
    n.ns_uri = std::string(kCpimCoreNamespace);
  } else {
    Result<std::string> uri = resolve(n.prefix);
    if (!uri) return uri.error();
    n.ns_uri = std::move(uri).value();
  }
  if (!n.prefix.empty()) {
    for (std::string_view core : kCoreNames) {
      if (iequals(n.name, core)) {
        return make_error("header name '{}.{}' gives a prefix to the name of the core header {} (ambiguous for "
                          "readers that ignore prefixes)",
                          n.prefix, n.name, core);
      }
    }
  }
  if (auto known = case_variant_of(n.ns_uri, n.name)) {
    return make_error("header name '{}' differs only in case from '{}' (ambiguous)", n.name, *known);
  }
  return n;
}

// RFC 3862 §3.2: a prefix stands for the URI of the NS header that declared
// it; only declarations above the current line count.
Result<std::string> HeaderReader::resolve(std::string_view prefix) const {
  for (const CpimNamespace& ns : message_.namespaces) {
    if (ns.prefix == prefix) return ns.uri;
  }
  for (const CpimNamespace& ns : message_.namespaces) {
    if (iequals(ns.prefix, prefix)) {
      return make_error("prefix '{}' is not declared ('{}' is, and prefixes are case-sensitive)", prefix, ns.prefix);
    }
  }
  return make_error("prefix '{}' is not declared by an NS header above this line", prefix);
}

// Parameter = Param-name "=" ( Token / Number / String ); Lang-param is the
// "lang" one, whose value must look like a language tag.
Status HeaderReader::read_param(Cursor& c, CpimHeader& header) const {
  std::string_view name = c.take_while(is_namechar);
  if (name.empty()) return make_error("a parameter name must follow ';' (found {})", describe_at(c));
  if (!c.eat('=')) return make_error("parameter '{}' has no '=' (found {})", name, describe_at(c));
  std::string value;
  if (c.peek() == '"') {
    if (name == "lang") return make_error("the lang parameter is a language tag, not a quoted string");
    Result<std::string> s = read_string(c);
    if (!s) return make_error("parameter '{}': {}", name, s.error().message);
    value = std::move(s).value();
  } else {
    value = std::string(c.take_while(is_tokenchar));
    if (value.empty()) return make_error("parameter '{}' has no value (found {})", name, describe_at(c));
  }
  if (name != "lang" && iequals(name, "lang")) {
    return make_error("parameter name '{}' differs only in case from 'lang' (ambiguous)", name);
  }
  if (name == "lang" && !is_language_tag(value)) return make_error("'{}' is not a language tag", value);
  for (const auto& [other, unused] : header.params) {
    if (iequals(other, name)) return make_error("parameter '{}' is given twice", name);
  }
  header.params.emplace_back(std::string(name), std::move(value));
  return ok_status();
}

// From, To, cc (RFC 3862 §3.3.1-3): [ Formal-name ] "<" URI ">" and nothing
// else, Formal-name = 1*( Token SP ) / String. One space between a String and
// '<' is accepted too; '<' and '>' may not appear in the formal name.
Result<CpimAddress> HeaderReader::read_address(std::string_view value) const {
  if (value.find('<') == std::string_view::npos) {
    return make_error("'{}' is not an address: write [Formal-name] <URI>", value);
  }
  Cursor c{value};
  std::string formal_name;
  if (c.peek() == '"') {
    Result<std::string> s = read_string(c);
    if (!s) return make_error("formal name: {}", s.error().message);
    formal_name = std::move(s).value();
    if (formal_name.find_first_of("<>") != std::string::npos) {
      return make_error("the formal name holds '<' or '>' (ambiguous)");
    }
    c.eat(' ');
  } else {
    while (c.peek() != '<') {
      std::string_view token = c.take_while(is_tokenchar);
      if (token.empty()) return make_error("the formal name has {} (only Tokens or one quoted String)", describe_at(c));
      if (c.peek() == '<') return make_error("the formal name must be followed by one space before '<'");
      if (!c.eat(' ')) return make_error("the formal name has {} (only Tokens or one quoted String)", describe_at(c));
      if (c.peek() == ' ') return make_error("the formal name has two spaces in a row");
      if (!formal_name.empty()) formal_name.push_back(' ');
      formal_name += token;
    }
  }
  if (!c.eat('<')) return make_error("expected '<' after the formal name, found {}", describe_at(c));
  std::size_t close = value.find('>', c.pos);
  if (close == std::string_view::npos) return make_error("the '<' has no matching '>'");
  std::string_view uri = value.substr(c.pos, close - c.pos);
  if (close + 1 != value.size()) {
    return make_error("text after '<{}>': '{}' (exactly one <URI> per header)", uri, value.substr(close + 1));
  }
  Result<CpimAddress> address = parse_user_uri(uri, UriScheme::Im);
  if (!address) return address.error();
  address->formal_name = std::move(formal_name);
  return address;
}

// Subject (RFC 3862 §3.3.5): an optional ";lang=" and no other parameter;
// several Subjects only in different languages.
Status HeaderReader::read_subject(const CpimHeader& header) {
  CpimSubject subject;
  for (const auto& [name, value] : header.params) {
    if (name != "lang") return make_error("Subject takes no parameter but lang (found '{}')", name);
    subject.lang = value;
  }
  for (const CpimSubject& other : message_.subjects) {
    if (iequals(other.lang, subject.lang)) {
      return subject.lang.empty() ? make_error("a second Subject without a language")
                                  : make_error("a second Subject in language '{}'", subject.lang);
    }
  }
  Result<std::string> text = decode_value(header.value);
  if (!text) return make_error("Subject: {}", text.error().message);
  subject.text = std::move(text).value();
  message_.subjects.push_back(std::move(subject));
  return ok_status();
}

// NS (RFC 3862 §3.3.7): [ Name-prefix SP ] "<" URI ">". Declarations that
// would let one header be written two ways are refused: a prefix for the core
// namespace, a prefix declared twice (also in another case), two prefixes for
// one URI, and an unprefixed NS that changes the default namespace.
Status HeaderReader::read_ns(std::string_view value) {
  Cursor c{value};
  std::string_view prefix = c.take_while(is_namechar);
  if (!prefix.empty() && !c.eat(' ')) return make_error("NS: the prefix '{}' must be followed by one space", prefix);
  if (!c.eat('<')) return make_error("NS: expected [prefix SP] <URI>, found {}", describe_at(c));
  std::size_t close = value.find('>', c.pos);
  if (close == std::string_view::npos || close + 1 != value.size()) {
    return make_error("NS: the value must end with the '>' closing the URI");
  }
  std::string_view uri = value.substr(c.pos, close - c.pos);
  std::size_t colon = uri.find(':');
  bool scheme_ok = colon != std::string_view::npos && colon > 0 && is_alpha(static_cast<unsigned char>(uri[0])) &&
                   std::all_of(uri.begin(), uri.begin() + static_cast<std::ptrdiff_t>(colon), [](char ch) {
                     auto u = static_cast<unsigned char>(ch);
                     return is_alpha(u) || is_digit(u) || ch == '+' || ch == '-' || ch == '.';
                   });
  if (!scheme_ok || !std::all_of(uri.begin(), uri.end(), is_uri_char)) return make_error("NS: '{}' is not a URI", uri);
  if (iequals(uri, kCpimCoreNamespace)) {
    if (!prefix.empty()) {
      return make_error("NS: prefix '{}' for the core namespace (ambiguous: core headers are written without one)", prefix);
    }
    if (uri != kCpimCoreNamespace) return make_error("NS: write the core namespace as '{}'", kCpimCoreNamespace);
    return ok_status();  // declares what is already the default
  }
  if (prefix.empty()) return make_error("NS: <{}> without a prefix would change the default namespace (ambiguous)", uri);
  if (iequals(uri, kImdnNamespace) && uri != kImdnNamespace) {
    return make_error("NS: write the IMDN namespace as '{}'", kImdnNamespace);
  }
  for (const CpimNamespace& ns : message_.namespaces) {
    if (ns.prefix == prefix) return make_error("NS: prefix '{}' is declared twice", prefix);
    if (iequals(ns.prefix, prefix)) {
      return make_error("NS: prefix '{}' differs only in case from the declared '{}' (ambiguous)", prefix, ns.prefix);
    }
    if (iequals(ns.uri, uri)) return make_error("NS: <{}> is already declared with prefix '{}'", uri, ns.prefix);
  }
  message_.namespaces.push_back({std::string(prefix), std::string(uri)});
  return ok_status();
}

// Require (RFC 3862 §3.3.11): Header-name *( "," Header-name ), no spaces.
Status HeaderReader::read_require(std::string_view value) {
  Cursor c{value};
  while (true) {
    std::size_t start = c.pos;
    Result<Name> name = read_name(c);
    if (!name) return make_error("Require: {}", name.error().message);
    message_.required.push_back({std::string(value.substr(start, c.pos - start)), std::move(name->ns_uri),
                                 std::string(name->name)});
    if (c.done()) return ok_status();
    if (!c.eat(',')) return make_error("Require: expected ',' between header names, found {}", describe_at(c));
  }
}

Status HeaderReader::read_line(std::size_t number, std::string_view text) {
  auto fail = [number](const Error& e) { return make_error("line {}: {}", number, e.message); };
  Cursor c{text};
  Result<Name> name = read_name(c);
  if (!name) return fail(name.error());
  std::string_view written = text.substr(0, c.pos);
  if (!c.eat(':')) {
    if (c.peek() == ' ') return fail(make_error("space between the header name '{}' and ':'", written));
    if (c.done()) return fail(make_error("header '{}' has no ':'", written));
    return fail(make_error("{} is not allowed in a header name", describe_at(c)));
  }
  CpimHeader header;
  header.line = number;
  header.prefix = std::string(name->prefix);
  header.name = std::string(name->name);
  header.ns_uri = std::move(name->ns_uri);
  while (c.eat(';')) {
    if (Status s = read_param(c, header); !s) return fail(make_error("{}: {}", written, s.error().message));
  }
  if (!c.eat(' ')) return fail(make_error("expected one space after '{}:', found {}", written, describe_at(c)));
  if (c.peek() == ' ') return fail(make_error("more than one space after '{}:'", written));
  header.value = std::string(c.rest());

  const bool core = header.prefix.empty() && is_core_name(header.name);
  if (core && !header.params.empty() && header.name != "Subject") {
    return fail(make_error("{} takes no parameters", header.name));
  }
  if (core && (header.name == "From" || header.name == "To" || header.name == "cc")) {
    Result<CpimAddress> address = read_address(header.value);
    if (!address) return fail(make_error("{}: {}", header.name, address.error().message));
    if (header.name == "From") {
      if (have_from_) return fail(make_error("a second From header (ambiguous sender)"));
      have_from_ = true;
      message_.from = std::move(address).value();
    } else {
      (header.name == "To" ? message_.to : message_.cc).push_back(std::move(address).value());
      if (message_.to.size() + message_.cc.size() > limits_.max_recipients) {
        return fail(make_error("more than {} recipients (To and cc)", limits_.max_recipients));
      }
    }
  } else if (core && header.name == "DateTime") {
    if (datetime_line_ != 0) return fail(make_error("a second DateTime header (the first is on line {})", datetime_line_));
    if (Status s = check_datetime(header.value); !s) {
      return fail(make_error("DateTime '{}' is not an RFC 3339 date-time: it {}", header.value, s.error().message));
    }
    datetime_line_ = number;
    message_.datetime = header.value;
  } else if (core && header.name == "Subject") {
    if (Status s = read_subject(header); !s) return fail(s.error());
  } else if (core && header.name == "NS") {
    if (Status s = read_ns(header.value); !s) return fail(s.error());
  } else if (core && header.name == "Require") {
    if (require_line_ != 0) return fail(make_error("a second Require header (the first is on line {})", require_line_));
    require_line_ = number;
    if (Status s = read_require(header.value); !s) return fail(s.error());
  } else {
    // Any other header is kept as written, once its escapes are known good.
    if (header.prefix.empty() && (iequals(header.name.substr(0, 8), "Content-") || iequals(header.name, "MIME-Version"))) {
      return fail(make_error("'{}' is a MIME header, not a CPIM message header (is an outer MIME header or the "
                             "empty line missing?)",
                             header.name));
    }
    if (Result<std::string> decoded = decode_value(header.value); !decoded) {
      return fail(make_error("{}: {}", written, decoded.error().message));
    }
  }
  message_.headers.push_back(std::move(header));
  return ok_status();
}

Result<CpimMessage> HeaderReader::finish(std::size_t block_size) {
  if (!have_from_) return make_error("the CPIM message has no From header");
  if (message_.to.empty()) return make_error("the CPIM message has no To header");
  message_.header_block_size = block_size;
  return std::move(message_);
}

}  // namespace

const CpimHeader* CpimMessage::find(std::string_view ns_uri, std::string_view name) const {
  for (const CpimHeader& h : headers) {
    if (h.ns_uri == ns_uri && h.name == name) return &h;
  }
  return nullptr;
}

Result<CpimAddress> parse_user_uri(std::string_view uri, UriScheme scheme) {
  std::string_view want = scheme == UriScheme::Im ? "im:" : "pres:";
  auto fail = [&](const std::string& why) { return make_error("address '{}' {}", printable(uri), why); };
  if (!uri.starts_with(want)) {
    if (iequals(uri.substr(0, want.size()), want)) return fail(fmt::format("must begin with '{}' in lower case", want));
    return fail(fmt::format("is not {} URI", scheme == UriScheme::Im ? "an im:" : "a pres:"));
  }
  std::string_view rest = uri.substr(want.size());
  if (rest.find('%') != std::string_view::npos) return fail("has a '%' (percent-encoding is not accepted: ambiguous)");
  std::size_t ats = static_cast<std::size_t>(std::count(rest.begin(), rest.end(), '@'));
  if (ats == 0) return fail(fmt::format("has no '@' (expected {}user@domain)", want));
  if (ats > 1) return fail(fmt::format("has {} '@' (exactly one is allowed)", ats));
  std::size_t at = rest.find('@');
  std::string_view user = rest.substr(0, at);
  std::string_view domain = rest.substr(at + 1);
  if (user.empty()) return fail("has an empty user part");
  if (user.size() > kMaxUserLength) return fail(fmt::format("has a user part longer than {} characters", kMaxUserLength));
  for (char ch : user) {
    if (!is_user_char(ch)) {
      return fail(fmt::format("has {} in the user part", describe_byte(ch)));
    }
  }
  if (user.front() == '.' || user.back() == '.' || user.find("..") != std::string_view::npos) {
    return fail("has a user part that starts or ends with '.' or has '..'");
  }
  if (domain.empty()) return fail("has an empty domain");
  for (char ch : domain) {
    auto u = static_cast<unsigned char>(ch);
    if (!is_alpha(u) && !is_digit(u) && ch != '-' && ch != '.') {
      return fail(fmt::format("has {} in the domain", describe_byte(ch)));
    }
  }
  if (domain.back() == '.') return fail("has a domain ending with '.'");
  Result<std::string> normalized = normalize_domain(domain);
  if (!normalized) return fail("has a bad domain: " + normalized.error().message);
  return CpimAddress{std::string(uri), "", std::string(user), std::move(normalized).value()};
}

Result<CpimMessage> parse_cpim(std::span<const std::uint8_t> message, const CpimLimits& limits) {
  Result<Block> block = scan_block(message, limits);
  if (!block) return block.error();
  HeaderReader reader(limits);
  for (std::size_t i = 0; i < block->lines.size(); ++i) {
    if (Status s = reader.read_line(i + 1, block->lines[i]); !s) return s.error();
  }
  return reader.finish(block->size);
}

Status check_required(const CpimMessage& message, std::span<const CpimHeaderName> understood) {
  for (const CpimRequirement& r : message.required) {
    if (r.ns_uri == kCpimCoreNamespace && is_core_name(r.name)) continue;
    bool known = std::any_of(understood.begin(), understood.end(),
                             [&](const CpimHeaderName& u) { return u.ns_uri == r.ns_uri && u.name == r.name; });
    if (!known) {
      return make_error("the message requires header '{}' ({} in <{}>), which is not understood", r.written, r.name,
                        r.ns_uri);
    }
  }
  return ok_status();
}

std::span<const CpimHeaderName> imdn_header_names() { return kImdnNames; }

}  // namespace keyfed
