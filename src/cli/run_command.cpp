#include "cli/run_command.h"

#include <csignal>
#include <optional>

#include <uv.h>

#include "common/log.h"
#include "common/uv_handle.h"
#include "config/node_config.h"
#include "dnskey/key_cache.h"
#include "dnskey/resolver.h"
#include "federation/node.h"

namespace keyfed {
namespace {

// A configured peer the node keeps a session with: reconnected after a
// failure or a close, with a delay that doubles from 1 s up to 5 minutes
// (a deferred peer, docs/POLICY.md §1, is retried this way).
struct PeerLink {
  StaticPeer peer;
  UvHandle<uv_timer_t> retry;
  std::chrono::milliseconds backoff{1000};
  std::optional<std::uint64_t> session;
};

inline constexpr std::chrono::milliseconds kMaxBackoff{300000};

// Everything a running node owns, torn down in reverse order.
struct Daemon {
  std::filesystem::path config_path;
  NodeConfig config;
  uv_loop_t* loop = nullptr;
  std::unique_ptr<KeyResolver> resolver;
  std::unique_ptr<KeyCache> cache;
  std::unique_ptr<Node> node;
  std::vector<UvHandle<uv_signal_t>> signals;
  std::vector<std::unique_ptr<PeerLink>> links;
  bool stopping = false;

  void start_links() {
    for (const StaticPeer& peer : config.peers) {
      auto link = std::make_unique<PeerLink>();
      link->peer = peer;
      link->retry = make_uv_handle<uv_timer_t>();
      uv_timer_init(loop, link->retry.get());
      connect(*link);
      links.push_back(std::move(link));
    }
  }

  void connect(PeerLink& link) {
    const std::string& local = config.federation.domains.front().domain;
    PeerLink* l = &link;
    node->connect(local, link.peer.domain, link.peer.address, link.peer.port, [this, l](Result<SessionInfo> r) {
      if (r) {
        l->session = r->id;
        l->backoff = std::chrono::milliseconds(1000);
        return;
      }
      log_at(LogLevel::Warning, "no session with {} at {}:{}: {}; retrying in {} ms", l->peer.domain,
             l->peer.address, l->peer.port, r.error().message, l->backoff.count());
      schedule(*l);
    });
  }

  void schedule(PeerLink& link) {
    if (stopping) return;
    link.retry->data = &link;
    uv_timer_start(link.retry.get(), [](uv_timer_t* t) {
      auto* l = static_cast<PeerLink*>(t->data);
      Daemon* d = static_cast<Daemon*>(t->loop->data);
      if (!d->stopping) d->connect(*l);
    }, static_cast<std::uint64_t>(link.backoff.count()), 0);
    link.backoff = std::min(link.backoff * 2, kMaxBackoff);
  }

  void on_session_closed(const SessionInfo& info) {
    for (auto& link : links) {
      if (link->session == info.id) {
        link->session.reset();
        schedule(*link);
      }
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
    stopping = true;
    links.clear();
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
      loop.data = &daemon;
      Node::Handlers handlers;
      handlers.on_session_closed = [&daemon](const SessionInfo& info, const std::string&) {
        daemon.on_session_closed(info);
      };
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
      daemon.start_links();
      uv_run(&loop, UV_RUN_DEFAULT);
    }
    daemon.stopping = true;
    daemon.links.clear();
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
