#include "cli/user_commands.h"

#include <fstream>
#include <iterator>
#include <optional>
#include <tuple>

#include "daemon/control_client.h"
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
  if (status == "starting") return ExitStatus::NotRunning;
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
        << "  key tag " << (p["key_tag"].is_null() ? std::string("-") : printable(p["key_tag"])) << "  since "
        << (p["since"].is_null() ? std::string("(handshake)") : printable(p["since"])) << "  messages in "
        << printable(p["messages_in"]) << " out " << printable(p["messages_out"]) << "  (all time in "
        << printable(p["total_in"]) << " out " << printable(p["total_out"]) << ")  " << printable(p["address"]) << "\n";
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

// ---- presence, watches, lists, keys ----------------------------------------

namespace {

// One request and its answer; prints a refusal and gives its exit status.
std::optional<json> ask(const std::string& config, const json& request, std::ostream& err, ExitStatus& status) {
  auto client = connect_node(config, err, status);
  if (!client) return std::nullopt;
  auto answer = client->request(request);
  if (!answer) {
    err << "keyfed: error: " << answer.error().message << "\n";
    status = ExitStatus::NotRunning;
    return std::nullopt;
  }
  if (!answer->value("ok", false)) {
    status = refused(*answer, err);
    return std::nullopt;
  }
  return *answer;
}

}  // namespace

void add_presence_commands(CLI::App& app, PresenceCommandOptions& o) {
  CLI::App* presence = app.add_subcommand("presence", "Publish a local user's presence, or show a presentity's");
  presence->add_option("--config", o.config, "The running node's configuration file")->required();
  presence->require_subcommand(1);
  o.presence_set = presence->add_subcommand("set", "Publish USER's status (open or closed) and note");
  o.presence_set->fallthrough();
  o.presence_set->add_option("user", o.user, "The local user: user@domain or pres:user@domain")->required();
  o.presence_set->add_option("status", o.status, "open or closed")->required()->check(CLI::IsMember({"open", "closed"}));
  o.presence_set->add_option("--note", o.note, "A note shown with the status");
  o.presence_get = presence->add_subcommand("get", "Show a presentity's presence: for a remote one, what its domain "
                                                   "last NOTIFYed to us");
  o.presence_get->fallthrough();
  o.presence_get->add_option("uri", o.target, "pres:user@domain or user@domain")->required();
  o.presence_get->add_flag("--json", o.json, "One JSON object");
  presence->footer("Exit status: 0 done; 2 bad input (not a local user, a bad note); 9 the node is not running.");

  for (auto [name, cmd, help] : {std::tuple{"watch", &o.watch, "WATCHER (a local user) watches PRESENTITY"},
                                 std::tuple{"unwatch", &o.unwatch, "WATCHER stops watching PRESENTITY"}}) {
    *cmd = app.add_subcommand(name, help);
    (*cmd)->add_option("--config", o.config, "The running node's configuration file")->required();
    (*cmd)->add_option("watcher", o.user, "The local watcher: user@domain or pres:user@domain")->required();
    (*cmd)->add_option("presentity", o.target, "The presentity: user@domain or pres:user@domain")->required();
    (*cmd)->footer("Exit status: 0 done; 2 bad input; 9 the node is not running.");
  }
  for (auto [name, cmd, help] :
       {std::tuple{"allow", &o.allow, "Let PATTERN see USER's presence, or write to USER's inbox"},
        std::tuple{"deny", &o.deny, "Keep PATTERN from USER's presence, or from USER's inbox"}}) {
    *cmd = app.add_subcommand(name, help);
    (*cmd)->add_option("--config", o.config, "The running node's configuration file")->required();
    (*cmd)->add_option("user", o.user, "The local user whose list it is")->required();
    (*cmd)->add_option("list", o.list, "presence or inbox")->required()->check(CLI::IsMember({"presence", "inbox"}));
    (*cmd)->add_option("pattern", o.target, "user@domain, or *@domain for a whole domain")->required();
    (*cmd)->footer("Replaces an entry for the same pattern. Deny wins over allow.\n"
                   "Exit status: 0 done; 2 bad input; 9 the node is not running.");
  }
  o.acl = app.add_subcommand("acl", "Show a local user's allow/deny lists, watchers and watches");
  o.acl->add_option("--config", o.config, "The running node's configuration file")->required();
  o.acl->add_option("user", o.user, "The local user")->required();
  o.acl->add_option("--remove", o.remove, "Remove the entry of LIST (presence or inbox) for PATTERN instead")
      ->expected(2)
      ->type_name("LIST PATTERN");
  o.acl->add_flag("--json", o.json, "One JSON object");
  o.acl->footer("Exit status: 0 done; 2 bad input; 9 the node is not running.");
  o.keys = app.add_subcommand("keys", "Show the running node's key cache");
  o.keys->add_option("--config", o.config, "The running node's configuration file")->required();
  o.keys->add_flag("--json", o.json, "One JSON array, each entry as lookup --json prints it");
  o.keys->footer("Exit status: 0 shown; 2 bad input; 9 the node is not running.");
}

