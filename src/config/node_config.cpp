#include "config/node_config.h"

#include <fstream>
#include <set>
#include <sstream>

#include <toml++/toml.h>

namespace keyfed {
namespace {

class Reader {
 public:
  explicit Reader(std::filesystem::path path) : path_(std::move(path)) {}

  Error at(const toml::node& node, std::string_view message) const {
    return make_error("{}:{}: {}", path_.string(), node.source().begin.line, message);
  }
  Error at_file(std::string_view message) const {
    return make_error("{}: {}", path_.string(), message);
  }

  // Unknown keys are errors: a misspelt security setting must not be ignored.
  Status only_known(const toml::table& table, std::string_view section,
                    std::initializer_list<std::string_view> known) const {
    for (auto&& [key, value] : table) {
      if (std::find(known.begin(), known.end(), key.str()) == known.end()) {
        return at(value, fmt::format("unknown setting '{}'{}", key.str(),
                                     section.empty() ? "" : fmt::format(" in [{}]", section)));
      }
    }
    return ok_status();
  }

  Result<std::string> string(const toml::node& node, std::string_view key) const {
    if (auto v = node.value<std::string>()) return *v;
    return at(node, fmt::format("'{}' must be a string", key));
  }

  Result<std::int64_t> integer(const toml::node& node, std::string_view key, std::int64_t min,
                               std::int64_t max) const {
    if (!node.is_integer()) return at(node, fmt::format("'{}' must be an integer", key));
    std::int64_t v = *node.value<std::int64_t>();
    if (v < min || v > max) {
      return at(node, fmt::format("'{}' = {} is outside {}..{}", key, v, min, max));
    }
    return v;
  }

  std::filesystem::path relative_to_file(const std::string& value) const {
    std::filesystem::path p(value);
    return p.is_absolute() ? p : path_.parent_path() / p;
  }

