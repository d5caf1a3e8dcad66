// `keyfed lookup`: resolve domains' federation keys and report them
// (docs/CLI.md, "keyfed lookup").
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli/cli.h"
#include "common/result.h"
#include "config/node_config.h"

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

/// Where keys come from, as `lookup` and `check` take it: the node's
/// configuration file (all of it), or a trust anchor and signed zone files
/// (a testbed resolver and default settings otherwise). Errors are bad input.
Result<NodeConfig> resolution_config(const std::string& config_file, const std::string& trust_anchor,
                                     const std::vector<std::string>& zones);

/// The exit status table printed by --help.
std::string exit_status_help();

}  // namespace keyfed
