#include "cli/cli.h"

#include <CLI/CLI.hpp>

#include "cli/check_command.h"
#include "cli/keygen_command.h"
#include "cli/lookup_command.h"
#include "cli/rollover_command.h"
#include "cli/run_command.h"
#include "cli/send_command.h"
#include "cli/testbed_command.h"
#include "cli/user_commands.h"

namespace keyfed {

int run_cli(int argc, const char* const* argv, std::ostream& out, std::ostream& err) {
  CLI::App app{"keyfed: DNSSEC-keyed inter-domain federation node", "keyfed"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Show help for every subcommand");

  LookupOptions lookup_options;
  CLI::App* lookup = add_lookup_command(app, lookup_options);
  RunOptions run_options;
  CLI::App* run = add_run_command(app, run_options);
  SendOptions send_options;
  CLI::App* send = add_send_command(app, send_options);
  UserCommandOptions inbox_options, queue_options, peers_options;
  CLI::App* inbox = add_inbox_command(app, inbox_options);
  CLI::App* queue = add_queue_command(app, queue_options);
  CLI::App* peers = add_peers_command(app, peers_options);
  PresenceCommandOptions presence_options;
  add_presence_commands(app, presence_options);
  KeygenOptions keygen_options;
  CLI::App* keygen = add_keygen_command(app, keygen_options);
  TestbedCommandOptions testbed_options;
  CLI::App* testbed = add_testbed_command(app, testbed_options);
  CheckOptions check_options;
  CLI::App* check = add_check_command(app, check_options);
  RolloverCommandOptions rollover_options;
  CLI::App* rollover = add_rollover_command(app, rollover_options);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    out << app.help();
    return static_cast<int>(ExitStatus::Ok);
  } catch (const CLI::CallForAllHelp&) {
    out << app.help("", CLI::AppFormatMode::All);
    return static_cast<int>(ExitStatus::Ok);
  } catch (const CLI::ParseError& e) {
    if (argc > 1 && argv[1][0] != '-' && app.get_subcommands().empty()) {
      err << "keyfed: error: unknown command '" << argv[1] << "' (see keyfed --help)\n";
      return static_cast<int>(ExitStatus::BadInput);
    }
    err << "keyfed: error: " << e.what() << " (see keyfed --help)\n";
    return static_cast<int>(ExitStatus::BadInput);
  }

  if (lookup->parsed()) return static_cast<int>(run_lookup(lookup_options, out, err));
  if (run->parsed()) return static_cast<int>(run_node(run_options, err));
  if (send->parsed()) return static_cast<int>(run_send(send_options, out, err));
  if (inbox->parsed()) return static_cast<int>(run_inbox(inbox_options, out, err));
  if (queue->parsed()) return static_cast<int>(run_queue(queue_options, out, err));
  if (peers->parsed()) return static_cast<int>(run_peers(peers_options, out, err));
  if (presence_command_parsed(presence_options)) {
    return static_cast<int>(run_presence_command(presence_options, out, err));
  }
  if (keygen->parsed()) return static_cast<int>(run_keygen(keygen_options, out, err));
  if (testbed->parsed()) return static_cast<int>(run_testbed(testbed_options, out, err));
  if (check->parsed()) return static_cast<int>(run_check_command(check_options, out, err));
  if (rollover->parsed()) return static_cast<int>(run_rollover_command(rollover_options, out, err));
  return static_cast<int>(ExitStatus::BadInput);
}

}  // namespace keyfed
