// Presence, allow/deny lists and delivery notifications end to end
// (docs/STORE.md, "Presence", "Authorization", "Delivery notifications"):
// two `keyfed run` nodes with their SQLite stores, each naming the other in
// [[peers]], driven by the CLI over their control sockets. Real processes,
// real TLS on loopback, real database files; nodes are stopped and started
// again to show what survives a restart.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <fstream>
#include <optional>
#include <regex>
#include <sstream>
#include <thread>
#include <tuple>

#include "child_process.h"
#include "cli/cli.h"
#include "fed_harness.h"
#include "harness.h"

using namespace keyfed;
using namespace keyfed::test;
using nlohmann::json;

namespace {

// Runs a CLI command that must succeed; its standard output.
std::string ok(std::vector<std::string> args) {
  auto [status, out, err] = cli(args);
  INFO(err);
  REQUIRE(status == 0);
  return out;
}

std::string write_file(const TempDir& dir, const std::string& name, const std::string& text) {
  auto path = dir.path() / name;
  std::ofstream(path, std::ios::binary) << text;
  return path.string();
}

// alpha.test (alice) and beta.test (bob), each listening on a fixed port and
// naming the other in [[peers]].
struct Pair {
  std::filesystem::path alpha, beta;
  std::optional<Child> alpha_node, beta_node;

  Pair(const TempDir& dir, const std::string& alpha_extra = "", const std::string& beta_extra = "") {
    int alpha_port = free_port(), beta_port = free_port();
    auto make = [&](const char* key, const char* domain, const char* user, int port, const char* other,
                    int other_port, const std::string& extra) {
      auto path = write_node_config(dir, fedkey(key), domain,
                                    fmt::format("users = [\"{}\"]\n[delivery]\nretry_first_s = 1\nretry_max_s = 2\n"
                                                "[[peers]]\ndomain = \"{}\"\naddress = \"127.0.0.1\"\nport = {}\n{}",
                                                user, other, other_port, extra));
      std::ifstream in(path);
      std::stringstream text;
      text << in.rdbuf();
      std::ofstream(path) << std::regex_replace(text.str(), std::regex("port = 0"), "port = " + std::to_string(port));
      return path;
    };
    alpha = make("alpha-1", "alpha.test", "alice", alpha_port, "beta.test", beta_port, alpha_extra);
    beta = make("beta-new", "beta.test", "bob", beta_port, "alpha.test", alpha_port, beta_extra);
  }
  void start_alpha() { start(alpha_node, alpha); }
  void start_beta() { start(beta_node, beta); }
  static void start(std::optional<Child>& node, const std::filesystem::path& config) {
    node.emplace(std::vector<std::string>{"keyfed", "run", "--config", config.string()});
    REQUIRE_FALSE(node->wait_for(std::regex("control socket")).empty());
  }
  // A clean stop (SIGTERM), as an operator's restart.
  static void stop(std::optional<Child>& node) {
    node->signal(SIGTERM);
    node->wait_exit();
    node.reset();
  }
};

json presence_of(const std::filesystem::path& config, const std::string& uri) {
  return json::parse(ok({"presence", "--config", config.string(), "get", uri, "--json"}));
}

json acl_of(const std::filesystem::path& config, const std::string& user) {
  return json::parse(ok({"acl", "--config", config.string(), user, "--json"}));
}

json inbox_of(const std::filesystem::path& config, const std::string& user) {
  return json::parse(ok({"inbox", "--config", config.string(), user, "--json"}));
}

json queue_of(const std::filesystem::path& config) {
  return json::parse(ok({"queue", "--config", config.string(), "--json"}));
}

bool shows(const std::filesystem::path& config, const std::string& uri, const std::string& basic,
           const std::string& note) {
  json p = presence_of(config, uri);
  return p["basic"] == basic && p["note"] == note;
}

}  // namespace

