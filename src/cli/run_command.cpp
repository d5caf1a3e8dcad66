#include "cli/run_command.h"

#include <csignal>

#include <uv.h>

#include "common/log.h"
#include "common/uv_handle.h"
#include "config/node_config.h"
#include "daemon/daemon.h"

namespace keyfed {

CLI::App* add_run_command(CLI::App& app, RunOptions& options) {
  CLI::App* cmd = app.add_subcommand("run", "Run a federation node in the foreground (logs on stderr)");
  cmd->add_option("--config", options.config, "Node configuration file (TOML, docs/CONFIG.md)")->required();
  cmd->footer("Signals: SIGTERM/SIGINT close sessions cleanly and exit 0; SIGHUP reloads the whole configuration\n"
              "(all of it or, if any part is bad, none of it).\n"
              "Exit status: 0 after a clean shutdown, 2 for a bad configuration, 1 if the node cannot start.");
  return cmd;
}

ExitStatus run_node(const RunOptions& options, std::ostream& err) {
  Result<NodeConfig> config = load_node_config(options.config);
  if (!config) {
    err << "keyfed: error: " << config.error().message << "\n";
    return ExitStatus::BadInput;
  }
  if (config->federation.domains.empty()) {
    err << "keyfed: error: " << options.config << ": no [[domains]]: the node would host nothing\n";
    return ExitStatus::BadInput;
  }
  ExitStatus status = ExitStatus::Ok;
  {
    Reactor reactor;
    if (Status started = reactor.start(std::move(config).value(), DaemonParts::Full); !started) {
      err << "keyfed: error: " << started.error().message << "\n";
      // A port that cannot be bound is not a bad configuration file.
      status = started.error().message.starts_with("cannot bind") || started.error().message.starts_with("cannot listen")
                   ? ExitStatus::InternalError
                   : ExitStatus::BadInput;
    } else {
      std::vector<UvHandle<uv_signal_t>> signals;
      struct Context {
        Reactor* reactor;
        std::string path;
        std::vector<UvHandle<uv_signal_t>>* signals;
      } context{&reactor, options.config, &signals};
      for (int signum : {SIGTERM, SIGINT, SIGHUP}) {
        auto handle = make_uv_handle<uv_signal_t>();
        uv_signal_init(reactor.loop(), handle.get());
        handle->data = &context;
        uv_signal_start(handle.get(), [](uv_signal_t* h, int s) {
          auto* c = static_cast<Context*>(h->data);
          if (!c->reactor->running()) return;
          if (s == SIGHUP) {
            Result<NodeConfig> next = load_node_config(c->path);
            Status reloaded = next ? c->reactor->daemon().reload(std::move(next).value()) : Status(next.error());
            if (reloaded) {
              log_at(LogLevel::Info, "reloaded {}", c->path);
            } else {
              log_at(LogLevel::Error, "reload refused, the running configuration stays: {}",
                     reloaded.error().message);
            }
            return;
          }
          log_at(LogLevel::Info, "signal {}: closing sessions", s);
          c->reactor->stop_daemon();  // every session gets ERROR Shutdown; node, cache, resolver close in order
          c->signals->clear();        // nothing is left to keep the loop running once sessions have closed
        }, signum);
        signals.push_back(std::move(handle));
      }
      reactor.run();
      signals.clear();
    }
  }  // the reactor tears down in order
  if (status == ExitStatus::Ok) log_at(LogLevel::Info, "stopped");
  return status;
}

}  // namespace keyfed
