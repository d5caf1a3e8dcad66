#include "cli/rollover_command.h"

#include "common/log.h"
#include "tooling/rollover.h"

namespace keyfed {

CLI::App* add_rollover_command(CLI::App& app, RolloverCommandOptions& options) {
  CLI::App* cmd = app.add_subcommand("rollover", "Roll a hosted domain's federation key, step by step (RFC 7583 pre-publication)");
  cmd->add_option("--config", options.config, "Node configuration file (TOML)")->required();
  cmd->add_option("domain", options.domain, "Hosted domain whose key to roll")->required();
  cmd->add_option("step", options.step, "plan, next, switch, retire or status")
      ->required()
      ->check(CLI::IsMember({"plan", "next", "switch", "retire", "status"}));
  cmd->add_flag("--json", options.json, "Print JSON (format in docs/CLI.md)");
  cmd->add_option("--margin-seconds", options.margin_seconds,
                  "Safety margin added to every wait (default 60)")
      ->check(CLI::Range(0, 31536000));
  cmd->add_option("--ttl", options.ttl, "TTL of records added (default: the KEY RRset's TTL)")
      ->check(CLI::Range(1, 2147483647));
  auto* update = cmd->add_option("--update", options.update,
                                 "Publish by RFC 2136 dynamic update to this server (ADDR[@PORT])");
  auto* tsig = cmd->add_option("--tsig", options.tsig, "TSIG key file for --update (0600)");
  update->needs(tsig);
  tsig->needs(update);
  cmd->add_option("--zone", options.zone, "Zone to update (default: DOMAIN)")->needs(update);
  cmd->add_flag("--no-reload", options.no_reload, "Do not signal the running node after changing its config");
  cmd->footer(
      "Exit status: 0 done; 1 internal error; 2 bad input (arguments, config, state file, TSIG file,\n"
      "step out of order); 3 the validated lookup failed; 10 too early (refused; retry at the\n"
      "time printed, retry_at in JSON); 11 the dynamic update failed or was refused; 12 the running\n"
      "node does not present the new key (its reload failed?).");
  return cmd;
}

ExitStatus run_rollover_command(const RolloverCommandOptions& o, std::ostream& out, std::ostream& err) {
  RolloverOptions options;
  options.config = o.config;
  options.domain = o.domain;
  static const std::pair<const char*, RolloverStep> steps[] = {{"plan", RolloverStep::Plan},
                                                               {"next", RolloverStep::Next},
                                                               {"switch", RolloverStep::Switch},
                                                               {"retire", RolloverStep::Retire},
                                                               {"status", RolloverStep::Show}};
  for (const auto& [name, step] : steps) {
    if (o.step == name) options.step = step;
  }
  options.margin_seconds = o.margin_seconds;
  options.record_ttl = o.ttl;
  options.zone = o.zone;
  options.reload = !o.no_reload;
  if (!o.update.empty()) {
    Result<DnsServer> server = parse_dns_server(o.update);
    if (!server) {
      err << "keyfed: error: --update " << server.error().message << "\n";
      return ExitStatus::BadInput;
    }
    Result<TsigKey> key = read_tsig_file(o.tsig);
    if (!key) {
      err << "keyfed: error: " << key.error().message << "\n";
      return ExitStatus::BadInput;
    }
    options.update_server = *server;
    options.tsig = *key;
  }
  // Log lines of the lookups would repeat the report.
  set_log_level(LogLevel::Error);
  RolloverReport report = run_rollover(options, config_key_lookup(options.config), system_wall_clock);
  if (o.json) {
    out << report.json.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    for (const std::string& line : report.lines) out << line << "\n";
  }
  if (report.ok) {
    if (!o.json) out << report.message << "\n";
    return ExitStatus::Ok;
  }
  err << "keyfed: " << (report.failure == RolloverFailure::TooEarly ? "refused" : "error") << ": " << report.message
      << "\n";
  switch (report.failure) {
    case RolloverFailure::BadInput: return ExitStatus::BadInput;
    case RolloverFailure::TooEarly: return ExitStatus::TooEarly;
    case RolloverFailure::DnsFailure: return ExitStatus::TempFail;
    case RolloverFailure::UpdateFailed: return ExitStatus::UpdateFailed;
    case RolloverFailure::NotSwitched: return ExitStatus::NotSwitched;
    case RolloverFailure::Internal: return ExitStatus::InternalError;
  }
  return ExitStatus::InternalError;
}

}  // namespace keyfed
