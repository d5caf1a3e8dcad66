// Tests of `keyfed rollover` (docs/CLI.md), its dynamic updates with TSIG
// (src/tooling/dns_update.h) and the Knot DNS server it is tested against
// (src/tooling/knot_server.h). Real parts only: a real knotd on loopback,
// started here, signing its zones itself; real libunbound validation through
// it; real `keyfed run` nodes with real TLS.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "child_process.h"
#include "cli/cli.h"
#include "harness.h"
#include "tooling/dns_update.h"
#include "tooling/knot_server.h"
#include "tooling/rollover.h"
#include "tooling/support.h"

using namespace keyfed;
using namespace keyfed::test;
namespace fs = std::filesystem;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void spit(const fs::path& p, const std::string& text, fs::perms perms = fs::perms::owner_read | fs::perms::owner_write) {
  std::ofstream(p) << text;
  fs::permissions(p, perms);
}

// `keyfed keygen DOMAIN --out FILE --ttl TTL`: the record it prints.
std::string keygen(const fs::path& file, const std::string& domain, int ttl = 2) {
  fs::create_directories(file.parent_path());
  auto [status, out, err] = cli({"keygen", domain, "--out", file.string(), "--ttl", std::to_string(ttl)});
  INFO(err);
  REQUIRE(status == 0);
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

// The base64 key of a printed record.
std::string key_of(const std::string& record) { return record.substr(record.rfind(' ') + 1); }

// Knot serving test. and the given children (each with its KEY records).
std::unique_ptr<KnotServer> start_knot_for(const fs::path& dir, const std::vector<std::pair<std::string, std::string>>& children,
                                           std::uint32_t ttl = 2) {
  KnotSetup setup;
  setup.dir = dir;
  setup.ttl = ttl;
  setup.zones.push_back({"test", ""});
  for (const auto& [origin, records] : children) setup.zones.push_back({origin, records});
  auto knot = KnotServer::start(setup);
  INFO((knot ? std::string() : knot.error().message));
  REQUIRE(knot);
  return std::move(knot).value();
}

// A node configuration resolving through Knot only.
fs::path knot_node_config(const fs::path& dir, const KnotInfo& knot, const std::string& domain, const fs::path& key,
                          int port, const std::string& extra = "") {
  std::string text = fmt::format(
      "[resolver]\nmode = \"testbed\"\ntrust_anchor = \"{}\"\nserver = \"{}\"\nquery_timeout_ms = 2000\n\n"
      "[key_cache]\nmin_ttl = 1\nfailure_ttl = 1\n\n"
      "[node]\nlisten = \"127.0.0.1\"\nport = {}\nrevalidate_interval_ms = 1000\n\n"
      "[[domains]]\nname = \"{}\"\nkeys = [\"{}\"]\n{}",
      knot.trust_anchor.string(), knot.server(), port, domain, fs::relative(key, dir).string(), extra);
  fs::path file = dir / ("node-" + domain + ".toml");
  spit(file, text);
  return file;
}

nlohmann::json lookup_json(const fs::path& config, const std::string& domain) {
  auto [status, out, err] = cli({"lookup", "--config", config.string(), "--json", domain});
  INFO(err);
  REQUIRE(status >= 0);
  REQUIRE(status != 1);
  REQUIRE(status != 2);
  return nlohmann::json::parse(out)[0];
}

std::vector<std::string> keys_in(const nlohmann::json& answer) {
  std::vector<std::string> keys;
  for (const auto& k : answer["keys"]) keys.push_back(k["key"]);
  return keys;
}

bool has(const std::vector<std::string>& v, const std::string& x) { return std::find(v.begin(), v.end(), x) != v.end(); }

}  // namespace

