#include "cli/run_command.h"

#include <csignal>

#include <uv.h>

#include "common/log.h"
#include "common/uv_handle.h"
#include "config/node_config.h"
#include "dnskey/key_cache.h"
#include "dnskey/resolver.h"
#include "federation/node.h"

namespace keyfed {
namespace {

// Everything a running node owns, torn down in reverse order.
struct Daemon {
  std::filesystem::path config_path;
  NodeConfig config;
  uv_loop_t* loop = nullptr;
  std::unique_ptr<KeyResolver> resolver;
  std::unique_ptr<KeyCache> cache;
  std::unique_ptr<Node> node;
  std::vector<UvHandle<uv_signal_t>> signals;

  void connect_static_peers() {
    const std::string& local = config.federation.domains.front().domain;
    for (const StaticPeer& peer : config.peers) {
      node->connect(local, peer.domain, peer.address, peer.port, [peer](Result<SessionInfo> r) {
        if (!r) log_at(LogLevel::Warning, "no session with {} at {}:{}: {}", peer.domain, peer.address, peer.port,
                       r.error().message);
      });
    }
  }

  void reload() {
    Result<NodeConfig> next = load_node_config(config_path);
    if (!next) {
      log_at(LogLevel::Error, "reload refused, keeping the running configuration: {}", next.error().message);
      return;
    }
    if (Status s = resolver->reload(next->resolver); !s) {
      log_at(LogLevel::Error, "reload refused: {}", s.error().message);
      return;
    }
    if (Status s = node->reload(next->federation); !s) {
      log_at(LogLevel::Error, "reload refused: {}", s.error().message);
      return;
    }
    set_log_level(next->log_level);
    config = std::move(next).value();
    log_at(LogLevel::Info, "reloaded {}", config_path.string());
  }

  void shutdown(int signum) {
    log_at(LogLevel::Info, "signal {}: closing sessions", signum);
    node.reset();  // sends ERROR Shutdown and close_notify on every session
    cache.reset();
    resolver.reset();
    signals.clear();  // nothing is left to keep the loop running once sessions have closed
  }
};

}  // namespace

CLI::App* add_run_command(CLI::App& app, RunOptions& options) {
  CLI::App* cmd = app.add_subcommand("run", "Run a federation node in the foreground (logs on stderr)");
  cmd->add_option("--config", options.config, "Node configuration file (TOML, docs/CONFIG.md)")->required();
  cmd->footer("Signals: SIGTERM/SIGINT close sessions cleanly and exit 0; SIGHUP reloads keys, policy and zones.\n"
              "Exit status: 0 after a clean shutdown, 2 for a bad configuration, 1 if the node cannot start.");
  return cmd;
}

ExitStatus run_node(const RunOptions& options, std::ostream& err) {
  Daemon daemon;
  daemon.config_path = options.config;
  Result<NodeConfig> config = load_node_config(options.config);
  if (!config) {
    err << "keyfed: error: " << config.error().message << "\n";
    return ExitStatus::BadInput;
  }
  if (config->federation.domains.empty()) {
    err << "keyfed: error: " << options.config << ": no [[domains]]: the node would host nothing\n";
    return ExitStatus::BadInput;
  }
  daemon.config = std::move(config).value();
  set_log_level(daemon.config.log_level);

  uv_loop_t loop;
  uv_loop_init(&loop);
  daemon.loop = &loop;
  ExitStatus status = ExitStatus::Ok;
  {
    auto resolver = KeyResolver::create(&loop, daemon.config.resolver);
    if (!resolver) {
      err << "keyfed: error: " << resolver.error().message << "\n";
      status = ExitStatus::BadInput;
    } else {
      daemon.resolver = std::move(resolver).value();
      daemon.cache = std::make_unique<KeyCache>(*daemon.resolver, daemon.config.key_cache);
      Node::Handlers handlers;
      handlers.on_message = [](const DeliveredMessage& m) {
        log_at(LogLevel::Info, "message {} -> {} ({} bytes, sender domain {})", m.routing.from.uri,
               m.routing.to.front().uri, m.cpim.size(), to_string(m.session.decision));
      };
      auto node = Node::create(&loop, *daemon.cache, daemon.config.federation, std::move(handlers));
      if (!node) {
        err << "keyfed: error: " << node.error().message << "\n";
        status = ExitStatus::BadInput;
      } else {
        daemon.node = std::move(node).value();
        if (Status s = daemon.node->listen(daemon.config.listen_address, daemon.config.listen_port); !s) {
          err << "keyfed: error: " << s.error().message << "\n";
          status = ExitStatus::InternalError;
        }
      }
    }
    if (status == ExitStatus::Ok) {
      for (int signum : {SIGTERM, SIGINT, SIGHUP}) {
        auto handle = make_uv_handle<uv_signal_t>();
        uv_signal_init(&loop, handle.get());
        handle->data = &daemon;
        uv_signal_start(handle.get(), [](uv_signal_t* h, int s) {
          auto* d = static_cast<Daemon*>(h->data);
          if (s == SIGHUP) {
            d->reload();
          } else {
            d->shutdown(s);
          }
        }, signum);
        daemon.signals.push_back(std::move(handle));
      }
      daemon.connect_static_peers();
      uv_run(&loop, UV_RUN_DEFAULT);
    }
    daemon.node.reset();
    daemon.cache.reset();
    daemon.resolver.reset();
    daemon.signals.clear();
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  if (status == ExitStatus::Ok) log_at(LogLevel::Info, "stopped");
  return status;
}

}  // namespace keyfed
