// `keyfed send`: open one session as a hosted domain and send one CPIM
// message (docs/CLI.md, "keyfed send"). For testbeds and scripts.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli/cli.h"

namespace keyfed {

struct SendOptions {
  std::string config;
  std::vector<std::string> message_files;
  bool direct = false;  ///< one session of its own instead of the running node
  std::string address;  ///< empty: [[peers]] entry, else discovery
  int port = 0;
  bool json = false;
};

CLI::App* add_send_command(CLI::App& app, SendOptions& options);
ExitStatus run_send(const SendOptions& options, std::ostream& out, std::ostream& err);

}  // namespace keyfed