bool presence_command_parsed(const PresenceCommandOptions& o) {
  for (CLI::App* cmd : {o.presence_set, o.presence_get, o.watch, o.unwatch, o.allow, o.deny, o.acl, o.keys}) {
    if (cmd != nullptr && cmd->parsed()) return true;
  }
  return false;
}

ExitStatus run_presence_command(const PresenceCommandOptions& o, std::ostream& out, std::ostream& err) {
  ExitStatus status = ExitStatus::Ok;
  if (o.presence_set->parsed()) {
    if (!ask(o.config, {{"command", "presence-set"}, {"user", o.user}, {"status", o.status}, {"note", o.note}}, err,
             status)) {
      return status;
    }
    return ExitStatus::Ok;
  }
  if (o.presence_get->parsed()) {
    auto answer = ask(o.config, {{"command", "presence-get"}, {"presentity", o.target}}, err, status);
    if (!answer) return status;
    if (o.json) {
      answer->erase("ok");
      out << answer->dump(2, ' ', false, json::error_handler_t::replace) << "\n";
    } else if ((*answer)["document"].is_null()) {
      out << printable((*answer)["presentity"]) << "  (nothing known)\n";
    } else {
      out << printable((*answer)["presentity"]) << "  "
          << ((*answer)["basic"].is_string() ? printable((*answer)["basic"]) : "unknown") << "  "
          << printable((*answer)["note"]) << "  (updated " << printable((*answer)["updated"]) << ")\n";
    }
    return ExitStatus::Ok;
  }
  if (o.watch->parsed() || o.unwatch->parsed()) {
    json request = {{"command", o.watch->parsed() ? "watch" : "unwatch"}, {"watcher", o.user}, {"presentity", o.target}};
    return ask(o.config, request, err, status) ? ExitStatus::Ok : status;
  }
  if (o.allow->parsed() || o.deny->parsed()) {
    json request = {{"command", "acl-set"}, {"user", o.user}, {"list", o.list}, {"pattern", o.target},
                    {"verdict", o.allow->parsed() ? "allow" : "deny"}};
    return ask(o.config, request, err, status) ? ExitStatus::Ok : status;
  }
  if (o.acl->parsed() && !o.remove.empty()) {
    json request = {{"command", "acl-set"}, {"user", o.user}, {"list", o.remove[0]}, {"pattern", o.remove[1]},
                    {"verdict", nullptr}};
    return ask(o.config, request, err, status) ? ExitStatus::Ok : status;
  }
  if (o.acl->parsed()) {
    auto answer = ask(o.config, {{"command", "acl"}, {"user", o.user}}, err, status);
    if (!answer) return status;
    if (o.json) {
      answer->erase("ok");
      out << answer->dump(2, ' ', false, json::error_handler_t::replace) << "\n";
      return ExitStatus::Ok;
    }
    for (const char* list : {"presence", "inbox"}) {
      out << list << " (default " << printable((*answer)[std::string(list) + "_default"]) << "):\n";
      for (const json& e : (*answer)[list]) out << "  " << printable(e["verdict"]) << "  " << printable(e["pattern"]) << "\n";
    }
    out << "watchers:\n";
    for (const json& w : (*answer)["watchers"]) {
      out << "  " << printable(w["uri"]) << (w.value("authorized", false) ? "  authorized" : "  not authorized")
          << (w.value("remote", false) ? "  (remote)" : "") << "\n";
    }
    out << "watching:\n";
    for (const json& p : (*answer)["watching"]) out << "  " << printable(p) << "\n";
    return ExitStatus::Ok;
  }
  if (o.keys->parsed()) {
    auto answer = ask(o.config, {{"command", "keys"}}, err, status);
    if (!answer) return status;
    const json& keys = (*answer)["keys"];
    if (o.json) {
      out << keys.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
      return ExitStatus::Ok;
    }
    for (const json& k : keys) {
      out << printable(k["domain"]) << "  " << printable(k["outcome"]) << "  expires in "
          << k.value("expires_in", std::int64_t{0}) << " s";
      for (const json& key : k["keys"]) out << "  tag " << key.value("key_tag", 0);
      out << "\n";
    }
    return ExitStatus::Ok;
  }
  return ExitStatus::BadInput;
}

}  // namespace keyfed
