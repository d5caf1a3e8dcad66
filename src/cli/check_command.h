// `keyfed check`: a domain's federation publication and service as a peer
// will see them (docs/CLI.md, "keyfed check"; the logic is src/tooling/check.h).
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "tooling/check.h"

namespace keyfed {

struct CheckOptions {
  std::vector<std::string> domains;
  std::string config;
  std::string trust_anchor;
  std::vector<std::string> zones;
  std::string key;     ///< --key: a private key file, as the node loads it
  int warn_days = 7;   ///< --warn-days
  bool json = false;
};

CLI::App* add_check_command(CLI::App& app, CheckOptions& options);
CheckStatus run_check_command(const CheckOptions& options, std::ostream& out, std::ostream& err);

/// The exit status table printed by --help.
std::string check_status_help();

}  // namespace keyfed
