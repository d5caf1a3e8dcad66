#include "cli/user_commands.h"

#include <fstream>
#include <iterator>

#include "cli/control_client.h"
#include "common/log.h"
#include "config/node_config.h"
#include "daemon/control_socket.h"

namespace keyfed {

namespace {

using nlohmann::json;

// The node named by the configuration file, or the exit status to give.
Result<ControlClient> connect_node(const std::string& config_path, std::ostream& err, ExitStatus& status) {
  Result<NodeConfig> config = load_node_config(config_path);
  if (!config) {
    status = ExitStatus::BadInput;
    err << "keyfed: error: " << config.error().message << "\n";
    return config.error();
  }
  auto client = ControlClient::connect(config->control.socket);
  if (!client) {
    status = ExitStatus::NotRunning;
    err << "keyfed: error: " << client.error().message << "\n";
  }
  return client;
}

// A refusal from the node: its status word to an exit status.
ExitStatus refused(const json& answer, std::ostream& err) {
  err << "keyfed: error: " << escape_text(answer.value("error", "refused")) << "\n";
  std::string status = answer.value("status", "");
  if (status == "store") return ExitStatus::InternalError;
  return ExitStatus::BadInput;
}

std::string printable(const json& value) {
  return value.is_string() ? escape_text(value.get<std::string>()) : escape_text(value.dump());
}

}  // namespace

CLI::App* add_inbox_command(CLI::App& app, UserCommandOptions& options) {
  CLI::App* cmd = app.add_subcommand("inbox", "Show a local user's messages, oldest first");
  cmd->add_option("--config", options.config, "The running node's configuration file")->required();
  cmd->add_option("user", options.user, "The local user: user@domain or im:user@domain")->required();
  cmd->add_flag("--json", options.json, "One JSON array (with --follow: one object per line)");
  cmd->add_flag("--take", options.take, "Remove the messages printed");
  cmd->add_flag("--follow", options.follow, "Keep printing new messages as they arrive");
  cmd->footer("Exit status: 0 shown; 2 bad input (not a local user); 9 the node is not running.");
  return cmd;
}

CLI::App* add_queue_command(CLI::App& app, UserCommandOptions& options) {
  CLI::App* cmd = app.add_subcommand("queue", "Show the outbound queue: messages on their way to other domains");
  cmd->add_option("--config", options.config, "The running node's configuration file")->required();
  cmd->add_flag("--json", options.json, "One JSON array");
  cmd->footer("Exit status: 0 shown; 2 bad input; 9 the node is not running.");
  return cmd;
}

CLI::App* add_peers_command(CLI::App& app, UserCommandOptions& options) {
  CLI::App* cmd = app.add_subcommand("peers", "Show the live sessions with peer domains");
  cmd->add_option("--config", options.config, "The running node's configuration file")->required();
  cmd->add_flag("--json", options.json, "One JSON array");
  cmd->footer("Exit status: 0 shown; 2 bad input; 9 the node is not running.");
  return cmd;
}

ExitStatus run_inbox(const UserCommandOptions& options, std::ostream& out, std::ostream& err) {
  ExitStatus status = ExitStatus::Ok;
  auto client = connect_node(options.config, err, status);
  if (!client) return status;
  auto answer = client->request({{"command", "inbox"}, {"user", options.user}, {"follow", options.follow}});
  if (!answer) return err << "keyfed: error: " << answer.error().message << "\n", ExitStatus::NotRunning;
  if (!answer->value("ok", false)) return refused(*answer, err);
  auto print = [&](const json& m) {
    if (options.json) {
      out << m.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
    } else {
      out << printable(m["received"]) << "  " << printable(m["from"]) << " -> " << printable(m["to"]) << "  ["
          << printable(m["decision"]) << " via " << printable(m["peer_domain"]) << "]  id " << printable(m["id"])
          << "\n";
    }
    out.flush();
  };
  const json& messages = (*answer)["messages"];
  if (options.json && !options.follow) {
    out << messages.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
  } else {
    for (const json& m : messages) print(m);
  }
  out.flush();
  // --take: removed only now that they are printed, up to the last one shown.
  if (options.take && !messages.empty()) {
    auto taken = client->request({{"command", "take"}, {"user", options.user},
                                  {"through_seq", messages.back().value("seq", std::int64_t{0})}});
    if (!taken) return err << "keyfed: error: " << taken.error().message << "\n", ExitStatus::NotRunning;
    if (!taken->value("ok", false)) return refused(*taken, err);
  }
  while (options.follow) {
    auto next = client->receive();
    if (!next) return ExitStatus::Ok;  // the node stopped
    if (next->contains("message")) print((*next)["message"]);
  }
  return ExitStatus::Ok;
}

ExitStatus run_queue(const UserCommandOptions& options, std::ostream& out, std::ostream& err) {
  ExitStatus status = ExitStatus::Ok;
  auto client = connect_node(options.config, err, status);
  if (!client) return status;
  auto answer = client->request({{"command", "queue"}});
  if (!answer) return err << "keyfed: error: " << answer.error().message << "\n", ExitStatus::NotRunning;
  if (!answer->value("ok", false)) return refused(*answer, err);
  const json& queue = (*answer)["queue"];
  if (options.json) {
    out << queue.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
    return ExitStatus::Ok;
  }
  for (const json& e : queue) {
    out << printable(e["id"]) << "  " << printable(e["from"]) << " -> " << printable(e["to_domain"]) << "  "
        << printable(e["state"]) << "  attempts " << e.value("attempts", 0);
    if (e["state"] == "queued") out << "  next " << printable(e["next_attempt"]);
    if (!e.value("last_error", "").empty()) out << "  last error: " << printable(e["last_error"]);
    out << "\n";
  }
  return ExitStatus::Ok;
}

ExitStatus run_peers(const UserCommandOptions& options, std::ostream& out, std::ostream& err) {
  ExitStatus status = ExitStatus::Ok;
  auto client = connect_node(options.config, err, status);
  if (!client) return status;
  auto answer = client->request({{"command", "peers"}});
  if (!answer) return err << "keyfed: error: " << answer.error().message << "\n", ExitStatus::NotRunning;
  if (!answer->value("ok", false)) return refused(*answer, err);
  const json& peers = (*answer)["peers"];
  if (options.json) {
    out << peers.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
    return ExitStatus::Ok;
  }
  for (const json& p : peers) {
    out << printable(p["peer_domain"]) << "  " << printable(p["direction"]) << "  " << printable(p["decision"])
        << "  " << printable(p["address"]) << (p.value("established", false) ? "" : "  (handshake)") << "\n";
  }
  return ExitStatus::Ok;
}

ExitStatus submit_messages(const std::string& config, const std::vector<std::string>& files, bool json_output,
                           std::ostream& out, std::ostream& err) {
  // Every file is read before anything is submitted: a typo submits nothing.
  std::vector<std::vector<std::uint8_t>> messages;
  for (const std::string& file : files) {
    std::ifstream in(file, std::ios::binary);
    if (!in) return err << "keyfed: error: " << file << ": cannot read the message\n", ExitStatus::BadInput;
    messages.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  ExitStatus status = ExitStatus::Ok;
  auto client = connect_node(config, err, status);
  if (!client) return status;
  for (std::size_t i = 0; i < files.size(); ++i) {
    json request = {{"command", "submit"}};
    request["cpim_base64"] = base64_encode(messages[i]);
    auto answer = client->request(request);
    if (!answer) return err << "keyfed: error: " << answer.error().message << "\n", ExitStatus::NotRunning;
    if (!answer->value("ok", false)) {
      err << "keyfed: error: " << files[i] << ": ";
      return refused(*answer, err);
    }
    std::string id = answer->value("id", "");
    if (json_output) {
      out << json({{"file", files[i]}, {"id", id}}).dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
    } else {
      out << id << "\n";
    }
  }
  return ExitStatus::Ok;
}

}  // namespace keyfed
