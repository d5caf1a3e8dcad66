// `keyfed run`: a node in the foreground (docs/CLI.md, "keyfed run").
#pragma once

#include <ostream>
#include <string>

#include <CLI/CLI.hpp>

#include "cli/cli.h"

namespace keyfed {

struct RunOptions {
  std::string config;
};

CLI::App* add_run_command(CLI::App& app, RunOptions& options);
/// Serves until SIGTERM or SIGINT; SIGHUP reloads keys, policy and zones.
ExitStatus run_node(const RunOptions& options, std::ostream& err);

}  // namespace keyfed
