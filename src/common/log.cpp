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

LogSink set_log_sink(LogSink sink) {
  return std::exchange(g_sink, sink ? std::move(sink) : LogSink(stderr_sink));
}

void set_log_level(LogLevel threshold) { g_threshold = threshold; }

void log_line(LogLevel level, std::string_view message) {
  if (level >= g_threshold) g_sink(level, message);
}

}  // namespace keyfed
