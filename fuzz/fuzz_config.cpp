// libFuzzer target: the node's TOML configuration reader (docs/CONFIG.md) on
// arbitrary text, through toml++ and every section's checks. It must return
// an Error for anything it refuses: no crash, no exception, no leak, no hang.
// Seeds: fuzz/corpus/config. Also checks that screen_config_text() never lets
// text nested deeper than kMaxConfigNesting through to toml++.
//
// The text is read as if it were the file DIR/fuzz.toml, where DIR is a
// scratch directory made at start holding a minimal trust anchor
// (trust-anchor.ds) and zone (test.zone), so seeds that name them get past
// [resolver] to the sections after it; other relative file names fail
// cleanly. The directory is removed at exit.
//
// No size limit here: tools/test.sh passes -max_len=4096, ample for a config.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "config/node_config.h"

namespace {

std::filesystem::path& scratch_dir() {
  static std::filesystem::path dir;
  return dir;
}

// Containers (tables, arrays) on the longest path below `node`.
int nesting(const toml::node& node) {
  int deepest = 0;
  if (const toml::table* table = node.as_table()) {
    for (auto&& [key, value] : *table) deepest = std::max(deepest, 1 + nesting(value));
  } else if (const toml::array* array = node.as_array()) {
    for (const toml::node& value : *array) deepest = std::max(deepest, 1 + nesting(value));
  }
  return deepest;
}

void remove_scratch_dir() {
  std::error_code ec;
  std::filesystem::remove_all(scratch_dir(), ec);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  std::string dir = (std::filesystem::temp_directory_path() / "keyfed-fuzz-config-XXXXXX").string();
  if (mkdtemp(dir.data()) == nullptr) {
    std::perror("fuzz_config: mkdtemp");
    std::abort();
  }
  scratch_dir() = dir;
  std::atexit(remove_scratch_dir);
  auto zone = [](std::string_view origin) {
    return fmt::format("{0}. 3600 IN SOA ns.{0}. hostmaster.{0}. 1 3600 600 86400 60\n"
                       "{0}. 3600 IN NS ns.{0}.\nns.{0}. 3600 IN A 127.0.0.1\n",
                       origin);
  };
  std::string anchor =
      "test. 3600 IN DS 12345 13 2 4c1bd6c9da6a3d2c8e8f2e3b4a5968778695a4b3c2d1e0f1a2b3c4d5e6f70819\n";
  // Also under "@TESTBED@/", the placeholder that the seeds copied from
  // tests/testdata/configs keep, so they reach the check they were written for.
  std::filesystem::create_directory(scratch_dir() / "@TESTBED@");
  for (auto [file, text] : {std::pair{"trust-anchor.ds", anchor}, std::pair{"test.zone", zone("test")},
                            std::pair{"@TESTBED@/trust-anchor.ds", anchor},
                            std::pair{"@TESTBED@/test.zone.signed", zone("test")},
                            std::pair{"@TESTBED@/alpha.test.zone.signed", zone("alpha.test")}}) {
    std::ofstream(scratch_dir() / file) << text;
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)keyfed::parse_node_config(text, scratch_dir() / "fuzz.toml");
  // The screen's nesting check is an upper bound: what it lets through must
  // really be no deeper.
  if (!keyfed::screen_config_text(text, "fuzz.toml")) return 0;
  toml::table root;
  try {
    root = toml::parse(text);
  } catch (const toml::parse_error&) {
    return 0;
  }
  if (nesting(root) > keyfed::kMaxConfigNesting) {
    std::fprintf(stderr, "fuzz_config: nesting %d passed screen_config_text()\n", nesting(root));
    std::abort();
  }
  return 0;
}
