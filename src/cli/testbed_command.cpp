#include "cli/testbed_command.h"

#include <filesystem>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tooling/support.h"
#include "tooling/testbed.h"
#include "tooling/testbed_scenarios.h"

namespace keyfed {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

ExitStatus up(const TestbedCommandOptions& o, std::ostream& out, std::ostream& err) {
  Result<Testbed> tb = Testbed::open(o.dir);
  if (tb) {
    bool domains_given = o.up->count("--domains") > 0;
    if ((domains_given && static_cast<int>(tb->nodes().size()) != o.domains) ||
        (o.up->count("--dns") > 0 && o.dns != to_string(tb->dns()))) {
      err << fmt::format("keyfed: error: {} holds a testbed of {} domains with {} DNS; `keyfed testbed down --dir {} "
                         "--remove` first, or another --dir\n",
                         o.dir, tb->nodes().size(), to_string(tb->dns()), o.dir);
      return ExitStatus::BadInput;
    }
    out << fmt::format("testbed in {} ({} domains, {} DNS): starting what is not running\n", tb->dir().string(),
                       tb->nodes().size(), to_string(tb->dns()));
  } else {
    TestbedOptions options;
    options.dir = o.dir;
    options.domains = o.domains;
    options.dns = o.dns == "knot" ? TestbedDns::Knot : TestbedDns::Embedded;
    options.special = o.special;
    options.base_port = static_cast<std::uint16_t>(o.base_port);
    options.key_ttl = static_cast<std::uint32_t>(o.key_ttl);
    tb = Testbed::create(options);
    if (!tb) {
      err << "keyfed: error: " << tb.error().message << "\n";
      return ExitStatus::BadInput;
    }
    out << fmt::format("testbed in {}: {} domains under test., {} DNS, keys and zones generated\n",
                       tb->dir().string(), tb->nodes().size(), to_string(tb->dns()));
  }
  if (Status s = tb->check_ports(); !s) {
    err << "keyfed: error: " << s.error().message << "\n";
    return ExitStatus::BadInput;
  }
  if (Status s = tb->up(out); !s) {
    err << "keyfed: error: " << s.error().message << "\n";
    return ExitStatus::InternalError;
  }
  out << fmt::format("all {} nodes listen; `keyfed testbed status --dir {}`, `keyfed testbed run --dir {}`\n",
                     tb->nodes().size(), o.dir, o.dir);
  return ExitStatus::Ok;
}

ExitStatus down(const TestbedCommandOptions& o, std::ostream& out, std::ostream& err) {
  Result<Testbed> tb = Testbed::open(o.dir);
  if (!tb) {
    err << "keyfed: error: " << tb.error().message << "\n";
    return ExitStatus::BadInput;
  }
  if (Status s = tb->down(); !s) {
    err << "keyfed: error: " << s.error().message << "\n";
    return ExitStatus::InternalError;
  }
  out << fmt::format("testbed in {} stopped\n", tb->dir().string());
  if (o.remove) {
    std::error_code ec;
    fs::remove_all(tb->dir(), ec);
    if (ec) {
      err << fmt::format("keyfed: error: {}: cannot remove: {}\n", tb->dir().string(), ec.message());
      return ExitStatus::InternalError;
    }
    out << fmt::format("{} removed\n", tb->dir().string());
  }
  return ExitStatus::Ok;
}

ExitStatus status(const TestbedCommandOptions& o, std::ostream& out, std::ostream& err) {
  Result<Testbed> tb = Testbed::open(o.dir);
  if (!tb) {
    err << "keyfed: error: " << tb.error().message << "\n";
    return ExitStatus::BadInput;
  }
  if (!o.svg.empty()) {
    Result<fs::path> dot_program = find_program("dot");
    if (!dot_program) {
      err << "keyfed: error: --svg needs Graphviz's `dot` (apt-get install graphviz); --dot prints the graph\n";
      return ExitStatus::BadInput;
    }
    fs::path dot_file = tb->dir() / "testbed.dot";
    if (Status s = write_file_atomic(dot_file, tb->dot(), 0644); !s) {
      err << "keyfed: error: " << s.error().message << "\n";
      return ExitStatus::InternalError;
    }
    // No shell: the file names go to dot as arguments, whatever they hold.
    Result<std::string> rendered = run_program({dot_program->string(), "-Tsvg", "-o", o.svg, dot_file.string()});
    if (!rendered) {
      err << "keyfed: error: dot could not render " << o.svg << ": " << rendered.error().message << "\n";
      return ExitStatus::InternalError;
    }
    out << fmt::format("{} written\n", o.svg);
    return ExitStatus::Ok;
  }
  if (o.dot) {
    out << tb->dot();
    return ExitStatus::Ok;
  }
  json s = tb->status();
  if (o.json) {
    out << s.dump(2) << "\n";
    return ExitStatus::Ok;
  }
  out << fmt::format("testbed {} ({} DNS)\n", s["dir"].get<std::string>(), s["dns"].get<std::string>());
  for (const json& n : s["nodes"]) {
    out << fmt::format("{:<16} pid {:<7} 127.0.0.1:{:<5}  {}\n", n["domain"].get<std::string>(),
                       n["pid"].is_null() ? std::string("-") : n["pid"].dump(), n["port"].get<int>(),
                       n["listening"].get<bool>() ? "listening" : "NOT RUNNING");
    for (const json& session : n["sessions"]) {
      out << fmt::format("    {:<8} {:<16} {}\n", session["direction"].get<std::string>(),
                         session["peer_domain"].get<std::string>(), session["decision"].get<std::string>());
    }
  }
  for (const json& sp : s["special"]) {
    out << fmt::format("{:<16} (DNS only: {})\n", sp["domain"].get<std::string>(), sp["kind"].get<std::string>());
  }
  return ExitStatus::Ok;
}

ExitStatus run(const TestbedCommandOptions& o, std::ostream& out, std::ostream& err) {
  Result<Testbed> tb = Testbed::open(o.dir);
  if (!tb) {
    err << "keyfed: error: " << tb.error().message << "\n";
    return ExitStatus::BadInput;
  }
  std::ostream& progress = o.json ? err : out;
  auto results = run_scenarios(*tb, o.scenarios, progress);
  if (!results) {
    err << "keyfed: error: " << results.error().message << "\n";
    bool not_running = results.error().message.find("not running") != std::string::npos;
    return not_running ? ExitStatus::NotRunning : ExitStatus::BadInput;
  }
  bool all = true;
  for (const ScenarioResult& r : *results) all = all && r.passed;
  if (o.json) {
    json list = json::array();
    for (const ScenarioResult& r : *results) {
      list.push_back({{"scenario", r.scenario}, {"passed", r.passed}, {"seconds", std::round(r.seconds * 10) / 10},
                      {"detail", r.detail}});
    }
    out << list.dump(2) << "\n";
  } else {
    out << fmt::format("\n{:<14} {:<6} {:>8}  {}\n", "SCENARIO", "RESULT", "SECONDS", "DETAIL");
    for (const ScenarioResult& r : *results) {
      out << fmt::format("{:<14} {:<6} {:>8.1f}  {}\n", r.scenario, r.passed ? "pass" : "FAIL", r.seconds, r.detail);
    }
    std::size_t passed = 0;
    for (const ScenarioResult& r : *results) passed += r.passed ? 1 : 0;
    out << fmt::format("{} of {} scenarios passed ({} DNS, {} domains)\n", passed, results->size(), to_string(tb->dns()),
                       tb->nodes().size());
  }
  return all ? ExitStatus::Ok : ExitStatus::InternalError;
}

}  // namespace