TEST_CASE("TSIG key files: BIND and knsupdate forms, strict, the secret never in an error", "[rollover]") {
  auto bind = parse_tsig_key("# made by tsig-keygen\nkey \"upd.example\" {\n\talgorithm hmac-sha256;\n\tsecret "
                             "\"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0\";\n};\n",
                             "t.key");
  REQUIRE(bind);
  CHECK(bind->name == "upd.example");
  CHECK(bind->algorithm == "hmac-sha256");
  CHECK(bind->secret == "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0");
  auto line = parse_tsig_key("hmac-sha512:k1.:c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0\n", "t.key");
  REQUIRE(line);
  CHECK(line->name == "k1");
  CHECK(line->algorithm == "hmac-sha512");
  auto two = parse_tsig_key("k2:c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0", "t.key");
  REQUIRE(two);
  CHECK(two->algorithm == "hmac-sha256");
  // '/' is base64: a secret holding "//" is a secret, not a comment (in
  // either form), while a comment after the key still is one.
  auto slashes = parse_tsig_key("key \"k\" { // the update key\n algorithm hmac-sha256;\n secret \"ab//cd+/ef//gh==\"; };\n"
                                "# end\n", "t.key");
  REQUIRE(slashes);
  CHECK(slashes->secret == "ab//cd+/ef//gh==");
  auto slashes_line = parse_tsig_key("hmac-sha256:k:ab//cd+/ef//gh== // from knsupdate\n", "t.key");
  REQUIRE(slashes_line);
  CHECK(slashes_line->secret == "ab//cd+/ef//gh==");
  CHECK_FALSE(parse_tsig_key(std::string(5000, 'a'), "t.key"));

  for (const char* bad : {"", "hmac-sha256:k1", "hmac-foo:k1:c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0",
                          "hmac-sha256:k1:not base64!", "key \"k\" { algorithm hmac-sha256; };",
                          "key \"k\" { algorithm hmac-sha256; secret \"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0\"; frob x; };",
                          "key \"k\" { algorithm hmac-sha256; secret \"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0\"; }; key \"j\" {};"}) {
    auto r = parse_tsig_key(bad, "t.key");
    INFO(bad);
    REQUIRE_FALSE(r);
    CHECK(r.error().message.find("t.key") == 0);
    CHECK(r.error().message.find("c2VjcmV0c2VjcmV0") == std::string::npos);
  }

  TempDir dir;
  fs::path file = dir.path() / "tsig.key";
  spit(file, "hmac-sha256:k:c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0\n",
       fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);
  auto loose = read_tsig_file(file);
  REQUIRE_FALSE(loose);
  CHECK(loose.error().message.find("group or others") != std::string::npos);
  fs::permissions(file, fs::perms::owner_read | fs::perms::owner_write);
  CHECK(read_tsig_file(file));

  CHECK(parse_dns_server("127.0.0.1@5353")->port == 5353);
  CHECK(parse_dns_server("::1")->port == 53);
  CHECK_FALSE(parse_dns_server("localhost@53"));
  CHECK_FALSE(parse_dns_server("127.0.0.1@70000"));
}

TEST_CASE("the keys array of one [[domains]] entry is rewritten in place, the rest byte for byte", "[rollover]") {
  std::string text =
      "# top\n[resolver]\nmode = \"testbed\"\n\n[[domains]]\nname = \"alpha.test\"\nkeys = [\"a.pem\"] # mine\n\n"
      "[[domains]]\nname = \"Beta.test\"\nkeys = [\n  \"b1.pem\", # old\n  \"b]2.pem\",\n]\nusers = [\"bob\"]\n";
  auto out = replace_domain_keys(text, "x.toml", "beta.test", {"new.pem", "b1.pem"});
  REQUIRE(out);
  CHECK(*out ==
        "# top\n[resolver]\nmode = \"testbed\"\n\n[[domains]]\nname = \"alpha.test\"\nkeys = [\"a.pem\"] # mine\n\n"
        "[[domains]]\nname = \"Beta.test\"\nkeys = [\"new.pem\", \"b1.pem\"]\nusers = [\"bob\"]\n");
  CHECK_FALSE(replace_domain_keys(text, "x.toml", "gamma.test", {"x.pem"}));
}

