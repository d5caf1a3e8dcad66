#include "tooling/testbed_scenarios.h"

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include "common/clock.h"
#include "federation/identity.h"
#include "tooling/support.h"

namespace keyfed {
namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

struct Outcome {
  bool passed = false;
  std::string detail;
};

Outcome fail(std::string detail) { return {false, std::move(detail)}; }

// Puts the testbed back however a scenario ends, so that one failure does
// not fail every scenario after it.
struct OnExit {
  std::function<void()> undo;
  ~OnExit() {
    if (undo) undo();
  }
};
Outcome pass(std::string detail) { return {true, std::move(detail)}; }

bool wait_until(const std::function<bool()>& done, std::chrono::milliseconds limit) {
  auto until = Clock::now() + limit;
  while (Clock::now() < until) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return done();
}

// What a scenario needs besides the testbed: messages, inboxes, queues,
// sessions, and the failures the nodes logged since a point.
class Driver {
 public:
  Driver(Testbed& tb, std::ostream& out) : tb_(tb), out_(out) {}

  void say(const std::string& line) { out_ << "  " << line << "\n" << std::flush; }

  /// Submits a message from user@from to user@to on from's node; its id.
  Result<std::string> send(TestbedDomain& from, const std::string& from_user, const TestbedDomain& to,
                           const std::string& to_user, const std::string& body) {
    std::string cpim = fmt::format(
        "From: <im:{}@{}>\r\nTo: <im:{}@{}>\r\nDateTime: {}\r\n\r\nContent-Type: text/plain\r\n\r\n{}\r\n", from_user,
        from.name, to_user, to.name, utc_now_rfc3339(), body);
    Result<json> answer = tb_.control(from, {{"command", "submit"}, {"cpim", cpim}});
    if (!answer) return make_error("{}: submit: {}", from.name, answer.error().message);
    if (!answer->value("ok", false)) return make_error("{}: submit refused: {}", from.name, answer->dump());
    return answer->value("id", "");
  }

  /// How many times each message id is in user@domain's inbox.
  std::map<std::string, int> inbox(const TestbedDomain& d, const std::string& user) {
    std::map<std::string, int> ids;
    Result<json> answer = tb_.control(d, {{"command", "inbox"}, {"user", user + "@" + d.name}});
    if (!answer || !answer->value("ok", false)) return ids;
    for (const json& m : answer->at("messages")) ++ids[m.value("id", "")];
    return ids;
  }

  json queue(const TestbedDomain& d) {
    Result<json> answer = tb_.control(d, {{"command", "queue"}});
    return answer && answer->value("ok", false) ? answer->at("queue") : json::array();
  }

  json sessions(const TestbedDomain& d) {
    Result<json> answer = tb_.control(d, {{"command", "peers"}});
    return answer && answer->value("ok", false) ? answer->at("peers") : json::array();
  }

  /// Every node's log is read from here on by failures().
  void mark_logs() {
    for (TestbedDomain* d : tb_.nodes()) {
      std::error_code ec;
      offsets_[d->name] = fs::file_size(tb_.node_log(*d), ec);
    }
  }

  /// Refused handshakes logged by any node since mark_logs(): audit lines
  /// refusing a claim, a connection or a TLS handshake (docs/POLICY.md §5),
  /// and TLS handshake failures. A session closed because its key left DNS
  /// (event "revoke") is not a failed handshake.
  std::vector<std::string> failures(const std::string& must_contain = "") {
    std::vector<std::string> lines;
    for (TestbedDomain* d : tb_.nodes()) {
      std::ifstream in(tb_.node_log(*d));
      in.seekg(static_cast<std::streamoff>(offsets_[d->name]));
      std::string line;
      while (std::getline(in, line)) {
        bool failed = (line.find("\"decision\":\"refuse\"") != std::string::npos &&
                       line.find("\"event\":\"revoke\"") == std::string::npos) ||
                      line.find("TLS handshake failed") != std::string::npos;
        if (failed && line.find(must_contain) != std::string::npos) lines.push_back(d->name + ": " + line);
      }
    }
    return lines;
  }

