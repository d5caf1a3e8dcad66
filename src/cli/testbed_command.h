// `keyfed testbed up|down|status|run`: a whole federation on one machine
// (docs/TESTBED.md, "keyfed testbed"; docs/CLI.md).
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli/cli.h"

namespace keyfed {

struct TestbedCommandOptions {
  std::string dir = "keyfed-testbed";
  int domains = 3;
  std::string dns = "embedded";
  bool special = false;
  int base_port = 25500;
  int key_ttl = 10;
  bool json = false;
  bool dot = false;
  std::string svg;
  bool remove = false;
  std::vector<std::string> scenarios;
  CLI::App* up = nullptr;
  CLI::App* down = nullptr;
  CLI::App* status = nullptr;
  CLI::App* run = nullptr;
};

CLI::App* add_testbed_command(CLI::App& app, TestbedCommandOptions& options);
ExitStatus run_testbed(const TestbedCommandOptions& options, std::ostream& out, std::ostream& err);

}  // namespace keyfed