TEST_CASE("a generated key's record validates from an ldns-signzone zone and from Knot after a dynamic update; "
          "updates add and delete single records; a wrong TSIG secret is refused",
          "[rollover][knot]") {
  TempDir dir;
  const std::string record1 = keygen(dir.path() / "keys" / "alpha-1.pem", "alpha.test");
  const std::string record2 = keygen(dir.path() / "keys" / "alpha-2.pem", "alpha.test");

  SECTION("ldns-signzone") {
    fs::path zone = dir.path() / "alpha.test.zone";
    spit(zone, "$ORIGIN alpha.test.\n$TTL 2\n@ SOA ns.alpha.test. h.alpha.test. 1 60 60 600 2\n@ NS ns\nns A 127.0.0.1\n" +
                   record1 + "\n");
    REQUIRE(run_program({"/bin/sh", "-c",
                         "cd '" + dir.path().string() +
                             "' && ldns-keygen -k -a ED25519 alpha.test > zk && ldns-signzone -o alpha.test "
                             "alpha.test.zone $(cat zk) && ldns-key2ds -n -2 $(cat zk).key > ta.ds"}));
    auto [status, out, err] = cli({"lookup", "--json", "--trust-anchor", (dir.path() / "ta.ds").string(), "--zone",
                                   (dir.path() / "alpha.test.zone.signed").string(), "alpha.test"});
    INFO(err);
    REQUIRE(status == 0);
    auto answer = nlohmann::json::parse(out)[0];
    CHECK(answer["outcome"] == "keys");
    CHECK(keys_in(answer) == std::vector<std::string>{key_of(record1)});
  }

  SECTION("Knot") {
    auto knot = start_knot_for(dir.path() / "knot", {{"alpha.test", record1 + "\n"}});
    const KnotInfo& info = knot->info();
    auto config = knot_node_config(dir.path(), info, "alpha.test", dir.path() / "keys" / "alpha-1.pem", 0);
    auto before = lookup_json(config, "alpha.test");
    CHECK(before["outcome"] == "keys");
    CHECK(keys_in(before) == std::vector<std::string>{key_of(record1)});

    auto tsig = read_tsig_file(info.tsig_file);
    REQUIRE(tsig);
    auto server = parse_dns_server(info.server());
    REQUIRE(server);
    DnsUpdate add{"alpha.test", {record2}, {}};
    auto added = send_dns_update(*server, *tsig, add);
    INFO((added ? std::string() : added.error().message));
    REQUIRE(added);
    auto both = lookup_json(config, "alpha.test");
    CHECK(both["outcome"] == "keys");
    CHECK(keys_in(both).size() == 2);
    CHECK(has(keys_in(both), key_of(record2)));
    CHECK(both["ttl"] == 2);

    // Sent again (a re-run after a crash): nothing changes.
    REQUIRE(send_dns_update(*server, *tsig, add));
    CHECK(keys_in(lookup_json(config, "alpha.test")).size() == 2);

    // Delete the first record only: the second stays, over UDP this time.
    UpdateOptions udp;
    udp.tcp = false;
    REQUIRE(send_dns_update(*server, *tsig, DnsUpdate{"alpha.test", {}, {record1}}, udp));
    auto after = lookup_json(config, "alpha.test");
    CHECK(after["outcome"] == "keys");
    CHECK(keys_in(after) == std::vector<std::string>{key_of(record2)});

    // A wrong secret: refused, nothing changed, the error says why.
    TsigKey wrong = *tsig;
    wrong.secret = "d3JvbmdzZWNyZXR3cm9uZ3NlY3JldHdyb25nc2VjcmV0";
    auto refused = send_dns_update(*server, wrong, add);
    REQUIRE_FALSE(refused);
    INFO(refused.error().message);
    CHECK((refused.error().message.find("BADSIG") != std::string::npos ||
           refused.error().message.find("NOTAUTH") != std::string::npos));
    CHECK(refused.error().message.find(wrong.secret) == std::string::npos);
    // An unknown key name: refused too.
    TsigKey stranger = *tsig;
    stranger.name = "stranger";
    REQUIRE_FALSE(send_dns_update(*server, stranger, DnsUpdate{"alpha.test", {record1}, {}}));
    CHECK(keys_in(lookup_json(config, "alpha.test")) == std::vector<std::string>{key_of(record2)});
    // A zone Knot does not serve.
    auto notzone = send_dns_update(*server, *tsig, DnsUpdate{"gamma.test", {record1}, {}});
    REQUIRE_FALSE(notzone);
    CHECK(notzone.error().message.find("refused") != std::string::npos);

    // stop_knot by its pid file; the server is gone.
    REQUIRE(stop_knot(info.dir));
    CHECK_FALSE(fs::exists(info.pid_file));
    CHECK(lookup_json(config, "alpha.test")["outcome"] == "temp-fail");
  }
}