  /// Waits until every id in `sent` (id -> recipient domain, user) is in its
  /// inbox exactly once; the ids still missing or duplicated.
  std::vector<std::string> await_delivery(const std::map<std::string, std::pair<TestbedDomain*, std::string>>& sent,
                                          std::chrono::milliseconds limit) {
    std::vector<std::string> wrong;
    wait_until(
        [&] {
          wrong.clear();
          std::map<std::string, std::map<std::string, int>> boxes;
          for (const auto& [id, where] : sent) {
            std::string key = where.first->name + "/" + where.second;
            if (boxes.count(key) == 0) boxes[key] = inbox(*where.first, where.second);
            int n = boxes[key].count(id) ? boxes[key][id] : 0;
            if (n != 1) wrong.push_back(fmt::format("{} in {}@{} {} times", id, where.second, where.first->name, n));
          }
          return wrong.empty();
        },
        limit);
    return wrong;
  }

  Testbed& tb() { return tb_; }
  /// One TTL and a margin: every cache has seen a change by then.
  std::chrono::milliseconds ttl_wait() const { return std::chrono::seconds(tb_.key_ttl() + 3); }

 private:
  Testbed& tb_;
  std::ostream& out_;
  std::map<std::string, std::uintmax_t> offsets_;
};

std::string first(const std::vector<std::string>& lines, std::size_t n = 2) {
  std::string s;
  for (std::size_t i = 0; i < lines.size() && i < n; ++i) s += (i ? "; " : "") + lines[i].substr(0, 300);
  return s;
}

// 1. A message from every domain to every other, each delivered once.
Outcome scenario_messages(Driver& drv) {
  auto nodes = drv.tb().nodes();
  std::map<std::string, std::pair<TestbedDomain*, std::string>> sent;
  for (TestbedDomain* from : nodes) {
    for (TestbedDomain* to : nodes) {
      if (from == to) continue;
      Result<std::string> id = drv.send(*from, "alice", *to, "bob", fmt::format("hello {} from {}", to->name, from->name));
      if (!id) return fail(id.error().message);
      sent[*id] = {to, "bob"};
    }
  }
  drv.say(fmt::format("{} messages submitted, one per ordered pair of {} domains", sent.size(), nodes.size()));
  std::vector<std::string> wrong = drv.await_delivery(sent, std::chrono::seconds(60));
  if (!wrong.empty()) return fail(fmt::format("{} of {} not delivered exactly once: {}", wrong.size(), sent.size(), first(wrong)));
  std::vector<std::string> refused = drv.failures();
  if (!refused.empty()) return fail(fmt::format("{} refused handshakes: {}", refused.size(), first(refused)));
  return pass(fmt::format("{} messages between every pair, each delivered once", sent.size()));
}

// 2. Every domain's carol watches every other domain's alice, who allows it
// and publishes a note; every watcher's node learns it.
Outcome scenario_presence(Driver& drv) {
  auto nodes = drv.tb().nodes();
  std::string token = fmt::format("testbed-{}", std::time(nullptr));
  for (TestbedDomain* owner : nodes) {
    for (TestbedDomain* watcher : nodes) {
      if (owner == watcher) continue;
      Result<json> a = drv.tb().control(*owner, {{"command", "acl-set"}, {"user", "alice@" + owner->name},
                                                 {"list", "presence"}, {"pattern", "*@" + watcher->name},
                                                 {"verdict", "allow"}});
      if (!a || !a->value("ok", false)) return fail(fmt::format("{}: acl-set refused", owner->name));
      Result<json> w = drv.tb().control(*watcher, {{"command", "watch"}, {"watcher", "carol@" + watcher->name},
                                                   {"presentity", "pres:alice@" + owner->name}});
      if (!w || !w->value("ok", false)) return fail(fmt::format("{}: watch refused", watcher->name));
    }
  }
  for (TestbedDomain* owner : nodes) {
    Result<json> s = drv.tb().control(*owner, {{"command", "presence-set"}, {"user", "alice@" + owner->name},
                                               {"status", "open"}, {"note", token + " " + owner->name}});
    if (!s || !s->value("ok", false)) return fail(fmt::format("{}: presence-set refused", owner->name));
  }
  std::size_t pairs = nodes.size() * (nodes.size() - 1);
  std::vector<std::string> missing;
  wait_until(
      [&] {
        missing.clear();
        for (TestbedDomain* owner : nodes) {
          for (TestbedDomain* watcher : nodes) {
            if (owner == watcher) continue;
            Result<json> g = drv.tb().control(*watcher, {{"command", "presence-get"}, {"presentity", "pres:alice@" + owner->name}});
            bool seen = g && g->value("ok", false) && g->value("basic", json(nullptr)) == "open" &&
                        g->value("note", json(nullptr)) == token + " " + owner->name;
            if (!seen) missing.push_back(fmt::format("{} does not see alice@{}", watcher->name, owner->name));
          }
        }
        return missing.empty();
      },
      std::chrono::seconds(60));
  if (!missing.empty()) return fail(fmt::format("{} of {} watches unanswered: {}", missing.size(), pairs, first(missing)));
  return pass(fmt::format("{} watches across every pair saw the published note", pairs));
}

// 3. A node holding a key the domain does not publish claims it: refused.
Outcome scenario_forged_claim(Driver& drv) {
  auto nodes = drv.tb().nodes();
  if (nodes.size() < 2) return fail("needs at least 2 domains");
  TestbedDomain& victim = *nodes[0];
  TestbedDomain& target = *nodes[1];
  fs::path scratch = drv.tb().dir() / "scratch" / "forged";
  std::error_code ec;
  fs::remove_all(scratch, ec);
  fs::create_directories(scratch, ec);
  fs::permissions(scratch, fs::perms::owner_all, ec);
  if (Status s = generate_key_file(scratch / "impostor.pem", kAlgorithmEd25519); !s) return fail(s.error().message);
  // The victim's own configuration with the impostor's key.
  std::ifstream in(drv.tb().node_config(victim));
  std::string config((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string from = fmt::format("keys = [\"{}\"]", victim.node_key);
  std::size_t at = config.find(from);
  if (at == std::string::npos) return fail("cannot find the key line in " + drv.tb().node_config(victim).string());
  config.replace(at, from.size(), "keys = [\"impostor.pem\"]");
  for (const char* k : {"path = \"node.db\"", "socket = \"node.sock\""}) {
    std::size_t p = config.find(k);
    if (p != std::string::npos) config.replace(p, std::strlen(k), std::string(k).replace(std::string(k).find("node."), 5, "forged."));
  }
  std::string port_line = fmt::format("port = {}", victim.port);
  if (std::size_t p = config.find(port_line); p != std::string::npos) config.replace(p, port_line.size(), "port = 0");
  std::ofstream(scratch / "impostor.toml") << config;
  std::string token = fmt::format("forged-{}", std::time(nullptr));
  std::ofstream(scratch / "message.cpim") << fmt::format(
      "From: <im:alice@{}>\r\nTo: <im:bob@{}>\r\nDateTime: {}\r\n\r\nContent-Type: text/plain\r\n\r\n{}\r\n", victim.name,
      target.name, utc_now_rfc3339(), token);
  drv.mark_logs();
  Result<ProgramRun> sent = run_program_status({keyfed_binary().string(), "send", "--direct", "--config",
                                                (scratch / "impostor.toml").string(), (scratch / "message.cpim").string()});
  if (!sent) return fail("cannot run keyfed send --direct: " + sent.error().message);
  int status = sent->status;
  drv.say(fmt::format("impostor of {} sends to {}: keyfed send --direct exit status {}", victim.name, target.name, status));
  if (status != 8) return fail(fmt::format("send --direct by the impostor exited {} (expected 8: no session)", status));
  std::vector<std::string> refused;
  wait_until([&] { return !(refused = drv.failures(victim.name)).empty(); }, std::chrono::seconds(5));
  if (refused.empty()) return fail(target.name + " logged no refusal of the forged " + victim.name);
  Result<json> box = drv.tb().control(target, {{"command", "inbox"}, {"user", "bob@" + target.name}});
  if (box && box->dump().find(token) != std::string::npos) return fail("the forged message reached the inbox");
  return pass(fmt::format("forged claim of {} refused by {} ({} refusal lines), nothing delivered", victim.name,
                          target.name, refused.size()));
}

// The queue entries from `from` to `to` that are still queued.
std::vector<json> queued_to(Driver& drv, const TestbedDomain& from, const TestbedDomain& to) {
  std::vector<json> list;
  for (const json& e : drv.queue(from)) {
    if (e.value("to_domain", "") == to.name && e.value("state", "") == "queued") list.push_back(e);
  }
  return list;
}

// 4. A zone turned bogus at runtime (its DS in the parent no longer matches):
// refused and deferred, never downgraded; then repaired and delivered.
Outcome scenario_bogus_zone(Driver& drv) {
  auto nodes = drv.tb().nodes();
  if (nodes.size() < 2) return fail("needs at least 2 domains");
  TestbedDomain& bad = *nodes.back();
  TestbedDomain& sender = *nodes.front();
  bad.ds_broken = true;
  OnExit repair{[&] {
    if (bad.ds_broken) {
      bad.ds_broken = false;
      (void)drv.tb().publish({"test"});
    }
  }};
  if (Status s = drv.tb().publish({"test"}); !s) return fail(s.error().message);
  drv.say(fmt::format("DS of {} in test. replaced by a stray key's", bad.name));
  // The nodes have seen it once no authenticated session joins the two
  // (embedded: at their reload; Knot: within a TTL).
  auto joined = [&] {
    for (auto [here, there] : {std::pair{&sender, &bad}, std::pair{&bad, &sender}}) {
      for (const json& session : drv.sessions(*here)) {
        if (session.value("peer_domain", "") == there->name && session.value("decision", "") == "authenticated") return true;
      }
    }
    return false;
  };
  if (!wait_until([&] { return !joined(); }, drv.ttl_wait() + std::chrono::seconds(20))) {
    return fail(fmt::format("sessions between {} and {} still authenticated after the DS broke", sender.name, bad.name));
  }
  if (drv.tb().dns() == TestbedDns::Knot) std::this_thread::sleep_for(drv.ttl_wait());
  // Until repaired, nothing reaches the bogus domain and nothing from it is accepted.
  drv.mark_logs();
  Result<std::string> out = drv.send(sender, "alice", bad, "bob", "to a bogus zone");
  Result<std::string> in = drv.send(bad, "alice", sender, "bob", "from a bogus zone");
  if (!out || !in) return fail(!out ? out.error().message : in.error().message);
  bool deferred = wait_until(
      [&] {
        for (const json& e : queued_to(drv, sender, bad)) {
          if (e.value("id", "") == *out && e.value("last_error", json(nullptr)).dump().find("bogus") != std::string::npos) return true;
        }
        return false;
      },
      std::chrono::seconds(20));
  std::this_thread::sleep_for(std::chrono::seconds(2));
  auto bad_box = drv.inbox(bad, "bob");
  auto sender_box = drv.inbox(sender, "bob");
  if (bad_box.count(*out) || sender_box.count(*in)) return fail("a message crossed while the zone was bogus (downgrade)");
  if (!deferred) return fail(fmt::format("{}'s message to {} was not deferred with a bogus reason: {}", sender.name, bad.name,
                                         json(queued_to(drv, sender, bad)).dump()));
  std::vector<std::string> refused = drv.failures(bad.name);
  drv.say(fmt::format("deferred with reason bogus; {} refusal lines naming {}", refused.size(), bad.name));
  bad.ds_broken = false;
  if (Status s = drv.tb().publish({"test"}); !s) return fail(s.error().message);
  drv.say("DS repaired");
  std::map<std::string, std::pair<TestbedDomain*, std::string>> sent{{*out, {&bad, "bob"}}, {*in, {&sender, "bob"}}};
  // libunbound remembers a failed chain for a while past the DS's TTL (about
  // a minute seen with Knot): recovery may take that long.
  auto repaired_at = Clock::now();
  std::vector<std::string> wrong = drv.await_delivery(sent, drv.ttl_wait() + std::chrono::seconds(90));
  if (!wrong.empty()) return fail("after repair: " + first(wrong));
  return pass(fmt::format("{} bogus: messages both ways deferred (reason bogus), none crossed; delivered once {:.0f} s after "
                          "the repair", bad.name, std::chrono::duration<double>(Clock::now() - repaired_at).count()));
}

// Background traffic between one domain and all the others, both ways.
class Traffic {
 public:
  Traffic(Driver& drv, TestbedDomain& hub) : drv_(drv), hub_(hub) {
    thread_ = std::thread([this] { loop(); });
  }
  ~Traffic() { stop(); }
  void stop() {
    running_ = false;
    if (thread_.joinable()) thread_.join();
  }
  std::map<std::string, std::pair<TestbedDomain*, std::string>> sent() {
    std::lock_guard lock(mutex_);
    return sent_;
  }
  std::vector<std::string> errors() {
    std::lock_guard lock(mutex_);
    return errors_;
  }

 private:
  void loop() {
    int n = 0;
    while (running_) {
      for (TestbedDomain* other : drv_.tb().nodes()) {
        if (other == &hub_) continue;
        for (auto [from, to] : {std::pair{&hub_, other}, std::pair{other, &hub_}}) {
          Result<std::string> id = drv_.send(*from, "alice", *to, "carol", fmt::format("traffic {}", n++));
          std::lock_guard lock(mutex_);
          if (id) sent_[*id] = {to, "carol"};
          else if (errors_.size() < 5) errors_.push_back(id.error().message);
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
    }
  }
  Driver& drv_;
  TestbedDomain& hub_;
  std::atomic<bool> running_{true};
  std::mutex mutex_;
  std::map<std::string, std::pair<TestbedDomain*, std::string>> sent_;
  std::vector<std::string> errors_;
  std::thread thread_;
};

std::string next_key_file(const TestbedDomain& d) {
  for (int i = 1;; ++i) {
    std::string name = fmt::format("key-{}.pem", i);
    if (std::find(d.published_keys.begin(), d.published_keys.end(), name) == d.published_keys.end() && d.node_key != name) {
      return name;
    }
  }
}

// 5. A live key rollover, pre-publication style (RFC 7583): new key
// published beside the old, the node switched once every cache has both,
// the old key removed after one more TTL; traffic flows throughout and no
// handshake fails.
Outcome scenario_rollover(Driver& drv) {
  auto nodes = drv.tb().nodes();
  if (nodes.size() < 2) return fail("needs at least 2 domains");
  TestbedDomain& r = *nodes[1];
  std::string old_key = r.node_key;
  std::string new_key = next_key_file(r);
  std::error_code ec;
  fs::remove(drv.tb().node_dir(r) / new_key, ec);
  if (Status s = generate_key_file(drv.tb().node_dir(r) / new_key, kAlgorithmEd25519); !s) return fail(s.error().message);
  drv.mark_logs();
  Traffic traffic(drv, r);
  std::this_thread::sleep_for(std::chrono::seconds(1));
  r.published_keys = {old_key, new_key};
  if (Status s = drv.tb().publish({r.name}); !s) return fail(s.error().message);
  drv.say(fmt::format("{}: {} published beside {}; waiting one TTL ({} s) and a margin", r.name, new_key, old_key, drv.tb().key_ttl()));
  std::this_thread::sleep_for(drv.ttl_wait());
  r.node_key = new_key;
  if (Status s = drv.tb().write_node_config(r); !s) return fail(s.error().message);
  if (Status s = drv.tb().save(); !s) return fail(s.error().message);
  if (!drv.tb().running(r)) return fail(r.name + "'s node is not running");
  if (Status s = drv.tb().reload({&r}); !s) return fail(s.error().message);
  drv.say(fmt::format("{}: node switched to {} (reload)", r.name, new_key));
  std::this_thread::sleep_for(drv.ttl_wait());
  r.published_keys = {new_key};
  if (Status s = drv.tb().publish({r.name}); !s) return fail(s.error().message);
  drv.say(fmt::format("{}: {} removed from DNS", r.name, old_key));
  std::this_thread::sleep_for(drv.ttl_wait());
  traffic.stop();
  auto sent = traffic.sent();
  if (!traffic.errors().empty()) return fail("submissions refused during the rollover: " + first(traffic.errors()));
  std::vector<std::string> wrong = drv.await_delivery(sent, std::chrono::seconds(60));
  std::vector<std::string> refused = drv.failures();
  fs::remove(drv.tb().node_dir(r) / old_key, ec);
  if (!wrong.empty()) return fail(fmt::format("{} of {} messages not delivered once: {}", wrong.size(), sent.size(), first(wrong)));
  if (!refused.empty()) return fail(fmt::format("{} failed handshakes: {}", refused.size(), first(refused)));
  return pass(fmt::format("{} rolled {} -> {} with {} messages flowing both ways, all delivered once, 0 failed handshakes",
                          r.name, old_key, new_key, sent.size()));
}

// 6. A key removed from DNS: the sessions it authenticated close within one
// TTL (docs/POLICY.md §4); put back, traffic resumes.
Outcome scenario_key_removed(Driver& drv) {
  auto nodes = drv.tb().nodes();
  if (nodes.size() < 2) return fail("needs at least 2 domains");
  TestbedDomain& k = *nodes[0];
  // Sessions with k, both ways.
  std::map<std::string, std::pair<TestbedDomain*, std::string>> sent;
  for (TestbedDomain* other : nodes) {
    if (other == &k) continue;
    for (auto [from, to] : {std::pair{&k, other}, std::pair{other, &k}}) {
      Result<std::string> id = drv.send(*from, "alice", *to, "bob", "before the removal");
      if (!id) return fail(id.error().message);
      sent[*id] = {to, "bob"};
    }
  }
  if (auto wrong = drv.await_delivery(sent, std::chrono::seconds(30)); !wrong.empty()) return fail("before: " + first(wrong));
  auto sessions_with_k = [&] {
    int n = 0;
    for (TestbedDomain* other : nodes) {
      if (other == &k) continue;
      for (const json& s : drv.sessions(*other)) {
        if (s.value("peer_domain", "") == k.name && s.value("decision", "") == "authenticated") ++n;
      }
    }
    return n;
  };
  int before = sessions_with_k();
  if (before == 0) return fail("no authenticated session with " + k.name + " before the removal");
  // k's key is replaced in DNS by one its node does not hold (revoked).
  std::string stand_in = next_key_file(k);
  std::error_code ec;
  fs::remove(drv.tb().node_dir(k) / stand_in, ec);
  if (Status s = generate_key_file(drv.tb().node_dir(k) / stand_in, kAlgorithmEd25519); !s) return fail(s.error().message);
  k.published_keys = {stand_in};
  auto removed_at = Clock::now();
  if (Status s = drv.tb().publish({k.name}); !s) return fail(s.error().message);
  drv.say(fmt::format("{}: its key {} removed from DNS ({} authenticated sessions with it)", k.name, k.node_key, before));
  auto limit = std::chrono::seconds(drv.tb().key_ttl() + 3);  // one TTL, plus revalidation's 1 s and a margin
  bool closed = wait_until([&] { return sessions_with_k() == 0; }, limit + std::chrono::seconds(10));
  double took = std::chrono::duration<double>(Clock::now() - removed_at).count();
  k.published_keys = {k.node_key};
  Status restored = drv.tb().publish({k.name});
  fs::remove(drv.tb().node_dir(k) / stand_in, ec);
  if (!closed) return fail(fmt::format("{} sessions with {} still authenticated {:.1f} s after the removal", sessions_with_k(), k.name, took));
  if (took > std::chrono::duration<double>(limit).count()) {
    return fail(fmt::format("sessions closed only after {:.1f} s (TTL {} s)", took, drv.tb().key_ttl()));
  }
  if (!restored) return fail(restored.error().message);
  drv.say(fmt::format("all closed after {:.1f} s; key published again", took));
  if (drv.tb().dns() == TestbedDns::Knot) std::this_thread::sleep_for(drv.ttl_wait());
  std::map<std::string, std::pair<TestbedDomain*, std::string>> after;
  Result<std::string> id = drv.send(*nodes[1], "alice", k, "bob", "after the key is back");
  if (!id) return fail(id.error().message);
  after[*id] = {&k, "bob"};
  if (auto wrong = drv.await_delivery(after, drv.ttl_wait() + std::chrono::seconds(30)); !wrong.empty()) {
    return fail("after the key came back: " + first(wrong));
  }
  return pass(fmt::format("{} sessions authenticated by the removed key closed {:.1f} s after the removal (TTL {} s)",
                          before, took, drv.tb().key_ttl()));
}

// 7. A node killed (SIGKILL) in the middle of traffic and restarted: every
// message it accepted, and every message accepted for it, delivered once.
Outcome scenario_node_restart(Driver& drv) {
  auto nodes = drv.tb().nodes();
  if (nodes.size() < 2) return fail("needs at least 2 domains");
  TestbedDomain& v = *nodes[nodes.size() > 2 ? 2 : 1];
  Traffic traffic(drv, v);
  std::this_thread::sleep_for(std::chrono::seconds(2));
  if (Status s = drv.tb().stop_node(v, SIGKILL); !s) return fail(s.error().message);
  drv.say(fmt::format("{} killed (SIGKILL) with traffic flowing", v.name));
  std::this_thread::sleep_for(std::chrono::seconds(2));
  if (Status s = drv.tb().start_node(v); !s) return fail(s.error().message);
  if (Status s = drv.tb().wait_listening(v, std::chrono::seconds(30)); !s) return fail(s.error().message);
  drv.say(fmt::format("{} restarted (pid {})", v.name, v.pid));
  std::this_thread::sleep_for(std::chrono::seconds(2));
  traffic.stop();
  auto sent = traffic.sent();
  std::vector<std::string> wrong = drv.await_delivery(sent, std::chrono::seconds(90));
  if (!wrong.empty()) return fail(fmt::format("{} of {} accepted messages not delivered once: {}", wrong.size(), sent.size(), first(wrong)));
  return pass(fmt::format("{} killed and restarted; all {} accepted messages delivered once ({} submissions refused while it was down)",
                          v.name, sent.size(), traffic.errors().size()));
}

// 8. DNS unreachable for a domain: messages to it deferred (temp-fail), then
// delivered once DNS is back. Knot: the server stopped and started;
// embedded: the nodes reload without the domain's zone, then with it.
Outcome scenario_dns_outage(Driver& drv) {
  auto nodes = drv.tb().nodes();
  if (nodes.size() < 2) return fail("needs at least 2 domains");
  TestbedDomain& dark = *nodes[0];
  TestbedDomain& sender = *nodes[1];
  bool knot = drv.tb().dns() == TestbedDns::Knot;
  bool dns_back = false;
  OnExit restore{[&] {
    if (dns_back) return;
    if (knot) {
      (void)drv.tb().set_dns_running(true);
    } else {
      dark.served = true;
      (void)drv.tb().publish({});
    }
  }};
  if (knot) {
    if (Status s = drv.tb().set_dns_running(false); !s) return fail(s.error().message);
    drv.say("Knot DNS stopped");
  } else {
    dark.served = false;
    if (Status s = drv.tb().publish({}); !s) return fail(s.error().message);
    drv.say(fmt::format("nodes reloaded without {}'s zone", dark.name));
  }
  // A fresh start: no session and no cached keys left from before.
  if (Status s = drv.tb().stop_node(sender, SIGTERM); !s) return fail(s.error().message);
  if (Status s = drv.tb().start_node(sender); !s) return fail(s.error().message);
  if (Status s = drv.tb().wait_listening(sender, std::chrono::seconds(30)); !s) return fail(s.error().message);
  Result<std::string> id = drv.send(sender, "alice", dark, "bob", "through a DNS outage");
  if (!id) return fail(id.error().message);
  bool deferred = wait_until(
      [&] {
        for (const json& e : queued_to(drv, sender, dark)) {
          std::string err = e.value("last_error", json(nullptr)).dump();
          if (e.value("id", "") == *id && err.find("temp-fail") != std::string::npos) return true;
        }
        return false;
      },
      std::chrono::seconds(20));
  std::string state = json(queued_to(drv, sender, dark)).dump();
  dns_back = true;
  if (knot) {
    if (Status s = drv.tb().set_dns_running(true); !s) return fail(s.error().message);
    drv.say("Knot DNS started again");
  } else {
    dark.served = true;
    if (Status s = drv.tb().publish({}); !s) return fail(s.error().message);
    drv.say(fmt::format("nodes reloaded with {}'s zone", dark.name));
  }
  if (!deferred) return fail("the message was not deferred as temp-fail: " + state.substr(0, 400));
  std::map<std::string, std::pair<TestbedDomain*, std::string>> sent{{*id, {&dark, "bob"}}};
  auto back_at = Clock::now();
  if (auto wrong = drv.await_delivery(sent, std::chrono::seconds(90)); !wrong.empty()) return fail("after recovery: " + first(wrong));
  double took = std::chrono::duration<double>(Clock::now() - back_at).count();
  return pass(fmt::format("message to {} deferred (temp-fail) during the outage, delivered once {:.0f} s after DNS came back",
                          dark.name, took));
}

using Scenario = Outcome (*)(Driver&);
const std::vector<std::pair<std::string, Scenario>>& table() {
  static const std::vector<std::pair<std::string, Scenario>> t = {
      {"messages", scenario_messages},         {"presence", scenario_presence},
      {"forged-claim", scenario_forged_claim}, {"bogus-zone", scenario_bogus_zone},
      {"rollover", scenario_rollover},         {"key-removed", scenario_key_removed},
      {"node-restart", scenario_node_restart}, {"dns-outage", scenario_dns_outage},
  };
  return t;
}

}  // namespace

const std::vector<std::string>& scenario_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& entry : table()) n.push_back(entry.first);
    return n;
  }();
  return names;
}

Result<std::vector<ScenarioResult>> run_scenarios(Testbed& testbed, const std::vector<std::string>& names,
                                                  std::ostream& progress) {
  std::vector<std::string> chosen = names.empty() ? scenario_names() : names;
  for (const std::string& name : chosen) {
    if (std::find(scenario_names().begin(), scenario_names().end(), name) == scenario_names().end()) {
      return make_error("unknown scenario '{}' (scenarios: {})", name, fmt::join(scenario_names(), ", "));
    }
  }
  for (TestbedDomain* d : testbed.nodes()) {
    if (!testbed.running(*d)) return make_error("{}: its node is not running (keyfed testbed up --dir {})", d->name, testbed.dir().string());
  }
  std::vector<ScenarioResult> results;
  Driver driver(testbed, progress);
  for (const std::string& name : chosen) {
    progress << "== " << name << "\n" << std::flush;
    auto start = Clock::now();
    Outcome outcome;
    for (const auto& entry : table()) {
      if (entry.first == name) outcome = entry.second(driver);
    }
    ScenarioResult r{name, outcome.passed, std::chrono::duration<double>(Clock::now() - start).count(), outcome.detail};
    progress << fmt::format("{} {}: {}\n", r.passed ? "PASS" : "FAIL", name, r.detail) << std::flush;
    results.push_back(std::move(r));
    // Whatever a scenario did, every node runs again for the next one.
    for (TestbedDomain* d : testbed.nodes()) {
      if (!testbed.running(*d)) {
        if (Status s = testbed.start_node(*d); s) (void)testbed.wait_listening(*d, std::chrono::seconds(30));
      }
    }
  }
  return results;
}

}  // namespace keyfed
