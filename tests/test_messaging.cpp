// Messages carried for users (docs/STORE.md), end to end: two `keyfed run`
// nodes with their SQLite stores, the CLI speaking to each node's control
// socket. Real processes, real TLS on loopback, real database files.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstring>
#include <regex>
#include <set>

#include <fmt/format.h>
#include <fstream>
#include <sstream>
#include <thread>
#include <tuple>

#include "child_process.h"
#include "cli/cli.h"
#include "daemon/message_service.h"
#include "store/sqlite_store.h"
#include "fed_harness.h"
#include "harness.h"

using namespace keyfed;
using namespace keyfed::test;

namespace {

std::string write_file(const TempDir& dir, const std::string& name, const std::string& text) {
  auto path = dir.path() / name;
  std::ofstream(path, std::ios::binary) << text;
  return path.string();
}

nlohmann::json queue_of(const std::filesystem::path& config) {
  auto [status, out, err] = cli({"queue", "--config", config.string(), "--json"});
  REQUIRE(status == 0);
  return nlohmann::json::parse(out);
}

nlohmann::json inbox_of(const std::filesystem::path& config, const std::string& user) {
  auto [status, out, err] = cli({"inbox", "--config", config.string(), user, "--json"});
  INFO(err);
  REQUIRE(status == 0);
  return nlohmann::json::parse(out);
}

const char* kHello =
    "From: Bob <im:bob@beta.test>\r\nTo: Alice <im:alice@alpha.test>\r\nDateTime: 2026-11-23T09:00:00Z\r\n\r\n"
    "Content-Type: text/plain\r\n\r\nHello from beta.test\r\n";

}  // namespace

TEST_CASE("a submitted message waits while its domain is down, then is delivered once, byte for byte",
          "[messaging][store]") {
  TempDir dir;
  int alpha_port = free_port();
  auto alpha = write_node_config(dir, fedkey("alpha-1"), "alpha.test",
                                 "users = [\"alice\"]\n[delivery]\nretry_first_s = 1\nretry_max_s = 2\n");
  // alpha's node listens on the port beta's [[peers]] names.
  {
    std::ifstream in(alpha);
    std::stringstream text;
    text << in.rdbuf();
    std::string s = std::regex_replace(text.str(), std::regex("port = 0"), "port = " + std::to_string(alpha_port));
    std::ofstream(alpha) << s;
  }
  auto beta = write_node_config(dir, fedkey("beta-new"), "beta.test",
                                "users = [\"bob\"]\n[delivery]\nretry_first_s = 1\nretry_max_s = 2\n"
                                "[[peers]]\ndomain = \"alpha.test\"\naddress = \"127.0.0.1\"\nport = " +
                                    std::to_string(alpha_port) + "\n");
  Child beta_node({"keyfed", "run", "--config", beta.string()});
  REQUIRE_FALSE(beta_node.wait_for(std::regex("control socket")).empty());

  auto hello = write_file(dir, "hello.cpim", kHello);
  auto [status, out, err] = cli({"send", "--config", beta.string(), "--json", hello});
  INFO(err);
  REQUIRE(status == 0);
  auto submitted = nlohmann::json::parse(out);
  std::string id = submitted["id"];
  CHECK(submitted["file"] == hello);
  CHECK(id.size() == 32);

  // alpha.test is down: queued, tried, not delivered.
  REQUIRE(eventually([&] {
    auto q = queue_of(beta);
    return q.size() == 1 && q[0]["attempts"].get<int>() >= 1;
  }));
  auto q = queue_of(beta);
  CHECK(q[0]["id"] == id);
  CHECK(q[0]["state"] == "queued");
  CHECK(q[0]["to_domain"] == "alpha.test");
  CHECK_FALSE(q[0]["last_error"].get<std::string>().empty());

  Child alpha_node({"keyfed", "run", "--config", alpha.string()});
  REQUIRE_FALSE(alpha_node.wait_for(std::regex("control socket")).empty());
  REQUIRE(eventually([&] { return queue_of(beta)[0]["state"] == "delivered"; }));

  auto inbox = inbox_of(alpha, "alice@alpha.test");
  REQUIRE(inbox.size() == 1);
  CHECK(inbox[0]["id"] == id);
  CHECK(inbox[0]["from"] == "im:bob@beta.test");
  CHECK(inbox[0]["peer_domain"] == "beta.test");
  CHECK(inbox[0]["decision"] == "authenticated");
  // The bytes stored are the bytes submitted, with the identity the origin added in front.
  std::string expected = "NS: imdn <urn:ietf:params:imdn>\r\nimdn.Message-ID: " + id + "\r\n" + kHello;
  CHECK(inbox[0]["cpim"] == expected);

  // Submitted again with its identity: never a second delivery.
  auto again = write_file(dir, "again.cpim", expected);
  auto [status2, out2, err2] = cli({"send", "--config", beta.string(), "--json", again});
  REQUIRE(status2 == 0);
  CHECK(nlohmann::json::parse(out2)["id"] == id);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  CHECK(inbox_of(alpha, "alice@alpha.test").size() == 1);
  CHECK(queue_of(beta).size() == 1);

  // --take empties the inbox.
  auto [status3, out3, err3] = cli({"inbox", "--config", alpha.string(), "im:alice@alpha.test", "--json", "--take"});
  REQUIRE(status3 == 0);
  CHECK(nlohmann::json::parse(out3).size() == 1);
  CHECK(inbox_of(alpha, "alice@alpha.test").empty());
}