TEST_CASE("the rollover state machine refuses too early steps, is idempotent, survives crashes, rejects a corrupt "
          "state file",
          "[rollover][knot]") {
  TempDir dir;
  const fs::path key1 = dir.path() / "keys" / "beta-1.pem";
  const std::string record1 = keygen(key1, "beta.test");
  auto knot = start_knot_for(dir.path() / "knot", {{"beta.test", record1 + "\n"}});
  const KnotInfo& info = knot->info();
  auto config = knot_node_config(dir.path(), info, "beta.test", key1, 0);
  auto tsig = read_tsig_file(info.tsig_file);
  REQUIRE(tsig);

  std::int64_t clock = 1'900'000'000;
  WallClock now = [&] { return clock; };
  KeyLookup lookup = config_key_lookup(config);
  auto step = [&](RolloverStep s) {
    RolloverOptions o;
    o.config = config;
    o.domain = "beta.test";
    o.step = s;
    o.margin_seconds = 10;
    o.update_server = *parse_dns_server(info.server());
    o.tsig = *tsig;
    return run_rollover(o, lookup, now);
  };
  const fs::path state_file = dir.path() / "keys" / "beta.test.rollover.json";

  // Before anything: switch and retire are out of order (bad input).
  CHECK(step(RolloverStep::Switch).failure == RolloverFailure::BadInput);
  CHECK(step(RolloverStep::Retire).failure == RolloverFailure::BadInput);
  auto fresh = step(RolloverStep::Show);  // never rolled: status works too
  REQUIRE(fresh.ok);
  CHECK(fresh.json["phase"] == "none");
  CHECK(fresh.json["ttl"] == 2);
  auto plan = step(RolloverStep::Plan);
  REQUIRE(plan.ok);
  CHECK(plan.json["phase"] == "none");
  CHECK(plan.json["next_step"] == "next");
  CHECK_FALSE(fs::exists(state_file));  // plan changes nothing

  // A crash inside `next`, after the state named the new key file but before
  // the file existed: the re-run creates it under that name and goes on.
  {
    RolloverOptions o;
    o.config = config;
    o.domain = "beta.test";
    o.step = RolloverStep::Next;
    o.margin_seconds = 10;
    auto printed = run_rollover(o, lookup, now);  // no --update: prints the record only
    REQUIRE(printed.ok);
    CHECK(printed.json["visible"] == false);
    CHECK(printed.json["published_at"].is_null());
    const std::string file = printed.json["new_key"]["file"];
    auto state = nlohmann::json::parse(slurp(state_file));
    state["new_key"] = nullptr;
    spit(state_file, state.dump());
    fs::remove(file);
    auto rerun = run_rollover(o, lookup, now);
    REQUIRE(rerun.ok);
    CHECK(rerun.json["new_key"]["file"] == file);
    CHECK(fs::exists(file));
    CHECK(rerun.json["new_key"]["key"] != printed.json["new_key"]["key"]);  // never published: a fresh key is fine
  }

  auto next = step(RolloverStep::Next);
  INFO(next.message);
  REQUIRE(next.ok);
  CHECK(next.json["dns_update"] == "added");
  CHECK(next.json["visible"] == true);
  CHECK(next.json["published_at"] == clock);
  CHECK(next.json["wait_seconds"] == 12);  // TTL 2 (min_ttl 1) + margin 10
  const std::string new_key = next.json["new_key"]["key"];
  const std::string new_file = next.json["new_key"]["file"];
  CHECK(fs::exists(new_file));
  CHECK((fs::status(new_file).permissions() & (fs::perms::group_all | fs::perms::others_all)) == fs::perms::none);
  CHECK((fs::status(state_file).permissions() & (fs::perms::group_all | fs::perms::others_all)) == fs::perms::none);
  auto dns = lookup_json(config, "beta.test");
  CHECK(has(keys_in(dns), new_key));
  CHECK(has(keys_in(dns), key_of(record1)));

  // Idempotent: the same key, the published time kept.
  clock += 3;
  auto again = step(RolloverStep::Next);
  REQUIRE(again.ok);
  CHECK(again.json["new_key"]["key"] == new_key);
  CHECK(again.json["published_at"] == clock - 3);
  CHECK(keys_in(lookup_json(config, "beta.test")).size() == 2);

  // Too early to switch: its own failure, with the time to retry.
  auto early = step(RolloverStep::Switch);
  CHECK_FALSE(early.ok);
  CHECK(early.failure == RolloverFailure::TooEarly);
  CHECK(early.json["retry_at"] == clock - 3 + 12);
  CHECK(slurp(config).find(fs::path(new_file).filename().string()) == std::string::npos);
  {
    auto [status, out, err] = cli({"rollover", "--config", config.string(), "beta.test", "switch", "--json"});
    CHECK(status == 10);  // the real clock is far before the injected one... still too early
    CHECK(nlohmann::json::parse(out)["ok"] == false);
  }

  // A crash after the config was rewritten but before the state said so:
  // the switch is run again from the old state, and ends the same.
  clock += 10;
  const std::string state_before_switch = slurp(state_file);
  auto switched = step(RolloverStep::Switch);
  INFO(switched.message);
  REQUIRE(switched.ok);
  CHECK(switched.json["phase"] == "switched");
  CHECK(switched.json["reloaded"] == false);  // no node runs
  CHECK(std::any_of(switched.lines.begin(), switched.lines.end(),
                    [](const std::string& l) { return l.find("no node answers on") != std::string::npos; }));
  const std::string config_after = slurp(config);
  CHECK(config_after.find("keys = [\"keys/" + fs::path(new_file).filename().string() + "\", \"keys/beta-1.pem\"]") !=
        std::string::npos);
  spit(state_file, state_before_switch);
  REQUIRE(step(RolloverStep::Switch).ok);
  CHECK(slurp(config) == config_after);
  auto twice = step(RolloverStep::Switch);
  REQUIRE(twice.ok);
  CHECK(twice.message == "already switched");
  const std::int64_t switched_at = twice.json["switched_at"];
  CHECK(switched_at == clock);

  auto early_retire = step(RolloverStep::Retire);
  CHECK(early_retire.failure == RolloverFailure::TooEarly);
  CHECK(early_retire.json["retry_at"] == switched_at + 12);
  CHECK(has(keys_in(lookup_json(config, "beta.test")), key_of(record1)));
  CHECK(step(RolloverStep::Next).failure == RolloverFailure::BadInput);  // not while switched

  clock += 12;
  auto retired = step(RolloverStep::Retire);
  INFO(retired.message);
  REQUIRE(retired.ok);
  CHECK(retired.json["dns_update"] == "removed");
  CHECK(keys_in(lookup_json(config, "beta.test")) == std::vector<std::string>{new_key});
  CHECK_FALSE(fs::exists(key1));
  CHECK(fs::exists(key1.string() + ".retired"));
  CHECK(slurp(config).find("keys = [\"keys/" + fs::path(new_file).filename().string() + "\"]") != std::string::npos);
  auto retired_again = step(RolloverStep::Retire);
  REQUIRE(retired_again.ok);
  CHECK(retired_again.message == "already retired");
  auto status = step(RolloverStep::Show);
  REQUIRE(status.ok);
  CHECK(status.json["phase"] == "retired");
  CHECK(status.json["next_step"] == "next");

  // A corrupt state file: a clear error, exit status 2.
  spit(state_file, "{\"version\": 1, \"domain\": \"beta.test\", \"phase\": \"switc");
  auto corrupt = step(RolloverStep::Show);
  CHECK(corrupt.failure == RolloverFailure::BadInput);
  CHECK(corrupt.message.find("corrupt rollover state file") != std::string::npos);
  auto [code, out, err] = cli({"rollover", "--config", config.string(), "beta.test", "status"});
  CHECK(code == 2);
  CHECK(err.find("corrupt rollover state file") != std::string::npos);
  // ... and a bad TSIG file, too.
  spit(dir.path() / "bad.key", "nonsense");
  auto [code2, out2, err2] = cli({"rollover", "--config", config.string(), "beta.test", "next", "--update",
                                  info.server(), "--tsig", (dir.path() / "bad.key").string()});
  CHECK(code2 == 2);
}