TEST_CASE("presence reaches allowed watchers only; a withdrawn watcher gets one closed NOTIFY; watches survive "
          "restarts of either node",
          "[presence][store]") {
  TempDir dir;
  Pair nodes(dir);
  nodes.start_alpha();
  nodes.start_beta();
  std::string alpha = nodes.alpha.string(), beta = nodes.beta.string();

  ok({"presence", "--config", alpha, "set", "alice@alpha.test", "open", "--note", "at <lunch> & back soon"});
  CHECK(shows(nodes.alpha, "pres:alice@alpha.test", "open", "at <lunch> & back soon"));
  ok({"watch", "--config", beta, "bob@beta.test", "pres:alice@alpha.test"});

  // presence_default is deny: bob's subscription is taken, and he is shown
  // only "closed" (polite blocking), never alice's state.
  REQUIRE(eventually([&] { return acl_of(nodes.alpha, "alice@alpha.test")["watchers"].size() == 1; }));
  json acl = acl_of(nodes.alpha, "alice@alpha.test");
  CHECK(acl["watchers"][0]["uri"] == "pres:bob@beta.test");
  CHECK(acl["watchers"][0]["remote"] == true);
  CHECK(acl["watchers"][0]["authorized"] == false);
  CHECK(acl["presence_default"] == "deny");
  REQUIRE(eventually([&] { return !presence_of(nodes.beta, "alice@alpha.test")["document"].is_null(); }));
  CHECK(shows(nodes.beta, "alice@alpha.test", "closed", ""));
  CHECK_THAT(presence_of(nodes.beta, "alice@alpha.test")["document"].get<std::string>(), !Catch::Contains("lunch"));
  CHECK(acl_of(nodes.beta, "bob@beta.test")["watching"] == json::array({"pres:alice@alpha.test"}));

  // Allowed: the current state at once, then every change.
  ok({"allow", "--config", alpha, "alice@alpha.test", "presence", "bob@beta.test"});
  REQUIRE(eventually([&] { return shows(nodes.beta, "alice@alpha.test", "open", "at <lunch> & back soon"); }));
  ok({"presence", "--config", alpha, "set", "alice@alpha.test", "closed", "--note", "gone"});
  REQUIRE(eventually([&] { return shows(nodes.beta, "alice@alpha.test", "closed", "gone"); }));

  // The watcher's node restarts: its watch is in its store and is sent again.
  Pair::stop(nodes.beta_node);
  nodes.start_beta();
  CHECK(shows(nodes.beta, "alice@alpha.test", "closed", "gone"));  // what was last NOTIFYed, kept
  REQUIRE(eventually([&] { return acl_of(nodes.alpha, "alice@alpha.test")["watchers"].size() == 1; }));
  ok({"presence", "--config", alpha, "set", "alice@alpha.test", "open", "--note", "back"});
  REQUIRE(eventually([&] { return shows(nodes.beta, "alice@alpha.test", "open", "back"); }));

  // The presentity's node restarts: presence and lists come back from its
  // store, and the watcher's node subscribes again on a new session.
  Pair::stop(nodes.alpha_node);
  nodes.start_alpha();
  CHECK(shows(nodes.alpha, "alice@alpha.test", "open", "back"));
  CHECK(acl_of(nodes.alpha, "alice@alpha.test")["presence"] ==
        json::parse(R"([{"pattern":"bob@beta.test","verdict":"allow"}])"));
  REQUIRE(eventually([&] { return acl_of(nodes.alpha, "alice@alpha.test")["watchers"].size() == 1; }));
  ok({"presence", "--config", alpha, "set", "alice@alpha.test", "open", "--note", "again"});
  REQUIRE(eventually([&] { return shows(nodes.beta, "alice@alpha.test", "open", "again"); }));

  // Withdrawn: deny replaces the allow; one final NOTIFY "closed", then nothing.
  ok({"deny", "--config", alpha, "alice@alpha.test", "presence", "bob@beta.test"});
  REQUIRE(eventually([&] { return shows(nodes.beta, "alice@alpha.test", "closed", ""); }));
  ok({"presence", "--config", alpha, "set", "alice@alpha.test", "open", "--note", "secret"});
  std::this_thread::sleep_for(std::chrono::seconds(1));
  CHECK(shows(nodes.beta, "alice@alpha.test", "closed", ""));
  acl = acl_of(nodes.alpha, "alice@alpha.test");
  CHECK(acl["presence"] == json::parse(R"([{"pattern":"bob@beta.test","verdict":"deny"}])"));
  CHECK(acl["watchers"][0]["authorized"] == false);

  // A whole-domain allow does not lift a user's deny (deny wins); removing the deny does.
  ok({"allow", "--config", alpha, "alice@alpha.test", "presence", "*@beta.test"});
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  CHECK(shows(nodes.beta, "alice@alpha.test", "closed", ""));
  ok({"acl", "--config", alpha, "alice@alpha.test", "--remove", "presence", "bob@beta.test"});
  REQUIRE(eventually([&] { return shows(nodes.beta, "alice@alpha.test", "open", "secret"); }));

  // Unwatched: no more NOTIFYs are asked for.
  ok({"unwatch", "--config", beta, "bob@beta.test", "alice@alpha.test"});
  REQUIRE(eventually([&] { return acl_of(nodes.alpha, "alice@alpha.test")["watchers"].empty(); }));
  CHECK(acl_of(nodes.beta, "bob@beta.test")["watching"].empty());
}