TEST_CASE("submission refusals and a node that is not running have their own exit statuses", "[messaging][cli]") {
  TempDir dir;
  auto beta = write_node_config(dir, fedkey("beta-new"), "beta.test", "users = [\"bob\"]\n");
  auto hello = write_file(dir, "hello.cpim", kHello);
  {
    auto [status, out, err] = cli({"send", "--config", beta.string(), hello});
    CHECK(status == static_cast<int>(ExitStatus::NotRunning));
    CHECK_THAT(err, Catch::Contains("not running"));
  }
  Child node({"keyfed", "run", "--config", beta.string()});
  REQUIRE_FALSE(node.wait_for(std::regex("control socket")).empty());
  auto stranger = write_file(dir, "stranger.cpim",
                             "From: <im:mallory@beta.test>\r\nTo: <im:alice@alpha.test>\r\n\r\nhi");
  auto broken = write_file(dir, "broken.cpim", "From: <im:bob@beta.test>\r\nfrom: <im:ceo@alpha.test>\r\n\r\nhi");
  auto local_unknown = write_file(dir, "local.cpim", "From: <im:bob@beta.test>\r\nTo: <im:nobody@beta.test>\r\n\r\nhi");
  for (auto [file, expected] : {std::pair{stranger, "not a local user"}, std::pair{broken, "not a valid message/cpim"},
                                std::pair{local_unknown, "nobody@beta.test is not a user here"}}) {
    auto [status, out, err] = cli({"send", "--config", beta.string(), file});
    CHECK(status == static_cast<int>(ExitStatus::BadInput));
    CHECK_THAT(err, Catch::Contains(expected));
  }
  // Nothing refused was queued.
  CHECK(queue_of(beta).empty());
  auto [status, out, err] = cli({"inbox", "--config", beta.string(), "mallory@beta.test"});
  CHECK(status == static_cast<int>(ExitStatus::BadInput));
}

TEST_CASE("a control client that sends garbage or leaves mid-command gets an error and costs nothing",
          "[messaging][control]") {
  TempDir dir;
  auto alpha = write_node_config(dir, fedkey("alpha-1"), "alpha.test", "users = [\"alice\"]\n");
  Child node({"keyfed", "run", "--config", alpha.string()});
  REQUIRE_FALSE(node.wait_for(std::regex("control socket")).empty());
  auto socket = std::filesystem::path(alpha).replace_extension(".sock");
  // A message for alice, committed by the node itself.
  auto note = write_file(dir, "note.cpim", "From: <im:alice@alpha.test>\r\nTo: <im:alice@alpha.test>\r\n\r\nmemo");
  REQUIRE(std::get<0>(cli({"send", "--config", alpha.string(), note})) == 0);

  auto raw = [&](const std::string& bytes, bool half_close) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, socket.c_str(), sizeof addr.sun_path - 1);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size()));
    if (half_close) ::shutdown(fd, SHUT_WR);
    std::string answers;
    char chunk[4096];
    timeval tv{2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    for (ssize_t n; (n = ::recv(fd, chunk, sizeof chunk, 0)) > 0;) {
      answers.append(chunk, static_cast<std::size_t>(n));
      if (std::count(answers.begin(), answers.end(), '\n') >= 3) break;
    }
    ::close(fd);
    return answers;
  };
  // Garbage, a JSON nesting bomb and an unknown command: three refusals, one connection.
  std::string answers = raw("not json\n" + std::string(100000, '[') + "\n{\"command\":\"rm -rf\"}\n", false);
  CHECK(std::count(answers.begin(), answers.end(), '\n') == 3);
  CHECK_THAT(answers, Catch::Contains("\"status\":\"bad-request\""));
  CHECK_THAT(answers, Catch::Contains("\"status\":\"unknown-command\""));
  // A client that asks for the inbox and leaves at once takes nothing away.
  (void)raw("{\"command\":\"inbox\",\"user\":\"alice@alpha.test\",\"take\":true}\n", true);
  CHECK(inbox_of(alpha, "alice@alpha.test").size() == 1);
  // The node still serves.
  CHECK(std::get<0>(cli({"queue", "--config", alpha.string()})) == 0);
}