TEST_CASE("a rollover end to end against Knot by dynamic update, with traffic between two nodes and zero failed "
          "handshakes",
          "[rollover][knot][e2e]") {
  TempDir dir;
  const fs::path alpha_key = dir.path() / "alpha" / "alpha-1.pem";
  const fs::path beta_key = dir.path() / "beta" / "beta-1.pem";
  const std::string alpha_record = keygen(alpha_key, "alpha.test");
  const std::string beta_record = keygen(beta_key, "beta.test");
  auto knot = start_knot_for(dir.path() / "knot", {{"alpha.test", alpha_record + "\n"}, {"beta.test", beta_record + "\n"}});
  const KnotInfo& info = knot->info();
  int alpha_port = free_port();
  int beta_port = free_port();
  auto alpha = knot_node_config(dir.path(), info, "alpha.test", alpha_key, alpha_port,
                                fmt::format("users = [\"alice\"]\n[delivery]\nretry_first_s = 1\nretry_max_s = 2\n"
                                            "[[peers]]\ndomain = \"beta.test\"\naddress = \"127.0.0.1\"\nport = {}\n",
                                            beta_port));
  auto beta = knot_node_config(dir.path(), info, "beta.test", beta_key, beta_port,
                               fmt::format("users = [\"bob\"]\n[delivery]\nretry_first_s = 1\nretry_max_s = 2\n"
                                           "[[peers]]\ndomain = \"alpha.test\"\naddress = \"127.0.0.1\"\nport = {}\n",
                                           alpha_port));
  Child alpha_node({"keyfed", "run", "--config", alpha.string()});
  Child beta_node({"keyfed", "run", "--config", beta.string()});
  REQUIRE_FALSE(alpha_node.wait_for(std::regex("control socket")).empty());
  REQUIRE_FALSE(beta_node.wait_for(std::regex("control socket")).empty());

  int sent = 0;
  auto send = [&] {
    fs::path m = dir.path() / fmt::format("m{}.cpim", sent);
    spit(m, fmt::format("From: <im:bob@beta.test>\r\nTo: <im:alice@alpha.test>\r\n\r\nmessage {}\r\n", sent));
    auto [status, out, err] = cli({"send", "--config", beta.string(), m.string()});
    INFO(err);
    REQUIRE(status == 0);
    ++sent;
  };
  auto delivered = [&] {
    auto [status, out, err] = cli({"inbox", "--config", alpha.string(), "alice@alpha.test", "--json"});
    return status == 0 ? static_cast<int>(nlohmann::json::parse(out).size()) : -1;
  };
  auto all_delivered = [&] { REQUIRE(eventually([&] { return delivered() == sent; }, std::chrono::seconds(20))); };
  auto rollover = [&](const std::string& step) {
    return cli({"rollover", "--config", beta.string(), "beta.test", step, "--json", "--margin-seconds", "1",
                "--update", info.server(), "--tsig", info.tsig_file.string()});
  };

  send();
  all_delivered();
  auto [s1, out1, err1] = rollover("next");
  INFO(err1);
  REQUIRE(s1 == 0);
  auto next = nlohmann::json::parse(out1);
  const std::string new_key = next["new_key"]["key"];
  const int new_tag = next["new_key"]["key_tag"];
  const int old_tag = next["old_key"]["key_tag"];
  send();
  // Switching at once is refused with its own status.
  auto [s2, out2, err2] = rollover("switch");
  CHECK(s2 == 10);
  CHECK(nlohmann::json::parse(out2)["retry_at"].is_number());
  send();
  all_delivered();
  std::this_thread::sleep_for(std::chrono::seconds(4));  // TTL 2 + margin 1
  {
    // Not reloaded: the node still presents the old key, which the switch
    // checks over TLS: refused with its own status, the state unchanged.
    auto [status, out, err] = cli({"rollover", "--config", beta.string(), "beta.test", "switch", "--json",
                                   "--margin-seconds", "1", "--no-reload"});
    CHECK(status == 12);
    CHECK(nlohmann::json::parse(out)["phase"] == "next");
  }
  auto [s3, out3, err3] = rollover("switch");
  INFO(err3);
  REQUIRE(s3 == 0);
  CHECK(nlohmann::json::parse(out3)["reloaded"] == true);
  CHECK(nlohmann::json::parse(out3)["presenting"] == new_tag);
  REQUIRE_FALSE(beta_node.wait_for(std::regex("reloaded")).empty());
  send();
  all_delivered();
  auto [s4, out4, err4] = rollover("retire");
  CHECK(s4 == 10);  // too early
  send();
  std::this_thread::sleep_for(std::chrono::seconds(4));
  auto [s5, out5, err5] = rollover("retire");
  INFO(err5);
  REQUIRE(s5 == 0);
  auto retired = nlohmann::json::parse(out5);
  CHECK(retired["dns_update"] == "removed");
  // The old key is gone from validated DNS; the new one is there.
  auto answer = lookup_json(alpha, "beta.test");
  CHECK(answer["outcome"] == "keys");
  CHECK(keys_in(answer) == std::vector<std::string>{new_key});
  // Messages still flow, and alpha authenticates beta with the new key.
  for (int i = 0; i < 3; ++i) send();
  all_delivered();
  REQUIRE_FALSE(alpha_node
                    .wait_for(std::regex(fmt::format(R"(audit .*"claimed_domain":"beta.test".*"decision":"authenticated".*"key_tag":{},)",
                                                     new_tag)),
                              15000)
                    .empty());
  // Zero failed handshakes: no handshake, claim or connect refused or
  // deferred in either node's audit lines (POLICY.md §5). The one kind of
  // `refuse` allowed is the documented effect of retiring: a `revoke` of a
  // session still authenticated by the old key, which is then re-established
  // with the new one (above).
  beta_node.signal(SIGTERM);
  alpha_node.signal(SIGTERM);
  CHECK(beta_node.wait_exit() == 0);
  CHECK(alpha_node.wait_exit() == 0);
  int audits = 0;
  for (const Child* node : {&alpha_node, &beta_node}) {
    for (const std::string& line : node->lines()) {
      std::size_t at = line.find("audit {");
      if (at == std::string::npos) continue;
      ++audits;
      INFO(line);
      auto audit = nlohmann::json::parse(line.substr(at + 6));
      if (audit["event"] == "revoke") {
        CHECK(audit["claimed_domain"] == "beta.test");
        CHECK(audit["key_tag"] == old_tag);
        continue;
      }
      CHECK(audit["decision"] != "refuse");
      CHECK(audit["decision"] != "defer");
    }
  }
  CHECK(audits >= 4);
}

