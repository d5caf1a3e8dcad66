// Bad configuration files (testdata/configs/*.toml): each names, on its first
// line, the error it must produce; @TESTBED@ and @TESTDATA@ are replaced by
// the generated testbed and the testdata directory.
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include <catch2/catch.hpp>

#include "config/node_config.h"
#include "dnskey/resolver_config.h"
#include "harness.h"

using namespace keyfed;

namespace {

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  for (auto at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) {
    text.replace(at, from.size(), to);
  }
  return text;
}

}  // namespace

TEST_CASE("the generated testbed configuration loads", "[config]") {
  Result<NodeConfig> config = load_node_config(test::testbed_dir() / "keyfed.toml");
  REQUIRE(config.ok());
  CHECK(config->resolver.mode == ResolverMode::Testbed);
  CHECK(config->resolver.zones.size() == 19);  // expiring.test included
  CHECK(config->resolver.query_timeout == std::chrono::milliseconds(3000));
  CHECK(config->key_cache.failure_ttl == std::chrono::seconds(60));
  bool has_parent = false;
  for (const ZoneFile& z : config->resolver.zones) has_parent |= z.origin == "test";
  CHECK(has_parent);
}

TEST_CASE("each bad configuration file gets a one-line error naming file and line", "[config]") {
  test::TempDir dir;
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(test::testdata_dir() / "configs")) {
    std::ifstream in(entry.path());
    std::stringstream buffer;
    buffer << in.rdbuf();
    std::string text = buffer.str();
    REQUIRE(text.rfind("# expect: ", 0) == 0);
    std::string expected = text.substr(10, text.find('\n') - 10);
    text = replace_all(text, "@TESTBED@", test::testbed_dir().string());
    text = replace_all(text, "@TESTDATA@", test::testdata_dir().string());
    std::filesystem::path copy = dir.path() / entry.path().filename();
    std::ofstream(copy) << text;

    INFO(entry.path().filename().string());
    Result<NodeConfig> config = load_node_config(copy);
    REQUIRE_FALSE(config.ok());
    const std::string& message = config.error().message;
    CHECK_THAT(message, Catch::Contains(expected));
    CHECK_THAT(message, Catch::StartsWith(copy.string()));
    CHECK(message.find('\n') == std::string::npos);
    ++files;
  }
  CHECK(files >= 15);
}

TEST_CASE("an unreadable configuration file is named in the error", "[config]") {
  Result<NodeConfig> config = load_node_config("/nonexistent/keyfed.toml");
  REQUIRE_FALSE(config.ok());
  CHECK(config.error().message == "/nonexistent/keyfed.toml: cannot read the configuration file");
}

TEST_CASE("zone and trust anchor files are checked with file and line", "[config]") {
  auto zone = inspect_zone_file(test::testdata_dir() / "zones" / "garbled.zone");
  REQUIRE_FALSE(zone.ok());
  CHECK_THAT(zone.error().message, Catch::Contains("garbled.zone:5: "));
  auto good = inspect_zone_file(test::testbed_dir() / "beta.test.zone.signed");
  REQUIRE(good.ok());
  CHECK(good->origin == "beta.test");
  CHECK(check_trust_anchor_file(test::testbed_dir() / "trust-anchor.ds").ok());
  auto empty = check_trust_anchor_file(test::testdata_dir() / "zones" / "no-soa.zone");
  REQUIRE_FALSE(empty.ok());
}

TEST_CASE("a configuration nested tens of thousands of levels deep is refused, not a stack overflow", "[config]") {
  // Found while writing fuzz/fuzz_config: toml++ walks and frees its tree recursively.
  std::string dots;
  for (int i = 0; i < 100000; ++i) dots += "a.";
  std::string tables;
  for (int i = 0; i < 300; ++i) tables += "{a=";
  for (const std::string& text : {dots + "a = 1\n", "[" + dots + "a]\n", "[[" + dots + "a]]\n",
                                   "x = [\n" + dots + "\n]\n", "x = " + std::string(300, '[') + "\n",
                                   "x = " + tables + "\n"}) {
    Result<NodeConfig> config = parse_node_config(text, "/nonexistent/deep.toml");
    REQUIRE_FALSE(config.ok());
    CHECK_THAT(config.error().message, Catch::StartsWith("/nonexistent/deep.toml:"));
    CHECK_THAT(config.error().message, Catch::Contains("nested deeper than"));
  }
}

TEST_CASE("dots in strings and comments do not count as nesting", "[config]") {
  std::string dots(1000, '.');
  std::string text = "# " + dots + "\n[\"" + dots + "\"] # " + dots + "\n" +  //
                     "'" + dots + "' = \"\\\"" + dots + "\"\nb = '''\n" + dots + "\n'''\n" +
                     "c = \"\"\"\\\"\"\"" + dots + "\"\"\"\"\nd = [1.5, 2.5, 3.5, 4.5, 5.5]\n";
  Result<NodeConfig> config = parse_node_config(text, "/nonexistent/dots.toml");
  REQUIRE_FALSE(config.ok());
  CHECK_THAT(config.error().message, Catch::StartsWith("/nonexistent/dots.toml:2: unknown setting"));
}