TEST_CASE("presence and list commands refuse bad input with exit status 2", "[presence][cli]") {
  TempDir dir;
  Pair nodes(dir);
  nodes.start_alpha();
  std::string alpha = nodes.alpha.string();
  auto refused = [&](std::vector<std::string> args, const std::string& expected) {
    auto [status, out, err] = cli(args);
    CHECK(status == static_cast<int>(ExitStatus::BadInput));
    CHECK_THAT(err, Catch::Contains(expected));
  };
  refused({"presence", "--config", alpha, "set", "mallory@alpha.test", "open"}, "local user");
  refused({"presence", "--config", alpha, "set", "alice@alpha.test", "away"}, "away");
  refused({"presence", "--config", alpha, "set", "alice@alpha.test", "open", "--note", "a\nb"}, "control characters");
  refused({"presence", "--config", alpha, "set", "alice@alpha.test", "open", "--note", std::string(2000, 'x')},
          "longer than");
  refused({"watch", "--config", alpha, "bob@beta.test", "alice@alpha.test"}, "local user");
  refused({"allow", "--config", alpha, "alice@alpha.test", "presence", "bob@@beta.test"}, "not user@domain");
  refused({"deny", "--config", alpha, "alice@alpha.test", "calendar", "bob@beta.test"}, "calendar");
  refused({"acl", "--config", alpha, "alice@alpha.test", "--remove", "presence", "*@bad_domain"}, "not user@domain");
  // Nothing was changed by the refusals.
  json acl = acl_of(nodes.alpha, "alice@alpha.test");
  CHECK(acl["presence"].empty());
  CHECK(acl["inbox"].empty());
  CHECK(presence_of(nodes.alpha, "alice@alpha.test")["document"].is_null());
  // keys: the running node's cache, as lookup prints it.
  json keys = json::parse(ok({"keys", "--config", alpha, "--json"}));
  CHECK(keys.is_array());
}

TEST_CASE("an inbox's deny list refuses the sender, never stores it, and deny wins over allow", "[messaging][store]") {
  TempDir dir;
  Pair nodes(dir);
  nodes.start_alpha();
  nodes.start_beta();
  std::string alpha = nodes.alpha.string(), beta = nodes.beta.string();
  ok({"deny", "--config", beta, "bob@beta.test", "inbox", "*@alpha.test"});
  ok({"allow", "--config", beta, "bob@beta.test", "inbox", "alice@alpha.test"});
  auto note = write_file(dir, "note.cpim", "From: <im:alice@alpha.test>\r\nTo: <im:bob@beta.test>\r\n\r\nhello bob");
  std::string id = json::parse(ok({"send", "--config", alpha, "--json", note}))["id"];
  REQUIRE(eventually([&] { return queue_of(nodes.alpha)[0]["state"] == "failed"; }));
  json q = queue_of(nodes.alpha);
  CHECK(q[0]["id"] == id);
  CHECK_THAT(q[0]["last_error"].get<std::string>(), Catch::Contains("NACK 5"));
  CHECK(inbox_of(nodes.beta, "bob@beta.test").empty());
  // alice is told, in her own inbox.
  REQUIRE(eventually([&] { return inbox_of(nodes.alpha, "alice@alpha.test").size() == 1; }));
  CHECK_THAT(inbox_of(nodes.alpha, "alice@alpha.test")[0]["cpim"].get<std::string>(),
             Catch::Contains("does not take messages from im:alice@alpha.test"));

  // The domain-wide deny removed: the user's allow lets the next one in.
  ok({"acl", "--config", beta, "bob@beta.test", "--remove", "inbox", "*@alpha.test"});
  std::string id2 = json::parse(ok({"send", "--config", alpha, "--json", note}))["id"];
  REQUIRE(eventually([&] { return inbox_of(nodes.beta, "bob@beta.test").size() == 1; }));
  CHECK(inbox_of(nodes.beta, "bob@beta.test")[0]["id"] == id2);
  // A local sender is held to the same list.
  ok({"deny", "--config", alpha, "alice@alpha.test", "inbox", "alice@alpha.test"});  // oneself: always allowed
  auto memo = write_file(dir, "memo.cpim", "From: <im:alice@alpha.test>\r\nTo: <im:alice@alpha.test>\r\n\r\nmemo");
  ok({"send", "--config", alpha, memo});
}