TEST_CASE("start_knot leaves a detached knotd that outlives its starter; stop_knot stops it by the pid file",
          "[rollover][knot]") {
  TempDir dir;
  const std::string record = keygen(dir.path() / "keys" / "alpha-1.pem", "alpha.test");
  KnotSetup setup;
  setup.dir = dir.path() / "knot";
  setup.zones = {{"alpha.test", record + "\n"}, {"test", ""}, {"insecure.test", record + "\n", false}};  // any order
  auto info = write_knot_setup(setup);
  INFO((info ? std::string() : info.error().message));
  REQUIRE(info);
  CHECK(slurp(info->trust_anchor).find("test.\t") == 0);  // only the top zone's DS
  CHECK(slurp(info->trust_anchor).find("alpha.test") == std::string::npos);
  CHECK((fs::status(info->tsig_file).permissions() & (fs::perms::group_all | fs::perms::others_all)) ==
        fs::perms::none);
  REQUIRE(read_tsig_file(info->tsig_file));

  // Whatever fails below, no knotd outlives the test.
  struct Stopper {
    fs::path dir;
    ~Stopper() { (void)stop_knot(dir); }
  } stopper{info->dir};

  // Started by a process that then exits.
  pid_t starter = fork();
  REQUIRE(starter >= 0);
  if (starter == 0) _exit(start_knot(info->dir) ? 0 : 1);
  int status = -1;
  REQUIRE(waitpid(starter, &status, 0) == starter);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  auto again = read_knot_setup(info->dir);
  REQUIRE(again);
  CHECK(again->server() == info->server());
  pid_t pid = std::stoi(slurp(info->pid_file));
  CHECK(kill(pid, 0) == 0);
  CHECK(getsid(pid) == pid);  // its own session
  auto second = start_knot(info->dir);  // already running: the same one
  REQUIRE(second);
  CHECK(*second == pid);
  auto config = knot_node_config(dir.path(), *info, "alpha.test", dir.path() / "keys" / "alpha-1.pem", 0);
  auto answer = lookup_json(config, "alpha.test");
  CHECK(answer["outcome"] == "keys");
  CHECK(keys_in(answer) == std::vector<std::string>{key_of(record)});
  CHECK(lookup_json(config, "insecure.test")["outcome"] == "insecure");  // served unsigned, no DS
  // A second setup in the same directory is refused while it runs.
  CHECK_FALSE(write_knot_setup(setup));

  REQUIRE(stop_knot(info->dir));
  CHECK(eventually([&] { return kill(pid, 0) != 0; }, std::chrono::seconds(5)));
  CHECK_FALSE(fs::exists(info->pid_file));
  REQUIRE(stop_knot(info->dir));  // not running: fine
}
