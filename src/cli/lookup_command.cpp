#include "cli/lookup_command.h"

#include <algorithm>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <uv.h>

#include "common/log.h"
#include "config/node_config.h"
#include "daemon/daemon.h"
#include "dnskey/domain_name.h"
#include "dnskey/key_cache.h"
#include "dnskey/key_json.h"
#include "dnskey/resolver.h"

namespace keyfed {
namespace {

ExitStatus status_of(DnsOutcome outcome) {
  switch (outcome) {
    case DnsOutcome::Keys:
    case DnsOutcome::NoKeys: return ExitStatus::Ok;
    case DnsOutcome::TempFail: return ExitStatus::TempFail;
    case DnsOutcome::Insecure: return ExitStatus::Insecure;
    case DnsOutcome::Unusable: return ExitStatus::Unusable;
    case DnsOutcome::Bogus: return ExitStatus::Bogus;
  }
  return ExitStatus::InternalError;
}

struct Settings {
  ResolverConfig resolver;
  KeyCacheConfig key_cache;
};

Result<Settings> settings_from(const LookupOptions& options) {
  Result<NodeConfig> config = resolution_config(options.config, options.trust_anchor, options.zones);
  if (!config) return config.error();
  Settings settings;
  settings.resolver = std::move(config->resolver);
  settings.key_cache = config->key_cache;
  // KeyResolver::create() checks the finished settings (trust anchor, zones, timeout).
  if (options.timeout_ms != 0) settings.resolver.query_timeout = std::chrono::milliseconds{options.timeout_ms};
  return settings;
}

// Runs a private loop until every domain has an answer. Each query has a
// deadline, so this always ends.
Result<std::vector<std::shared_ptr<const CachedKeys>>> resolve_all(
    const Settings& settings, const std::vector<std::string>& domains) {
  NodeConfig config;
  config.resolver = settings.resolver;
  config.key_cache = settings.key_cache;
  Reactor reactor;  // the resolver and cache only
  if (Status s = reactor.start(std::move(config), DaemonParts::Keys); !s) return s.error();
  std::vector<std::shared_ptr<const CachedKeys>> answers(domains.size());
  std::size_t remaining = domains.size();
  for (std::size_t i = 0; i < domains.size(); ++i) {
    reactor.daemon().cache().lookup(domains[i], [&, i](std::shared_ptr<const CachedKeys> entry) {
      answers[i] = std::move(entry);
      --remaining;
    });
  }
  if (!reactor.run_until([&] { return remaining == 0; })) return make_error("a lookup ended without an answer");
  return answers;
}

void print_table(std::ostream& out, const std::vector<std::shared_ptr<const CachedKeys>>& answers,
                 TimePoint now) {
  std::size_t width = 6;
  for (const auto& e : answers) width = std::max(width, e->answer.domain.size());
  out << fmt::format("{:<{}}  {:<9}  {:>6}  {:>7}\n", "DOMAIN", width, "OUTCOME", "TTL", "EXPIRES");
  for (const auto& e : answers) {
    const DomainKeys& a = e->answer;
    out << fmt::format("{:<{}}  {:<9}  {:>6}  {:>6}s\n", a.domain, width, to_string(a.outcome), a.ttl,
                       e->remaining_seconds(now));
    for (const FederationKey& key : a.keys) {
      out << fmt::format("    key      {:<10}  tag {:>5}  spki-sha256 {}\n", algorithm_name(key.algorithm),
                         key.key_tag, key.spki_sha256);
    }
    for (const SkippedRecord& s : a.skipped) {
      out << fmt::format("    skipped  {}: {}\n", s.reason, s.record);
    }
    for (const std::string& alias : a.aliases) out << fmt::format("    via      alias {}\n", alias);
    if (a.wildcard) out << "    via      wildcard\n";
    if (!a.reason.empty()) out << fmt::format("    reason   {}\n", a.reason);
  }
}

}  // namespace

Result<NodeConfig> resolution_config(const std::string& config_file, const std::string& trust_anchor,
                                     const std::vector<std::string>& zones) {
  if (!config_file.empty()) {
    if (!trust_anchor.empty() || !zones.empty()) {
      return make_error("--config cannot be combined with --trust-anchor or --zone");
    }
    return load_node_config(config_file);
  }
  if (trust_anchor.empty() && zones.empty()) {
    return make_error("say where keys come from: --config FILE, or --trust-anchor FILE --zone FILE...");
  }
  if (trust_anchor.empty()) return make_error("--zone needs --trust-anchor FILE");
  if (zones.empty()) return make_error("--trust-anchor needs at least one --zone FILE");
  NodeConfig config;
  config.resolver.mode = ResolverMode::Testbed;
  config.resolver.trust_anchor = trust_anchor;
  for (const std::string& file : zones) {
    Result<ZoneFile> zone = inspect_zone_file(file);
    if (!zone) return zone.error();
    config.resolver.zones.push_back(std::move(zone).value());
  }
  return config;
}

std::string exit_status_help() {
  return "Exit status (with several domains, the highest applies):\n"
         "  0  every domain resolved to keys or no-keys\n"
         "  1  internal error\n"
         "  2  bad input: arguments, config, zone or trust anchor file, domain name\n"
         "  3  a domain's lookup was temp-fail (SERVFAIL, timeout, refused)\n"
         "  4  a domain is insecure (no DNSSEC chain of trust)\n"
         "  5  a domain's keys are unusable\n"
         "  6  a domain's answer is bogus (DNSSEC validation failed)";
}

CLI::App* add_lookup_command(CLI::App& app, LookupOptions& options) {
  CLI::App* cmd = app.add_subcommand(
      "lookup", "Resolve and validate the federation keys (KEY at _impp._tcp.DOMAIN) of domains");
  cmd->add_option("domains", options.domains, "Domains to look up")->required();
  auto* config = cmd->add_option("--config", options.config, "Node configuration file (TOML)");
  cmd->add_option("--trust-anchor", options.trust_anchor,
                  "File of DS or DNSKEY lines to validate --zone files with")
      ->excludes(config);
  cmd->add_option("--zone", options.zones,
                  "Signed zone file to resolve from (repeatable; zone name from its SOA)")
      ->allow_extra_args(false)  // one file per --zone, so domains may follow
      ->excludes(config);
  cmd->add_option("--timeout-ms", options.timeout_ms, "Deadline of each query in milliseconds")
      ->check(CLI::Range(static_cast<int>(kMinQueryTimeout.count()),
                         static_cast<int>(kMaxQueryTimeout.count())));
  cmd->add_flag("--json", options.json, "Print JSON (format in docs/CLI.md)");
  cmd->footer(exit_status_help());
  return cmd;
}

ExitStatus run_lookup(const LookupOptions& options, std::ostream& out, std::ostream& err) {
  std::vector<std::string> domains;
  for (const std::string& input : options.domains) {
    Result<std::string> domain = normalize_domain(input);
    if (!domain) {
      err << "keyfed: error: " << domain.error().message << "\n";
      return ExitStatus::BadInput;
    }
    domains.push_back(std::move(domain).value());
  }
  Result<Settings> settings = settings_from(options);
  if (!settings) {
    err << "keyfed: error: " << settings.error().message << "\n";
    return ExitStatus::BadInput;
  }
  // The report carries every outcome; log lines would repeat it on stderr.
  set_log_level(LogLevel::Error);
  auto answers = resolve_all(*settings, domains);
  if (!answers) {
    err << "keyfed: error: " << answers.error().message << "\n";
    return ExitStatus::BadInput;
  }
  TimePoint now = SteadyClock::now();
  ExitStatus status = ExitStatus::Ok;
  for (const auto& entry : *answers) status = std::max(status, status_of(entry->answer.outcome));

  if (options.json) {
    nlohmann::json report = nlohmann::json::array();
    for (const auto& entry : *answers) report.push_back(key_answer_json(*entry, now));
    out << report.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    print_table(out, *answers, now);
  }
  return status;
}

}  // namespace keyfed
