// `keyfed rollover`: a federation key rollover, step by step (docs/CLI.md).
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

#include <CLI/CLI.hpp>

#include "cli/cli.h"

namespace keyfed {

struct RolloverCommandOptions {
  std::string config;
  std::string domain;
  std::string step;
  bool json = false;
  std::int64_t margin_seconds = 60;
  std::uint32_t ttl = 0;
  std::string update;
  std::string tsig;
  std::string zone;
  bool no_reload = false;
};

CLI::App* add_rollover_command(CLI::App& app, RolloverCommandOptions& options);
ExitStatus run_rollover_command(const RolloverCommandOptions& options, std::ostream& out, std::ostream& err);

}  // namespace keyfed
