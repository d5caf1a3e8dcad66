// The commands of the control socket (docs/CONTROL.md), answered by the
// running daemon. Every answer is one JSON object with "ok"; a refusal has
// "error" (for a person) and "status" (a stable word, for scripts).
#include <ctime>

#include "common/log.h"
#include "daemon/daemon.h"
#include "dnskey/key_json.h"

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
  if (!ready()) {
    if (load_error_) return (void)send(refusal("store", "the store could not be read: " + load_error_->message));
    // Answered once the store is read, a moment after start.
    if (early_requests_.size() >= 1024) return (void)send(refusal("starting", "the node is starting; try again"));
    early_requests_.emplace_back(request, send);
    return;
  }

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
      static constexpr const char* kStatus[] = {"bad-message", "not-local-user", "unknown-recipient",
                                                "store",       "not-authorized", "starting"};
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
      item["since"] = s.established_at_ms > 0 ? json(rfc3339(s.established_at_ms)) : json(nullptr);
      item["messages_in"] = s.messages_in;
      item["messages_out"] = s.messages_out;
      auto totals = messages_->peer_totals(s.peer_domain);
      item["total_in"] = totals.first;
      item["total_out"] = totals.second;
      list.push_back(std::move(item));
    }
    send({{"ok", true}, {"peers", list}});
    return;
  }

  if (command == "keys") {
    json list = json::array();
    TimePoint now = cache_->now();
    for (const auto& entry : cache_->entries()) list.push_back(key_answer_json(*entry, now));
    send({{"ok", true}, {"keys", list}});
    return;
  }

  // ---- presence and lists (docs/CONTROL.md, "Presence and lists") ----
  auto local_user = [&](const char* field) -> std::optional<CpimAddress> {
    auto user = user_address(request.value(field, json()));
    if (!user || !messages_->is_local_user(user->user, user->domain)) {
      send(refusal("unknown-user", fmt::format("\"{}\" must be a local user (user@domain)", field)));
      return std::nullopt;
    }
    return user;
  };
  auto any_user = [&](const char* field) -> std::optional<CpimAddress> {
    auto user = user_address(request.value(field, json()));
    if (!user) send(refusal("bad-request", fmt::format("\"{}\" must be user@domain or pres:user@domain", field)));
    return user;
  };
  auto answer = [send](Status s) {
    if (!s) return (void)send(refusal("store", s.error().message));
    send({{"ok", true}});
  };

  if (command == "presence-set") {
    auto user = local_user("user");
    if (!user) return;
    json status = request.value("status", json());
    if (status != "open" && status != "closed") {
      return (void)send(refusal("bad-request", "\"status\" must be \"open\" or \"closed\""));
    }
    json note = request.value("note", json(""));
    if (!note.is_string()) return (void)send(refusal("bad-request", "\"note\" must be a string"));
    if (Status s = presence_->check_note(note.get<std::string>()); !s) {
      return (void)send(refusal("bad-request", s.error().message));
    }
    presence_->publish(user->user + "@" + user->domain, status == "open", note.get<std::string>(), answer);
    return;
  }

  if (command == "presence-get") {
    auto who = any_user("presentity");
    if (!who) return;
    std::string presentity = "pres:" + who->user + "@" + who->domain;
    json out = {{"ok", true}, {"presentity", presentity}, {"document", nullptr}, {"basic", nullptr},
                {"note", nullptr}, {"updated", nullptr}};
    if (auto seen = presence_->get(presentity)) {
      PresenceSummary summary = summarize_pidf(seen->document);
      out["document"] = seen->document;
      if (!summary.basic.empty()) out["basic"] = summary.basic;
      out["note"] = summary.note;
      out["updated"] = rfc3339(seen->updated);
    }
    send(out);
    return;
  }

  if (command == "watch" || command == "unwatch") {
    auto watcher = local_user("watcher");
    if (!watcher) return;
    auto presentity = any_user("presentity");
    if (!presentity) return;
    std::string w = "pres:" + watcher->user + "@" + watcher->domain;
    std::string p = "pres:" + presentity->user + "@" + presentity->domain;
    if (command == "unwatch") return presence_->unwatch(w, p, answer);
    if (Status s = presence_->check_watch(w, p); !s) return (void)send(refusal("limit", s.error().message));
    presence_->watch(w, p, answer);
    return;
  }

  if (command == "acl-set") {
    auto user = local_user("user");
    if (!user) return;
    std::optional<AccessList> list;
    if (auto it = request.find("list"); it != request.end() && it->is_string()) {
      list = access_list_from_string(it->get<std::string>());
    }
    if (!list) return (void)send(refusal("bad-request", "\"list\" must be \"presence\" or \"inbox\""));
    auto pattern_it = request.find("pattern");
    if (pattern_it == request.end() || !pattern_it->is_string()) {
      return (void)send(refusal("bad-request", "\"pattern\" must be user@domain or *@domain"));
    }
    Result<std::string> pattern = normalize_access_pattern(pattern_it->get<std::string>());
    if (!pattern) return (void)send(refusal("bad-request", pattern.error().message));
    std::optional<AccessVerdict> verdict;
    json v = request.value("verdict", json());
    if (v == "allow") {
      verdict = AccessVerdict::Allow;
    } else if (v == "deny") {
      verdict = AccessVerdict::Deny;
    } else if (!v.is_null()) {
      return (void)send(refusal("bad-request", "\"verdict\" must be \"allow\", \"deny\" or null (remove)"));
    }
    presence_->change_access(user->user + "@" + user->domain, *list, *pattern, verdict, answer);
    return;
  }

  if (command == "acl") {
    auto user = local_user("user");
    if (!user) return;
    std::string owner = user->user + "@" + user->domain;
    json out = {{"ok", true}, {"user", owner}};
    for (AccessList list : {AccessList::Presence, AccessList::Inbox}) {
      json entries = json::array();
      for (const AccessEntry& e : access_->entries(owner, list)) {
        entries.push_back({{"pattern", e.pattern}, {"verdict", std::string(access_verdict_name(e.verdict))}});
      }
      out[std::string(access_list_name(list))] = entries;
    }
    out["presence_default"] = config_.access.presence_allow ? "allow" : "deny";
    out["inbox_default"] = config_.access.inbox_allow ? "allow" : "deny";
    json watchers = json::array();
    for (const PresenceService::Watcher& w : presence_->watchers(owner)) {
      watchers.push_back({{"uri", w.uri}, {"remote", w.remote}, {"authorized", w.authorized}});
    }
    out["watchers"] = watchers;
    out["watching"] = presence_->watching("pres:" + owner);
    send(out);
    return;
  }

  send(refusal("unknown-command", fmt::format("unknown command '{}' (docs/CONTROL.md)", escape_text(command))));
}

}  // namespace keyfed
