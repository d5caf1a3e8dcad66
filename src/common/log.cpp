#include "common/log.h"

#include <cstdio>
#include <utility>

namespace keyfed {
namespace {

void stderr_sink(LogLevel level, std::string_view message) {
  fmt::print(stderr, "keyfed: {}: {}\n", to_string(level), message);
}

// The reactor is single-threaded; logging happens on it or at startup.
LogSink g_sink = stderr_sink;
LogLevel g_threshold = LogLevel::Info;

constexpr std::string_view kAuditPrefix = "audit ";

// Length of the UTF-8 sequence starting at text[i] if it is well formed
// (shortest form, no surrogates, at most U+10FFFF), else 0.
std::size_t utf8_sequence(std::string_view text, std::size_t i, std::uint32_t& code_point) {
  auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
  unsigned char lead = byte(i);
  std::size_t length;
  std::uint32_t min;
  if (lead >= 0xc2 && lead <= 0xdf) {
    length = 2, min = 0x80, code_point = lead & 0x1f;
  } else if (lead >= 0xe0 && lead <= 0xef) {
    length = 3, min = 0x800, code_point = lead & 0x0f;
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    length = 4, min = 0x10000, code_point = lead & 0x07;
  } else {
    return 0;
  }
  if (i + length > text.size()) return 0;
  for (std::size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xc0) != 0x80) return 0;
    code_point = code_point << 6 | (byte(i + k) & 0x3f);
  }
  if (code_point < min || code_point > 0x10ffff || (code_point >= 0xd800 && code_point <= 0xdfff)) return 0;
  return length;
}

void append_hex(std::string& out, unsigned char c) {
  static constexpr char kDigits[] = "0123456789abcdef";
  out += "\\x";
  out.push_back(kDigits[c >> 4]);
  out.push_back(kDigits[c & 0x0f]);
}

}  // namespace

std::string_view to_string(LogLevel level) {
  switch (level) {
    case LogLevel::Debug: return "debug";
    case LogLevel::Info: return "info";
    case LogLevel::Warning: return "warning";
    case LogLevel::Error: return "error";
  }
  return "unknown";
}

std::string escape_text(std::string_view text, bool for_quoting) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      switch (c) {
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        case '\\': out += for_quoting ? "\\\\" : "\\"; break;
        case '"': out += for_quoting ? "\\\"" : "\""; break;
        default:
          if (c < 0x20 || c == 0x7f) {
            append_hex(out, c);
          } else {
            out.push_back(static_cast<char>(c));
          }
      }
      ++i;
      continue;
    }
    std::uint32_t code_point = 0;
    std::size_t length = utf8_sequence(text, i, code_point);
    if (length == 0 || (code_point >= 0x80 && code_point <= 0x9f)) {
      // Not UTF-8, or a C1 control: every byte of it escaped.
      std::size_t n = length == 0 ? 1 : length;
      for (std::size_t k = 0; k < n; ++k) append_hex(out, static_cast<unsigned char>(text[i + k]));
      i += n;
      continue;
    }
    out.append(text.substr(i, length));
    i += length;
  }
  return out;
}

std::string quote_untrusted(std::string_view text, std::size_t max_bytes) {
  bool cut = text.size() > max_bytes;
  std::string out = "\"";
  out += escape_text(cut ? text.substr(0, max_bytes) : text, true);
  out += cut ? "...\"" : "\"";
  return out;
}

LogSink set_log_sink(LogSink sink) {
  return std::exchange(g_sink, sink ? std::move(sink) : LogSink(stderr_sink));
}

void set_log_level(LogLevel threshold) { g_threshold = threshold; }

LogLevel log_level() { return g_threshold; }

void log_line(LogLevel level, std::string_view message) {
  if (level < g_threshold) return;
  std::string escaped = escape_text(message);
  if (std::string_view(escaped).starts_with(kAuditPrefix)) escaped = " " + escaped;
  g_sink(level, escaped);
}

void log_audit(std::string_view json) {
  // Every authentication decision is written, whatever the threshold.
  std::string line(kAuditPrefix);
  line += escape_text(json);
  g_sink(LogLevel::Info, line);
}

}  // namespace keyfed