CLI::App* add_testbed_command(CLI::App& app, TestbedCommandOptions& o) {
  CLI::App* cmd = app.add_subcommand("testbed", "A federation of many domains on this machine (docs/TESTBED.md)");
  cmd->require_subcommand(1);
  o.up = cmd->add_subcommand("up", "Generate (first time) and start a testbed; returns when every node listens");
  o.up->add_option("--domains", o.domains, "Domains with a node (1..200)")->check(CLI::Range(1, 200));
  o.up->add_option("--dns", o.dns, "embedded (each node loads the signed zones) or knot (one Knot DNS server)")
      ->check(CLI::IsMember({"embedded", "knot"}));
  o.up->add_flag("--special", o.special, "Also the DNS special cases nokeys.test, insecure.test, bogus.test");
  o.up->add_option("--base-port", o.base_port, "DNS on it (knot), node i on base-port + i")->check(CLI::Range(1024, 65000));
  o.up->add_option("--key-ttl", o.key_ttl, "TTL of the KEY records and zones, seconds")->check(CLI::Range(1, 3600));
  o.down = cmd->add_subcommand("down", "Stop every node (SIGTERM) and the DNS server");
  o.down->add_flag("--remove", o.remove, "Then delete the testbed directory");
  o.status = cmd->add_subcommand("status", "Nodes, their sessions and how each was authenticated");
  o.status->add_flag("--json", o.json, "JSON (docs/CLI.md)");
  o.status->add_flag("--dot", o.dot, "A Graphviz graph of domains and sessions on standard output");
  o.status->add_option("--svg", o.svg, "Render the graph into FILE with Graphviz's dot");
  o.run = cmd->add_subcommand("run", "Run scenarios (all by default) and print a summary table");
  o.run->add_option("scenarios", o.scenarios, "Scenarios: messages presence forged-claim bogus-zone rollover "
                                              "key-removed node-restart dns-outage");
  o.run->add_flag("--json", o.json, "An array of {scenario, passed, seconds, detail} on standard output");
  for (CLI::App* sub : {o.up, o.down, o.status, o.run}) {
    sub->add_option("--dir", o.dir, "Testbed directory (default keyfed-testbed)");
  }
  cmd->footer("Exit status: 0 done (run: every scenario passed); 1 a node or the DNS server failed to start, or a\n"
              "scenario failed; 2 bad input or no testbed in --dir; 9 run: a node of the testbed is not running.");
  return cmd;
}

ExitStatus run_testbed(const TestbedCommandOptions& o, std::ostream& out, std::ostream& err) {
  if (o.up->parsed()) return up(o, out, err);
  if (o.down->parsed()) return down(o, out, err);
  if (o.status->parsed()) return status(o, out, err);
  if (o.run->parsed()) return run(o, out, err);
  return ExitStatus::BadInput;
}

}  // namespace keyfed
