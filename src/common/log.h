// Logging: one sink for every line the node writes (stderr by default, or a
// sink a test installs). docs/SECURITY.md, "Logs".
//
// Every byte that reaches the sink has been escaped: control characters
// (newlines included), C1 controls and bytes that are not UTF-8 are written
// as \xHH (\n, \r, \t for the common ones), so nothing a peer, DNS or a local
// client sends can start a line of its own. Untrusted text embedded in a
// message is also wrapped in untrusted(), which quotes it, so it cannot pass
// for the node's own words either. Audit lines are the only lines written by
// log_audit(), which alone begins a line's message with "audit ".
//
// Never pass private key material to these functions.
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include <fmt/format.h>

namespace keyfed {

enum class LogLevel { Debug, Info, Warning, Error };

std::string_view to_string(LogLevel level);

/// Receives every line at or above the threshold, already escaped.
using LogSink = std::function<void(LogLevel, std::string_view)>;

/// Replaces the sink (default: "keyfed: <level>: <message>" on stderr).
/// Returns the previous one, so a test can restore it.
LogSink set_log_sink(LogSink sink);
void set_log_level(LogLevel threshold);
LogLevel log_level();
/// Writes one line. A message that would begin with "audit " is written with
/// a leading space added: only log_audit() writes audit lines.
void log_line(LogLevel level, std::string_view message);

/// One audit line (docs/POLICY.md §5): "audit " + the JSON object, at Info
/// whatever the threshold: every authentication decision is written.
void log_audit(std::string_view json);

template <typename... Args>
void log_at(LogLevel level, fmt::format_string<Args...> format, Args&&... args) {
  log_line(level, fmt::format(format, std::forward<Args>(args)...));
}

/// `text` with control characters, C1 controls and non-UTF-8 bytes written as
/// escapes (\n, \r, \t, \xHH); backslashes are doubled when `for_quoting`.
std::string escape_text(std::string_view text, bool for_quoting = false);

/// Untrusted text (from a peer, DNS or a local client) for a log line or an
/// error message: double-quoted, with quotes, backslashes and control
/// characters escaped, and cut to `max_bytes` ("..." marks the cut).
struct Untrusted {
  std::string_view text;
  std::size_t max_bytes = 256;
};
inline Untrusted untrusted(std::string_view text, std::size_t max_bytes = 256) { return {text, max_bytes}; }
std::string quote_untrusted(std::string_view text, std::size_t max_bytes = 256);

}  // namespace keyfed

template <>
struct fmt::formatter<keyfed::Untrusted> : fmt::formatter<std::string_view> {
  template <typename Context>
  auto format(const keyfed::Untrusted& u, Context& ctx) const {
    return fmt::formatter<std::string_view>::format(keyfed::quote_untrusted(u.text, u.max_bytes), ctx);
  }
};