TEST_CASE("bogus and temp-fail destinations are deferred, never downgraded, and never contacted", "[messaging][store]") {
  TempDir dir;
  // A plain listener stands for every destination: nothing may connect to it.
  int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::listen(listener, 16) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  std::string port = std::to_string(ntohs(addr.sin_port));
  std::string peers;
  for (const char* domain : {"tampered.test", "expired.test", "example.com"}) {
    peers += fmt::format("[[peers]]\ndomain = \"{}\"\naddress = \"127.0.0.1\"\nport = {}\n", domain, port);
  }
  auto alpha = write_node_config(dir, fedkey("alpha-1"), "alpha.test",
                                 "users = [\"alice\"]\n[delivery]\nretry_first_s = 1\nretry_max_s = 1\n" + peers);
  Child node({"keyfed", "run", "--config", alpha.string()});
  REQUIRE_FALSE(node.wait_for(std::regex("control socket")).empty());
  auto message = write_file(dir, "m.cpim",
                            "From: <im:alice@alpha.test>\r\nTo: <im:bob@tampered.test>\r\nTo: <im:eve@expired.test>\r\n"
                            "To: <im:carol@example.com>\r\n\r\nhello");
  auto [status, out, err] = cli({"send", "--config", alpha.string(), message});
  INFO(err);
  REQUIRE(status == 0);
  // Each domain tried again and again, each time refused before any connection.
  REQUIRE(eventually([&] {
    auto q = queue_of(alpha);
    return q.size() == 3 && std::all_of(q.begin(), q.end(), [](const auto& e) { return e["attempts"] >= 3; });
  }));
  for (const auto& e : queue_of(alpha)) {
    INFO(e.dump());
    CHECK(e["state"] == "queued");
    const std::string error = e["last_error"];
    if (e["to_domain"] == "example.com") {
      CHECK_THAT(error, Catch::Contains("temp-fail"));
    } else {
      CHECK_THAT(error, Catch::Contains("bogus"));
    }
  }
  CHECK(::accept(listener, nullptr, nullptr) < 0);  // never contacted
  CHECK(errno == EAGAIN);
  ::close(listener);
}

TEST_CASE("a message not delivered within its lifetime is given up once, with a notice in the sender's inbox",
          "[messaging][store]") {
  TempDir dir;
  int dark = free_port();  // nothing listens there
  auto alpha = write_node_config(dir, fedkey("alpha-1"), "alpha.test",
                                 "users = [\"alice\"]\n[delivery]\nretry_first_s = 1\nretry_max_s = 1\nlifetime_s = 3\n"
                                 "[[peers]]\ndomain = \"beta.test\"\naddress = \"127.0.0.1\"\nport = " +
                                     std::to_string(dark) + "\n");
  Child node({"keyfed", "run", "--config", alpha.string()});
  REQUIRE_FALSE(node.wait_for(std::regex("control socket")).empty());
  auto message = write_file(dir, "m.cpim", "From: <im:alice@alpha.test>\r\nTo: <im:bob@beta.test>\r\n\r\nhello");
  auto [status, out, err] = cli({"send", "--config", alpha.string(), "--json", message});
  REQUIRE(status == 0);
  std::string id = nlohmann::json::parse(out)["id"];
  REQUIRE(eventually([&] { return queue_of(alpha)[0]["state"] == "failed"; }));
  auto q = queue_of(alpha);
  CHECK(q[0]["attempts"] >= 1);
  CHECK_THAT(q[0]["last_error"].get<std::string>(), Catch::Contains("lifetime"));
  auto inbox = inbox_of(alpha, "alice@alpha.test");
  REQUIRE(inbox.size() == 1);
  CHECK(inbox[0]["from"] == "im:postmaster@alpha.test");
  CHECK_THAT(inbox[0]["cpim"].get<std::string>(), Catch::Contains(id));
  CHECK_THAT(inbox[0]["cpim"].get<std::string>(), Catch::Contains("was not delivered"));
  std::this_thread::sleep_for(std::chrono::seconds(2));
  CHECK(inbox_of(alpha, "alice@alpha.test").size() == 1);  // once
}

