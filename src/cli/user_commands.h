// The commands local users and scripts run against a running node, through
// its control socket (docs/CLI.md): inbox, queue, peers, and the submitting
// form of send (send_command.h).
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli/cli.h"

namespace keyfed {

struct UserCommandOptions {
  std::string config;
  std::string user;
  bool json = false;
  bool take = false;
  bool follow = false;
};

CLI::App* add_inbox_command(CLI::App& app, UserCommandOptions& options);
CLI::App* add_queue_command(CLI::App& app, UserCommandOptions& options);
CLI::App* add_peers_command(CLI::App& app, UserCommandOptions& options);
ExitStatus run_inbox(const UserCommandOptions& options, std::ostream& out, std::ostream& err);
ExitStatus run_queue(const UserCommandOptions& options, std::ostream& out, std::ostream& err);
ExitStatus run_peers(const UserCommandOptions& options, std::ostream& out, std::ostream& err);

/// presence set|get, watch, unwatch, allow, deny, acl, keys (docs/CLI.md).
struct PresenceCommandOptions {
  std::string config;
  std::string user;
  std::string target;  ///< presentity or pattern
  std::string status;
  std::string note;
  std::string list;
  std::vector<std::string> remove;
  bool json = false;
  CLI::App* presence_set = nullptr;
  CLI::App* presence_get = nullptr;
  CLI::App* watch = nullptr;
  CLI::App* unwatch = nullptr;
  CLI::App* allow = nullptr;
  CLI::App* deny = nullptr;
  CLI::App* acl = nullptr;
  CLI::App* keys = nullptr;
};
void add_presence_commands(CLI::App& app, PresenceCommandOptions& options);
bool presence_command_parsed(const PresenceCommandOptions& options);
ExitStatus run_presence_command(const PresenceCommandOptions& options, std::ostream& out, std::ostream& err);

/// `keyfed send` without --direct: submits each file to the running node.
ExitStatus submit_messages(const std::string& config, const std::vector<std::string>& files, bool json,
                           std::ostream& out, std::ostream& err);

}  // namespace keyfed