TEST_CASE("delivery notifications (RFC 5438): delivered, and failed for an unknown user, land in the sender's inbox",
          "[messaging][imdn]") {
  TempDir dir;
  Pair nodes(dir);
  nodes.start_alpha();
  nodes.start_beta();
  std::string alpha = nodes.alpha.string();
  auto asked = write_file(dir, "asked.cpim",
                          "From: <im:alice@alpha.test>\r\nTo: <im:bob@beta.test>\r\nNS: imdn <urn:ietf:params:imdn>\r\n"
                          "imdn.Message-ID: 34jk324j\r\nDateTime: 2026-11-24T08:00:00Z\r\n"
                          "imdn.Disposition-Notification: positive-delivery, negative-delivery\r\n\r\n"
                          "Content-Type: text/plain\r\n\r\nplease confirm");
  CHECK(json::parse(ok({"send", "--config", alpha, "--json", asked}))["id"] == "34jk324j");
  REQUIRE(eventually([&] { return inbox_of(nodes.alpha, "alice@alpha.test").size() == 1; }));
  json notice = inbox_of(nodes.alpha, "alice@alpha.test")[0];
  CHECK(notice["from"] == "im:bob@beta.test");
  CHECK(notice["peer_domain"] == "beta.test");
  CHECK(notice["decision"] == "authenticated");
  std::string cpim = notice["cpim"];
  CHECK_THAT(cpim, Catch::Contains("Content-Type: message/imdn+xml"));
  CHECK_THAT(cpim, Catch::Contains("<message-id>34jk324j</message-id>"));
  CHECK_THAT(cpim, Catch::Contains("<datetime>2026-11-24T08:00:00Z</datetime>"));
  CHECK_THAT(cpim, Catch::Contains("<delivered/>"));
  CHECK_THAT(cpim, !Catch::Contains("Disposition-Notification"));  // a notice asks for no notice
  CHECK(inbox_of(nodes.beta, "bob@beta.test").size() == 1);
  ok({"inbox", "--config", alpha, "alice@alpha.test", "--take"});

  // To a user beta.test does not have: refused, and a "failed" notice comes back.
  auto lost = write_file(dir, "lost.cpim",
                         "From: <im:alice@alpha.test>\r\nTo: <im:nobody@beta.test>\r\nNS: imdn <urn:ietf:params:imdn>\r\n"
                         "imdn.Message-ID: lost-1\r\nimdn.Disposition-Notification: negative-delivery\r\n\r\nhello?");
  ok({"send", "--config", alpha, lost});
  REQUIRE(eventually([&] {
    json inbox = inbox_of(nodes.alpha, "alice@alpha.test");
    return std::any_of(inbox.begin(), inbox.end(), [](const json& m) {
      return m["cpim"].get<std::string>().find("<failed/>") != std::string::npos;
    });
  }));
  json inbox = inbox_of(nodes.alpha, "alice@alpha.test");
  for (const json& m : inbox) {
    if (m["from"] == "im:nobody@beta.test") CHECK_THAT(m["cpim"].get<std::string>(), Catch::Contains("lost-1"));
  }
  // No positive notice was asked for this one: none came.
  for (const json& m : inbox) CHECK_THAT(m["cpim"].get<std::string>(), !Catch::Contains("<delivered/>"));
}

TEST_CASE("a peer's message with a Require the node does not implement is refused as malformed, naming it",
          "[messaging][cpim]") {
  TempDir dir;
  Pair nodes(dir);
  nodes.start_alpha();
  nodes.start_beta();
  auto required = write_file(dir, "required.cpim",
                             "From: <im:alice@alpha.test>\r\nTo: <im:bob@beta.test>\r\nNS: x <urn:example:x>\r\n"
                             "Require: x.Vital\r\nx.Vital: yes\r\n\r\nbody");
  // Refused at submission already: the node itself does not implement it.
  auto [status, out, err] = cli({"send", "--config", nodes.alpha.string(), required});
  CHECK(status == static_cast<int>(ExitStatus::BadInput));
  CHECK_THAT(err, Catch::Contains("Vital"));
}

TEST_CASE("a message to users of several domains reaches every one of them, once", "[messaging][store]") {
  TempDir dir;
  Pair nodes(dir);
  nodes.start_alpha();
  nodes.start_beta();
  auto both = write_file(dir, "both.cpim",
                         "From: <im:alice@alpha.test>\r\nTo: <im:bob@beta.test>\r\ncc: <im:alice@alpha.test>\r\n\r\nto all");
  std::string id = json::parse(ok({"send", "--config", nodes.alpha.string(), "--json", both}))["id"];
  REQUIRE(eventually([&] { return queue_of(nodes.alpha)[0]["state"] == "delivered"; }));
  json bob = inbox_of(nodes.beta, "bob@beta.test");
  REQUIRE(bob.size() == 1);
  CHECK(bob[0]["id"] == id);
  json alice = inbox_of(nodes.alpha, "alice@alpha.test");
  REQUIRE(alice.size() == 1);
  CHECK(alice[0]["id"] == id);
  CHECK(alice[0]["cpim"] == bob[0]["cpim"]);  // the same bytes on both sides
}
