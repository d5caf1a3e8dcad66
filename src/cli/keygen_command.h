// `keyfed keygen`: a new federation key for a domain, and the KEY record to
// publish for it (docs/CLI.md, "keyfed keygen"; docs/KEYS.md).
#pragma once

#include <ostream>
#include <string>

#include <CLI/CLI.hpp>

#include "cli/cli.h"

namespace keyfed {

struct KeygenOptions {
  std::string domain;
  std::string out;
  std::string algorithm = "ed25519";
  int ttl = 300;
};

CLI::App* add_keygen_command(CLI::App& app, KeygenOptions& options);
ExitStatus run_keygen(const KeygenOptions& options, std::ostream& out, std::ostream& err);

}  // namespace keyfed