TEST_CASE("non-ASCII text where toml++ 3.3 misreads it is refused, and read in strings and comments", "[config]") {
  // Found by fuzz/fuzz_config: toml++ reaches __builtin_unreachable when it
  // asks whether U+00A7 and its like are whitespace (marzer/tomlplusplus#190).
  for (const char* text : {"x = \"\"\"\\\n\xC2\xA7\"\"\"\n", "x = \"\"\"\\ \t\r\n \n \xCF\x92\"\"\"\n",
                           "x = 1\xCF\x92\n", "x\xC2\xA7 = 1\n", "\xCC\xAA",
                           // toml++ scans a bare value up to a space, ',', ']', '}' or '#', quotes and all
                           "r = -e9=\"a0\xCF\x85\"\n", "x = 1[\"\xC2\xA7\"]\n"}) {
    Result<NodeConfig> config = parse_node_config(text, "/nonexistent/u.toml");
    REQUIRE_FALSE(config.ok());
    CHECK_THAT(config.error().message, Catch::StartsWith("/nonexistent/u.toml:") && Catch::Contains("non-ASCII"));
  }
  Result<NodeConfig> config =
      parse_node_config("# \xC2\xA7\nx = [\"\xC2\xA7\", '\xC2\xA7', \"\"\"\n\xC2\xA7\\n\"\"\"] # \xC2\xA7\n"
                        "y = { \"\xC2\xA7\" = '\xC2\xA7', z = [ { a.\"\xC2\xA7\" = '''\xC2\xA7''' } ] }\n"
                        "[\"\xC2\xA7\" . '\xC2\xA7']\n",
                        "/nonexistent/u.toml");
  REQUIRE_FALSE(config.ok());
  CHECK(config.error().message == "/nonexistent/u.toml:2: unknown setting 'x'");
}

TEST_CASE("the commented example of docs/CONFIG.md loads, every documented setting included", "[config][docs]") {
  std::ifstream doc(std::filesystem::path(KEYFED_DOCS_DIR) / "CONFIG.md");
  REQUIRE(doc);
  std::stringstream buffer;
  buffer << doc.rdbuf();
  std::string text = buffer.str();
  auto start = text.find("```toml\n");
  REQUIRE(start != std::string::npos);
  start += 8;
  auto end = text.find("```", start);
  REQUIRE(end != std::string::npos);
  std::string example = text.substr(start, end - start);
  // The root trust anchor may not be installed where the tests run: the
  // testbed's stands in for it.
  example = replace_all(example, "/usr/share/dns/root.key", (test::testbed_dir() / "trust-anchor.ds").string());
  test::TempDir dir;
  auto path = dir.path() / "example.toml";
  std::ofstream(path) << example;
  Result<NodeConfig> config = load_node_config(path);
  INFO(example);
  REQUIRE(config.ok());
  CHECK(config->federation.limits.connect_timeout == std::chrono::milliseconds(5000));
  CHECK(config->federation.limits.max_outbound == 100);
  CHECK(config->federation.policy.overrides.at("*.spam.example") == PeerOverride::Refuse);
  CHECK(config->federation.policy.max_key_staleness == std::chrono::seconds(900));
  CHECK(config->key_cache.max_bytes == 33554432);
  CHECK(config->resolver.max_key_records == 16);
  CHECK(config->peers.size() == 1);
  // The example's [limits] are the defaults, as it says.
  CHECK(config->federation.limits == NodeLimits{});
}

TEST_CASE("a trust anchor or zone path that is not a regular file is refused at once, not read forever",
          "[config]") {
  test::TempDir dir;
  auto fifo = dir.path() / "anchor.fifo";
  REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
  for (const std::filesystem::path& path : {dir.path(), fifo}) {
    INFO(path);
    Status anchor = check_trust_anchor_file(path);
    REQUIRE_FALSE(anchor.ok());
    CHECK_THAT(anchor.error().message, Catch::Contains("not a regular file"));
    auto zone = inspect_zone_file(path);
    REQUIRE_FALSE(zone.ok());
    CHECK_THAT(zone.error().message, Catch::Contains("not a regular file"));
  }
}

// docs/DEVELOPING.md's layout table is where a newcomer looks first: every
// source directory has its row, and every module (file stem) of it is named
// in that row, so a new file cannot land undocumented.
TEST_CASE("docs/DEVELOPING.md's layout names every source directory and every module in it", "[docs]") {
  std::ifstream doc(std::filesystem::path(KEYFED_DOCS_DIR) / "DEVELOPING.md");
  REQUIRE(doc);
  std::map<std::string, std::string> rows;  // "src/dnskey" -> its row
  for (std::string line; std::getline(doc, line);) {
    std::smatch m;
    if (std::regex_search(line, m, std::regex("^\\| `(src/[a-z_]+)/` \\|"))) rows[m[1]] = line;
  }
  auto src = std::filesystem::path(KEYFED_DOCS_DIR).parent_path() / "src";
  std::set<std::string> dirs;
  for (const auto& entry : std::filesystem::directory_iterator(src)) {
    if (!entry.is_directory()) continue;
    std::string dir = "src/" + entry.path().filename().string();
    dirs.insert(dir);
    INFO(dir);
    REQUIRE(rows.count(dir) == 1);
    for (const auto& file : std::filesystem::directory_iterator(entry.path())) {
      std::string stem = file.path().stem().string();
      INFO(file.path().filename().string());
      CHECK(std::regex_search(rows[dir], std::regex("`" + stem + "[`.]")));
    }
  }
  for (const auto& [dir, row] : rows) CHECK(dirs.count(dir) == 1);  // no row for a directory that is gone
}
