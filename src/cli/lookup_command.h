// `keyfed lookup`: resolve domains' federation keys and report them
// (docs/CLI.md, "keyfed lookup").
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli/cli.h"

namespace keyfed {

struct LookupOptions {
  std::vector<std::string> domains;
  std::string config;
  std::string trust_anchor;
  std::vector<std::string> zones;
  int timeout_ms = 0;  ///< 0: from the config (or the default)
  bool json = false;
};

CLI::App* add_lookup_command(CLI::App& app, LookupOptions& options);
ExitStatus run_lookup(const LookupOptions& options, std::ostream& out, std::ostream& err);

/// The exit status table printed by --help.
std::string exit_status_help();

}  // namespace keyfed