TEST_CASE("a session opened to deliver is closed once idle, unless a presence watch needs it", "[messaging][store]") {
  TestLoop loop;
  FedNode beta(loop, "beta.test", fedkey("beta-new"));
  FedNode alpha(loop, "alpha.test", fedkey("alpha-1"));
  auto store = open_sqlite_store(loop.get(), {.path = scratch_path("idle.db")});
  REQUIRE(store.ok());
  NodeConfig config;
  config.federation = alpha.node->settings();
  config.users["alpha.test"] = {"alice"};
  config.peers = {{"beta.test", "127.0.0.1", beta.node->port()}};
  config.delivery.retry_first = std::chrono::seconds(1);
  config.delivery.idle_close = std::chrono::seconds(1);
  AccessLists access(config.access);
  (void)access.load({});
  auto messages = std::make_unique<MessageService>(loop.get(), *alpha.node, **store, access, config);
  bool watched = true;
  messages->keep_open([&](const std::string& local, const std::string& peer) {
    return watched && local == "alpha.test" && peer == "beta.test";
  });
  auto established = [&] {
    auto sessions = alpha.node->sessions();
    return std::count_if(sessions.begin(), sessions.end(), [](const SessionInfo& s) { return s.established; });
  };
  bool committed = false;
  std::string cpim = cpim_message("im:alice@alpha.test", "im:bob@beta.test", "hello");
  messages->submit({cpim.begin(), cpim.end()}, [&](auto r) {
    committed = std::holds_alternative<MessageService::Submitted>(r);
  });
  loop.run_until([&] { return committed && beta.delivered.size() == 1; });
  REQUIRE(established() == 1);
  // Idle for more than idle_close_s, but a watch needs the domain: kept.
  auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(2500);
  loop.run_until([&] { return std::chrono::steady_clock::now() >= until; }, std::chrono::seconds(5));
  CHECK(established() == 1);
  // No watch any more: closed at the next look.
  watched = false;
  loop.run_until([&] { return alpha.node->sessions().empty(); }, std::chrono::seconds(5));
  CHECK(alpha.closed.size() == 1);
  CHECK_THAT(alpha.closed[0].second, Catch::Contains("idle"));
  messages.reset();
  store->reset();
}

TEST_CASE("a backlog goes out 64 messages at a time, does not hold up other domains, then is delivered once",
          "[messaging][store]") {
  TestLoop loop;
  FedNode alpha(loop, "alpha.test", fedkey("alpha-1"));
  // beta.test's node holds every answer until the test lets it go.
  FedNode gamma(loop, "gamma.test", fedkey("gamma-1"));  // answers at once; its cache serves beta's node too
  std::vector<DeliveryReply> held;
  std::set<std::string> received;
  NodeSettings beta_settings;
  beta_settings.domains = {{"beta.test", {fedkey("beta-new")}}};
  beta_settings.revalidate_interval = std::chrono::milliseconds(0);
  Node::Handlers handlers;
  handlers.deliver = [&](const DeliveredMessage& m, DeliveryReply reply) {
    received.insert(std::string(m.cpim.begin(), m.cpim.end()));
    held.push_back(std::move(reply));
  };
  auto beta = Node::create(loop.get(), *gamma.cache, beta_settings, handlers);
  REQUIRE(beta.ok());
  REQUIRE((*beta)->listen("127.0.0.1", 0).ok());

  auto store = open_sqlite_store(loop.get(), {.path = scratch_path("window.db")});
  REQUIRE(store.ok());
  NodeConfig config;
  config.federation = alpha.node->settings();
  config.users["alpha.test"] = {"alice"};
  config.peers = {{"beta.test", "127.0.0.1", (*beta)->port()}, {"gamma.test", "127.0.0.1", gamma.node->port()}};
  AccessLists access(config.access);
  (void)access.load({});
  auto messages = std::make_unique<MessageService>(loop.get(), *alpha.node, **store, access, config);
  constexpr int kBacklog = 300;  // more than one pass reads
  int committed = 0;
  for (int i = 0; i < kBacklog; ++i) {
    std::string cpim = cpim_message("im:alice@alpha.test", "im:bob@beta.test", "backlog " + std::to_string(i));
    messages->submit({cpim.begin(), cpim.end()}, [&](auto r) {
      if (std::holds_alternative<MessageService::Submitted>(r)) ++committed;
    });
  }
  loop.run_until([&] { return committed == kBacklog && held.size() == 64; });
  // Nothing more while all 64 wait for their answer.
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  loop.run_until([&] { return std::chrono::steady_clock::now() >= until; });
  CHECK(held.size() == 64);
  // A message to another domain goes at once, past beta.test's backlog.
  std::string other = cpim_message("im:alice@alpha.test", "im:carol@gamma.test", "not held up");
  messages->submit({other.begin(), other.end()}, [&](auto) {});
  loop.run_until([&] { return gamma.delivered.size() == 1; }, std::chrono::seconds(10));
  CHECK(held.size() == 64);
  // Answers free the window; the backlog drains, each message once.
  std::size_t answered = 0;
  loop.run_until([&] {
    for (; answered < held.size(); ++answered) held[answered](std::nullopt);
    return answered == static_cast<std::size_t>(kBacklog);
  }, std::chrono::seconds(30));
  CHECK(received.size() == static_cast<std::size_t>(kBacklog));
  CHECK(held.size() == static_cast<std::size_t>(kBacklog));
  messages.reset();
  beta->reset();
  store->reset();
}
