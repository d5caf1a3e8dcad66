#include "cli/check_command.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/lookup_command.h"
#include "common/log.h"
#include "config/node_config.h"
#include "dnskey/domain_name.h"

namespace keyfed {
namespace {

inline constexpr int kMaxWarnDays = 3650;

}  // namespace

std::string check_status_help() {
  return "One line per finding: DOMAIN SEVERITY PROBLEM: detail (or DOMAIN ok: summary).\n"
         "Exit status (the most fundamental finding of any domain; docs/CLI.md):\n"
         "  0  nothing found\n"
         "  1  warnings only (signatures-expiring, ttl-too-low, ttl-too-high, a server down while another works)\n"
         "  2  bad input: arguments, config, zone, trust anchor or key file, domain name\n"
         "  3  temp-fail     4  insecure     5  unusable     6  bogus (the DNS outcome, as lookup)\n"
         " 10  no-keys: no KEY RRset at _impp._tcp.DOMAIN\n"
         " 11  key-not-published: our key is not among the validated keys\n"
         " 12  no-server: discovery finds no server\n"
         " 13  server-unreachable: no server accepts a connection\n"
         " 14  server-wrong-key: a server presents a key the domain does not publish\n"
         " 15  server-tls-failed: no server completes the TLS 1.3 handshake";
}

CLI::App* add_check_command(CLI::App& app, CheckOptions& options) {
  CLI::App* cmd = app.add_subcommand(
      "check", "Check domains' published keys, signatures and servers as a peer will see them");
  cmd->add_option("domains", options.domains, "Domains to check")->required();
  auto* config = cmd->add_option("--config", options.config,
                                 "Node configuration file (TOML); its [[domains]] keys are checked");
  cmd->add_option("--trust-anchor", options.trust_anchor, "File of DS or DNSKEY lines to validate --zone files with")
      ->excludes(config);
  cmd->add_option("--zone", options.zones, "Signed zone file to resolve from (repeatable; zone name from its SOA)")
      ->allow_extra_args(false)
      ->excludes(config);
  cmd->add_option("--key", options.key, "Private key file (PEM, as the node loads it) that must be published");
  cmd->add_option("--warn-days", options.warn_days,
                  "Warn when the KEY RRset's signatures expire within this many days (default 7)")
      ->check(CLI::Range(0, kMaxWarnDays));
  cmd->add_flag("--json", options.json, "Print JSON (format in docs/CLI.md)");
  cmd->footer(check_status_help());
  return cmd;
}

CheckStatus run_check_command(const CheckOptions& options, std::ostream& out, std::ostream& err) {
  auto bad_input = [&](const Error& e) {
    err << "keyfed: error: " << e.message << "\n";
    return CheckStatus::BadInput;
  };
  std::vector<std::string> domains;
  for (const std::string& input : options.domains) {
    Result<std::string> domain = normalize_domain(input);
    if (!domain) return bad_input(domain.error());
    domains.push_back(std::move(domain).value());
  }
  Result<NodeConfig> config = resolution_config(options.config, options.trust_anchor, options.zones);
  if (!config) return bad_input(config.error());

  CheckSettings settings;
  settings.resolver = config->resolver;
  settings.key_cache = config->key_cache;
  settings.default_port = config->federation.default_port;
  settings.connect_timeout = config->federation.limits.connect_timeout;
  settings.handshake_timeout = config->federation.limits.handshake_timeout;
  settings.warn_before = std::chrono::hours(24) * options.warn_days;

  // Our keys per domain: --key for every domain, else the configuration's
  // [[domains]] entry of that domain (every key it loads).
  OwnKeys own(domains.size());
  for (std::size_t i = 0; i < domains.size(); ++i) {
    if (!options.key.empty()) {
      Result<OwnKey> key = load_own_key(domains[i], options.key);
      if (!key) return bad_input(key.error());
      own[i].push_back(std::move(key).value());
      continue;
    }
    for (const HostedDomain& hosted : config->federation.domains) {
      if (hosted.domain != domains[i]) continue;
      for (const auto& file : hosted.key_files) {
        Result<OwnKey> key = load_own_key(domains[i], file);
        if (!key) return bad_input(key.error());
        own[i].push_back(std::move(key).value());
      }
    }
  }

  // The report carries every finding; log lines would repeat it on stderr.
  set_log_level(LogLevel::Error);
  Result<std::vector<DomainReport>> reports = run_check(settings, domains, own);
  if (!reports) return bad_input(reports.error());
  if (options.json) {
    out << check_report_json(*reports).dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    out << check_report_text(*reports);
  }
  return overall_status(*reports);
}

}  // namespace keyfed