 private:
  std::filesystem::path path_;
};

Status read_resolver(const Reader& r, const toml::table& table, ResolverConfig& out) {
  if (Status s = r.only_known(table, "resolver",
                              {"mode", "trust_anchor", "zones", "forwarders", "query_timeout_ms"});
      !s) {
    return s;
  }
  if (const toml::node* node = table.get("mode")) {
    Result<std::string> mode = r.string(*node, "mode");
    if (!mode) return mode.error();
    if (*mode == "testbed") {
      out.mode = ResolverMode::Testbed;
    } else if (*mode == "production") {
      out.mode = ResolverMode::Production;
    } else {
      return r.at(*node, fmt::format("mode '{}' is neither \"production\" nor \"testbed\"", *mode));
    }
  }
  if (const toml::node* node = table.get("trust_anchor")) {
    Result<std::string> anchor = r.string(*node, "trust_anchor");
    if (!anchor) return anchor.error();
    out.trust_anchor = r.relative_to_file(*anchor);
    if (Status s = check_trust_anchor_file(out.trust_anchor); !s) return r.at(*node, s.error().message);
  } else if (out.mode == ResolverMode::Production) {
    out.trust_anchor = kDefaultRootTrustAnchor;
  } else {
    return r.at(table, "[resolver] in testbed mode needs 'trust_anchor'");
  }
  if (const toml::node* node = table.get("zones")) {
    const toml::array* zones = node->as_array();
    if (zones == nullptr) return r.at(*node, "'zones' must be an array of file names");
    for (const toml::node& item : *zones) {
      Result<std::string> file = r.string(item, "zones");
      if (!file) return file.error();
      Result<ZoneFile> zone = inspect_zone_file(r.relative_to_file(*file));
      if (!zone) return r.at(item, zone.error().message);
      out.zones.push_back(std::move(zone).value());
    }
  }
  if (const toml::node* node = table.get("forwarders")) {
    const toml::array* list = node->as_array();
    if (list == nullptr) return r.at(*node, "'forwarders' must be an array of \"ADDR[@PORT]\"");
    for (const toml::node& item : *list) {
      Result<std::string> fwd = r.string(item, "forwarders");
      if (!fwd) return fwd.error();
      out.forwarders.push_back(*fwd);
    }
  }
  if (const toml::node* node = table.get("query_timeout_ms")) {
    auto ms = r.integer(*node, "query_timeout_ms", kMinQueryTimeout.count(), kMaxQueryTimeout.count());
    if (!ms) return ms.error();
    out.query_timeout = std::chrono::milliseconds{*ms};
  }
  if (out.mode == ResolverMode::Testbed && out.zones.empty()) {
    return r.at(table, "[resolver] in testbed mode needs at least one file in 'zones'");
  }
  if (Status s = check_resolver_config(out); !s) return r.at(table, s.error().message);
  return ok_status();
}

Status read_key_cache(const Reader& r, const toml::table& table, KeyCacheConfig& out) {
  if (Status s = r.only_known(table, "key_cache",
                              {"min_ttl", "max_ttl", "failure_ttl", "prefetch_ratio", "max_entries"});
      !s) {
    return s;
  }
  for (auto [key, field] : {std::pair{"min_ttl", &out.min_ttl}, std::pair{"max_ttl", &out.max_ttl},
                            std::pair{"failure_ttl", &out.failure_ttl}}) {
    if (const toml::node* node = table.get(key)) {
      auto v = r.integer(*node, key, 0, kMaxTtlBound.count());
      if (!v) return v.error();
      *field = Seconds{*v};
    }
  }
  if (const toml::node* node = table.get("prefetch_ratio")) {
    auto v = node->value<double>();
    if (!v) return r.at(*node, "'prefetch_ratio' must be a number");
    out.prefetch_ratio = *v;
  }
  if (const toml::node* node = table.get("max_entries")) {
    auto v = r.integer(*node, "max_entries", 1, 100000000);
    if (!v) return v.error();
    out.max_entries = static_cast<std::size_t>(*v);
  }
  if (Status s = check_key_cache_config(out); !s) return r.at(table, s.error().message);
  return ok_status();
}

Status read_log(const Reader& r, const toml::table& table, LogLevel& out) {
  if (Status s = r.only_known(table, "log", {"level"}); !s) return s;
  if (const toml::node* node = table.get("level")) {
    Result<std::string> level = r.string(*node, "level");
    if (!level) return level.error();
    for (LogLevel l : {LogLevel::Debug, LogLevel::Info, LogLevel::Warning, LogLevel::Error}) {
      if (to_string(l) == *level) {
        out = l;
        return ok_status();
      }
    }
    return r.at(*node, fmt::format("log level '{}' is not debug, info, warning or error", *level));
  }
  return ok_status();
}

}  // namespace

Result<NodeConfig> load_node_config(const std::filesystem::path& path) {
  std::ifstream file(path);
  if (!file) return make_error("{}: cannot read the configuration file", path.string());
  std::stringstream text;
  text << file.rdbuf();

  toml::table root;
  try {
    root = toml::parse(text.str(), path.string());
  } catch (const toml::parse_error& e) {
    return make_error("{}:{}: {}", path.string(), e.source().begin.line, e.description());
  }

  Reader r(path);
  NodeConfig config;
  config.source = path;
  if (Status s = r.only_known(root, "", {"resolver", "key_cache", "log"}); !s) return s.error();

  const toml::table* resolver = root["resolver"].as_table();
  if (resolver == nullptr) return r.at_file("missing the [resolver] section");
  if (Status s = read_resolver(r, *resolver, config.resolver); !s) return s.error();
  if (const toml::table* cache = root["key_cache"].as_table()) {
    if (Status s = read_key_cache(r, *cache, config.key_cache); !s) return s.error();
  }
  if (const toml::table* log = root["log"].as_table()) {
    if (Status s = read_log(r, *log, config.log_level); !s) return s.error();
  }
  return config;
}

}  // namespace keyfed
