// The commands of the control socket (docs/CONTROL.md), answered by the
// running daemon. Every answer is one JSON object with "ok"; a refusal has
// "error" (for a person) and "status" (a stable word, for scripts).
#include <ctime>

#include "common/log.h"
#include "daemon/daemon.h"

namespace keyfed {

namespace {

using nlohmann::json;

std::string rfc3339(UnixMs ms) {
  std::time_t seconds = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &tm);
  return fmt::format("{}.{:03d}Z", text, static_cast<int>(ms % 1000));
}

json inbox_json(std::int64_t seq, const InboxMessage& m) {
  json out = {{"id", m.id},           {"from", m.from},         {"to", m.to},
              {"owner", m.owner},     {"peer_domain", m.peer_domain}, {"decision", m.decision},
              {"received", rfc3339(m.received)}};
  if (seq > 0) out["seq"] = seq;
  put_cpim(out, m.cpim);
  return out;
}

json refusal(std::string_view status, std::string error) {
  return {{"ok", false}, {"status", status}, {"error", std::move(error)}};
}

// "alice@alpha.test", "im:alice@alpha.test" or "pres:alice@alpha.test".
std::optional<CpimAddress> user_address(const json& value) {
  if (!value.is_string()) return std::nullopt;
  std::string text = value.get<std::string>();
  if (text.starts_with("pres:")) {
    auto a = parse_user_uri(text, UriScheme::Pres);
    return a ? std::optional<CpimAddress>(*a) : std::nullopt;
  }
  if (!text.starts_with("im:")) text = "im:" + text;
  auto a = parse_user_uri(text, UriScheme::Im);
  return a ? std::optional<CpimAddress>(*a) : std::nullopt;
}

bool flag(const json& request, const char* name) {
  auto it = request.find(name);
  return it != request.end() && it->is_boolean() && it->get<bool>();
}

}  // namespace

void Daemon::on_control(const json& request, const ControlSocket::Send& send) {
  auto command_it = request.find("command");
  if (command_it == request.end() || !command_it->is_string()) {
    send(refusal("bad-request", "a request needs \"command\" (docs/CONTROL.md)"));
    return;
  }
  const std::string command = command_it->get<std::string>();

  if (command == "submit") {
    std::vector<std::uint8_t> cpim;
    if (auto it = request.find("cpim_base64"); it != request.end() && it->is_string()) {
      auto decoded = base64_decode(it->get<std::string>());
      if (!decoded) return (void)send(refusal("bad-request", "cpim_base64: " + decoded.error().message));
      cpim = std::move(decoded).value();
    } else if (auto text = request.find("cpim"); text != request.end() && text->is_string()) {
      const std::string& s = text->get_ref<const std::string&>();
      cpim.assign(s.begin(), s.end());
    } else {
      return (void)send(refusal("bad-request", "submit needs \"cpim\" (a string) or \"cpim_base64\""));
    }
    messages_->submit(std::move(cpim), [send](std::variant<MessageService::Submitted, MessageService::SubmitError> r) {
      if (auto* ok = std::get_if<MessageService::Submitted>(&r)) {
        send({{"ok", true}, {"id", ok->id}, {"duplicate", ok->duplicate}});
        return;
      }
      const auto& e = std::get<MessageService::SubmitError>(r);
      static constexpr const char* kStatus[] = {"bad-message", "not-local-user", "unknown-recipient", "store"};
      send(refusal(kStatus[static_cast<int>(e.refusal)], e.message));
    });
    return;
  }

  if (command == "inbox" || command == "take") {
    auto user = user_address(request.value("user", json()));
    if (!user || !messages_->is_local_user(user->user, user->domain)) {
      return (void)send(refusal("unknown-user", "\"user\" must be a local user (user@domain)"));
    }
    std::string owner = user->user + "@" + user->domain;
    if (command == "take") {
      // Removal is its own request, made once the client has the messages:
      // an answer lost on the way never costs a message.
      auto through = request.find("through_seq");
      if (through == request.end() || !through->is_number_integer()) {
        return (void)send(refusal("bad-request", "take needs \"through_seq\" (an integer from inbox)"));
      }
      store_->take(owner, through->get<std::int64_t>(), [send](Result<std::size_t> taken) {
        if (!taken) return (void)send(refusal("store", taken.error().message));
        send({{"ok", true}, {"taken", *taken}});
      });
      return;
    }
    bool follow = flag(request, "follow");
    store_->inbox(owner, 0, [this, send, owner, follow](Result<std::vector<InboxEntry>> r) {
      if (!r) return (void)send(refusal("store", r.error().message));
      json list = json::array();
      for (const InboxEntry& e : *r) list.push_back(inbox_json(e.seq, e.message));
      if (!send({{"ok", true}, {"messages", list}, {"following", follow}})) return;
      if (!follow) return;
      // Streamed until the client goes away.
      auto id = std::make_shared<std::uint64_t>(0);
      *id = messages_->listen_inbox([this, send, owner, id](const InboxMessage& m) {
        // A client that went away stops listening at the next message for anyone.
        if (!send(nullptr)) return messages_->stop_listening(*id);
        if (m.owner != owner) return;
        if (!send({{"message", inbox_json(0, m)}})) messages_->stop_listening(*id);
      });
    });
    return;
  }

  if (command == "queue") {
    store_->queue([send](Result<std::vector<QueueEntry>> r) {
      if (!r) return (void)send(refusal("store", r.error().message));
      json list = json::array();
      for (const QueueEntry& e : *r) {
        json item = {{"id", e.message.id},
                     {"from", e.message.sender},
                     {"to_domain", e.message.to_domain},
                     {"state", std::string(queue_state_name(e.state))},
                     {"attempts", e.attempts},
                     {"submitted", rfc3339(e.message.submitted)},
                     {"last_error", e.last_error}};
        item["next_attempt"] = e.state == QueueState::Queued ? json(rfc3339(e.next_attempt)) : json(nullptr);
        item["finished"] = e.state == QueueState::Queued ? json(nullptr) : json(rfc3339(e.finished));
        list.push_back(std::move(item));
      }
      send({{"ok", true}, {"queue", list}});
    });
    return;
  }

  if (command == "peers") {
    json list = json::array();
    for (const SessionInfo& s : node_->sessions()) {
      json item = {{"id", s.id},
                   {"peer_domain", s.peer_domain},
                   {"local_domain", s.local_domain},
                   {"direction", s.direction == Direction::Inbound ? "inbound" : "outbound"},
                   {"decision", std::string(to_string(s.decision))},
                   {"established", s.established},
                   {"address", s.peer_address}};
      item["key_tag"] = s.peer_key ? json(s.peer_key->key_tag) : json(nullptr);
      list.push_back(std::move(item));
    }
    send({{"ok", true}, {"peers", list}});
    return;
  }

  send(refusal("unknown-command", fmt::format("unknown command '{}' (docs/CONTROL.md)", escape_text(command))));
}

}  // namespace keyfed
