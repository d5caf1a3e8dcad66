#include "cli/send_command.h"

#include <fstream>
#include <iterator>
#include <optional>

#include <nlohmann/json.hpp>
#include <uv.h>

#include "common/log.h"
#include "config/node_config.h"
#include "daemon/daemon.h"
#include "dnskey/key_cache.h"
#include "dnskey/resolver.h"
#include "federation/cpim.h"
#include "federation/node.h"
#include "cli/user_commands.h"

namespace keyfed {

CLI::App* add_send_command(CLI::App& app, SendOptions& options) {
  CLI::App* cmd = app.add_subcommand(
      "send", "Submit message/cpim files to the running node, as their From user (a local user)");
  cmd->add_option("message", options.message_files, "Files holding message/cpim (RFC 3862) bytes")->required();
  cmd->add_option("--config", options.config, "The node's configuration file")->required();
  cmd->add_flag("--direct", options.direct,
                "Do not use the running node: open one session of its own as the From domain and send one message");
  cmd->add_option("--address", options.address, "With --direct: server address (default: [[peers]] entry, else discovery)");
  cmd->add_option("--port", options.port, "With --direct: server port (default 5269)")->check(CLI::Range(1, 65535));
  cmd->add_flag("--json", options.json, "Print the result as JSON");
  cmd->footer("Exit status: 0 every message committed by the node (its id printed); 2 bad input (a file, the\n"
              "message, a From that is not a local user, an unknown local recipient); 9 the node is not running;\n"
              "1 the node's store failed. With --direct: 0 delivered (ACK); 7 refused by the receiver (NACK);\n"
              "8 no session (discovery, connection or authentication failed).");
  return cmd;
}

ExitStatus run_send(const SendOptions& options, std::ostream& out, std::ostream& err) {
  auto fail = [&](ExitStatus status, const std::string& message) {
    err << "keyfed: error: " << message << "\n";
    return status;
  };
  if (!options.direct) {
    if (!options.address.empty() || options.port != 0) return fail(ExitStatus::BadInput, "--address and --port need --direct");
    return submit_messages(options.config, options.message_files, options.json, out, err);
  }
  if (options.message_files.size() != 1) return fail(ExitStatus::BadInput, "--direct sends one message");
  const std::string& message_file = options.message_files.front();
  Result<NodeConfig> config = load_node_config(options.config);
  if (!config) return fail(ExitStatus::BadInput, config.error().message);
  std::ifstream file(message_file, std::ios::binary);
  if (!file) return fail(ExitStatus::BadInput, message_file + ": cannot read the message");
  std::vector<std::uint8_t> cpim{std::istreambuf_iterator<char>(file), {}};
  Result<CpimMessage> routing = parse_cpim(cpim);
  if (!routing) return fail(ExitStatus::BadInput, message_file + ": " + routing.error().message);
  const std::string& from = routing->from.domain;
  const std::string& to = routing->to.front().domain;
  bool hosted = false;
  for (const HostedDomain& d : config->federation.domains) hosted |= d.domain == from;
  if (!hosted) return fail(ExitStatus::BadInput, fmt::format("{} does not host the sender's domain {}", options.config, from));
  // Only the sending domain's identity is needed.
  std::erase_if(config->federation.domains, [&](const HostedDomain& d) { return d.domain != from; });
  config->federation.revalidate_interval = std::chrono::milliseconds(0);
  set_log_level(LogLevel::Warning);

  std::string address = options.address;
  int port = options.port != 0 ? options.port : kDefaultFederationPort;
  for (const StaticPeer& peer : config->peers) {
    if (address.empty() && peer.domain == to) {
      address = peer.address;
      port = peer.port;
    }
  }
  ExitStatus status = ExitStatus::Ok;
  std::string detail;
  std::optional<SessionInfo> session_info;
  {
    Reactor reactor;  // resolver, cache and a node without a listener
    Node::Handlers handlers;
    handlers.audit = [](const std::string& line) { log_line(LogLevel::Info, "audit " + line); };
    if (Status started = reactor.start(std::move(config).value(), DaemonParts::Node, handlers); !started) {
      status = ExitStatus::BadInput;
      detail = started.error().message;
    } else {
      Node* node = &reactor.daemon().node();
      bool done = false;
      auto on_session = [&](Result<SessionInfo> session) {
        if (!session) {
          status = ExitStatus::NoSession;
          detail = session.error().message;
          done = true;
          return;
        }
        session_info = *session;
        Status sent = node->send_message(session->id, cpim, [&](Status ack) {
          if (!ack) {
            status = ExitStatus::Refused;
            detail = ack.error().message;
          }
          done = true;
        });
        if (!sent) {
          status = ExitStatus::NoSession;
          detail = sent.error().message;
          done = true;
        }
      };
      if (address.empty()) {
        node->connect_domain(from, to, on_session);
      } else {
        node->connect(from, to, address, port, on_session);
      }
      if (!reactor.run_until([&] { return done; })) {
        status = ExitStatus::NoSession;
        detail = "the session ended without an answer";
      }
    }
  }

  if (options.json) {
    nlohmann::json result = {{"from", routing->from.uri},
                             {"to", routing->to.front().uri},
                             {"delivered", status == ExitStatus::Ok},
                             {"bytes", cpim.size()}};
    if (session_info) {
      result["peer_address"] = session_info->peer_address;
      result["decision"] = std::string(to_string(session_info->decision));
    }
    if (!detail.empty()) result["error"] = detail;
    out << result.dump() << "\n";
  } else if (status == ExitStatus::Ok) {
    out << fmt::format("delivered: {} -> {} via {} ({})\n", routing->from.uri, routing->to.front().uri,
                       session_info->peer_address, to_string(session_info->decision));
  }
  if (status != ExitStatus::Ok) err << "keyfed: error: " << detail << "\n";
  return status;
}

}  // namespace keyfed
