// Minimal leveled logging to stderr (or to a sink a test installs).
// Never pass private key material to these functions.
#pragma once

#include <functional>
#include <string_view>

#include <fmt/format.h>

namespace keyfed {

enum class LogLevel { Debug, Info, Warning, Error };

std::string_view to_string(LogLevel level);

/// Receives every line at or above the threshold.
using LogSink = std::function<void(LogLevel, std::string_view)>;

/// Replaces the sink (default: "keyfed: <level>: <message>" on stderr).
/// Returns the previous one, so a test can restore it.
LogSink set_log_sink(LogSink sink);
void set_log_level(LogLevel threshold);
void log_line(LogLevel level, std::string_view message);

template <typename... Args>
void log_at(LogLevel level, fmt::format_string<Args...> format, Args&&... args) {
  log_line(level, fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace keyfed
