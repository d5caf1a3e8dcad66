#include "config/node_config.h"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <toml++/toml.h>

#include "dnskey/domain_name.h"
#include "federation/cpim.h"

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

  // A zone or trust anchor file that exists must be a regular file: reading a
  // directory never reaches end of file, so the record loop in
  // resolver_config.cpp would spin forever (found by fuzz/fuzz_config), and a
  // FIFO or terminal blocks. Missing files are left to that loop's error.
  Status regular_if_present(const toml::node& node, const std::filesystem::path& file) const {
    std::error_code ec;
    std::filesystem::file_status status = std::filesystem::status(file, ec);
    if (!ec && std::filesystem::exists(status) && !std::filesystem::is_regular_file(status)) {
      return at(node, fmt::format("{}: not a regular file", file.string()));
    }
    return ok_status();
  }

 private:
  std::filesystem::path path_;
};

Status read_resolver(const Reader& r, const toml::table& table, ResolverConfig& out) {
  if (Status s = r.only_known(table, "resolver",
                              {"mode", "trust_anchor", "zones", "server", "forwarders", "query_timeout_ms", "max_key_records",
                               "upstream_ratelimit"});
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
    if (Status s = r.regular_if_present(*node, out.trust_anchor); !s) return s;
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
      if (Status s = r.regular_if_present(item, r.relative_to_file(*file)); !s) return s.error();
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
  if (const toml::node* node = table.get("server")) {
    Result<std::string> server = r.string(*node, "server");
    if (!server) return server.error();
    out.server = *server;
  }
  if (const toml::node* node = table.get("query_timeout_ms")) {
    auto ms = r.integer(*node, "query_timeout_ms", kMinQueryTimeout.count(), kMaxQueryTimeout.count());
    if (!ms) return ms.error();
    out.query_timeout = std::chrono::milliseconds{*ms};
  }
  if (const toml::node* node = table.get("max_key_records")) {
    auto v = r.integer(*node, "max_key_records", 1, static_cast<std::int64_t>(kMaxMaxKeyRecords));
    if (!v) return v.error();
    out.max_key_records = static_cast<std::size_t>(*v);
  }
  if (const toml::node* node = table.get("upstream_ratelimit")) {
    auto v = r.integer(*node, "upstream_ratelimit", 0, 1000000);
    if (!v) return v.error();
    out.upstream_ratelimit = static_cast<unsigned>(*v);
  }
  if (out.mode == ResolverMode::Testbed && out.zones.empty() && out.server.empty()) {
    return r.at(table, "[resolver] in testbed mode needs at least one file in 'zones', or a 'server'");
  }
  if (Status s = check_resolver_config(out); !s) return r.at(table, s.error().message);
  return ok_status();
}

Status read_key_cache(const Reader& r, const toml::table& table, KeyCacheConfig& out) {
  if (Status s = r.only_known(table, "key_cache",
                              {"min_ttl", "max_ttl", "failure_ttl", "prefetch_ratio", "max_entries", "max_bytes"});
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
  if (const toml::node* node = table.get("max_bytes")) {
    auto v = r.integer(*node, "max_bytes", 65536, std::int64_t{1} << 40);
    if (!v) return v.error();
    out.max_bytes = static_cast<std::size_t>(*v);
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

Status read_node(const Reader& r, const toml::table& table, NodeConfig& out) {
  if (Status s = r.only_known(table, "node", {"listen", "port", "revalidate_interval_ms"}); !s) return s;
  if (const toml::node* node = table.get("listen")) {
    Result<std::string> v = r.string(*node, "listen");
    if (!v) return v.error();
    out.listen_address = *v;
  }
  if (const toml::node* node = table.get("port")) {
    auto v = r.integer(*node, "port", 0, 65535);
    if (!v) return v.error();
    out.listen_port = static_cast<int>(*v);
  }
  if (const toml::node* node = table.get("revalidate_interval_ms")) {
    auto v = r.integer(*node, "revalidate_interval_ms", 0, 86400000);
    if (!v) return v.error();
    out.federation.revalidate_interval = std::chrono::milliseconds{*v};
  }
  return ok_status();
}

Status read_domains(const Reader& r, const toml::array& array, NodeConfig& out) {
  for (const toml::node& item : array) {
    const toml::table* table = item.as_table();
    if (table == nullptr) return r.at(item, "[[domains]] entries must be tables");
    if (Status s = r.only_known(*table, "domains", {"name", "keys", "users"}); !s) return s;
    const toml::node* name = table->get("name");
    const toml::node* keys = table->get("keys");
    if (name == nullptr || keys == nullptr || keys->as_array() == nullptr) {
      return r.at(item, "[[domains]] needs name = \"DOMAIN\" and keys = [\"FILE\", ...]");
    }
    Result<std::string> text = r.string(*name, "name");
    if (!text) return text.error();
    Result<std::string> domain = normalize_domain(*text);
    if (!domain) return r.at(*name, domain.error().message);
    HostedDomain hosted{*domain, {}};
    for (const toml::node& key : *keys->as_array()) {
      Result<std::string> file = r.string(key, "keys");
      if (!file) return file.error();
      hosted.key_files.push_back(r.relative_to_file(*file));
    }
    if (hosted.key_files.empty()) return r.at(*keys, "'keys' must name at least one private key file");
    if (const toml::node* list = table->get("users")) {
      std::vector<std::string>& users = out.users[hosted.domain];
      if (list->as_array() == nullptr) return r.at(*list, "'users' must be an array of local parts, or [\"*\"]");
      for (const toml::node& user : *list->as_array()) {
        Result<std::string> part = r.string(user, "users");
        if (!part) return part.error();
        if (*part != kAnyUser && !parse_user_uri(fmt::format("im:{}@{}", *part, hosted.domain), UriScheme::Im)) {
          return r.at(user, fmt::format("'{}' is not a user name (1 to 64 of A-Z a-z 0-9 !$&'*+-=_~ and inner dots)",
                                        escape_text(*part)));
        }
        if (std::find(users.begin(), users.end(), *part) != users.end()) {
          return r.at(user, fmt::format("user '{}' is listed twice", *part));
        }
        users.push_back(*part);
      }
    }
    out.federation.domains.push_back(std::move(hosted));
  }
  return ok_status();
}

Status read_store(const Reader& r, const toml::table& table, StoreSettings& out) {
  if (Status s = r.only_known(table, "store", {"path", "synchronous"}); !s) return s;
  if (const toml::node* node = table.get("path")) {
    Result<std::string> v = r.string(*node, "path");
    if (!v) return v.error();
    if (v->empty()) return r.at(*node, "'path' must name the database file");
    out.path = r.relative_to_file(*v);
  }
  if (const toml::node* node = table.get("synchronous")) {
    Result<std::string> v = r.string(*node, "synchronous");
    if (!v) return v.error();
    if (*v == "full") {
      out.synchronous = StoreSync::Full;
    } else if (*v == "normal") {
      out.synchronous = StoreSync::Normal;
    } else {
      return r.at(*node, fmt::format("synchronous '{}' is not \"full\" or \"normal\"", escape_text(*v)));
    }
  }
  return ok_status();
}

Status read_control(const Reader& r, const toml::table& table, ControlSettings& out) {
  if (Status s = r.only_known(table, "control", {"socket", "group"}); !s) return s;
  if (const toml::node* node = table.get("socket")) {
    Result<std::string> v = r.string(*node, "socket");
    if (!v) return v.error();
    if (v->empty()) return r.at(*node, "'socket' must name the control socket's path");
    out.socket = r.relative_to_file(*v);
  }
  if (const toml::node* node = table.get("group")) {
    Result<std::string> v = r.string(*node, "group");
    if (!v) return v.error();
    out.group = *v;
  }
  // sockaddr_un holds 107 bytes and a NUL.
  if (out.socket.string().size() > 107) {
    return r.at(table, fmt::format("the control socket path {} is longer than 107 bytes", out.socket.string()));
  }
  return ok_status();
}

Status read_delivery(const Reader& r, const toml::table& table, DeliverySettings& out) {
  if (Status s = r.only_known(table, "delivery", {"retry_first_s", "retry_max_s", "lifetime_s", "idle_close_s"});
      !s) {
    return s;
  }
  for (auto [key, field] : {std::pair{"retry_first_s", &out.retry_first}, std::pair{"retry_max_s", &out.retry_max},
                            std::pair{"lifetime_s", &out.lifetime}, std::pair{"idle_close_s", &out.idle_close}}) {
    if (const toml::node* node = table.get(key)) {
      auto v = r.integer(*node, key, 1, 86400 * 365);
      if (!v) return v.error();
      *field = std::chrono::seconds{*v};
    }
  }
  if (out.retry_first > out.retry_max) return r.at(table, "retry_first_s must not exceed retry_max_s");
  return ok_status();
}

Status read_policy(const Reader& r, const toml::table& table, PolicyConfig& out, AccessDefaults& access) {
  if (Status s = r.only_known(table, "policy",
                              {"allow_unauthenticated", "insecure", "peers", "max_key_staleness_s",
                               "presence_default", "inbox_default"});
      !s) {
    return s;
  }
  for (auto [key, field] : {std::pair{"presence_default", &access.presence_allow},
                            std::pair{"inbox_default", &access.inbox_allow}}) {
    if (const toml::node* node = table.get(key)) {
      Result<std::string> v = r.string(*node, key);
      if (!v) return v.error();
      if (*v != "allow" && *v != "deny") return r.at(*node, fmt::format("{} = '{}' is not allow or deny", key, *v));
      *field = *v == "allow";
    }
  }
  if (const toml::node* node = table.get("max_key_staleness_s")) {
    auto v = r.integer(*node, "max_key_staleness_s", 0, 86400 * 7);
    if (!v) return v.error();
    out.max_key_staleness = std::chrono::seconds{*v};
  }
  if (const toml::node* node = table.get("allow_unauthenticated")) {
    auto v = node->value<bool>();
    if (!v) return r.at(*node, "'allow_unauthenticated' must be true or false");
    out.allow_unauthenticated = *v;
  }
  if (const toml::node* node = table.get("insecure")) {
    Result<std::string> v = r.string(*node, "insecure");
    if (!v) return v.error();
    auto policy = insecure_policy_from_string(*v);
    if (!policy) return r.at(*node, fmt::format("insecure = '{}' is not refuse, unauthenticated or weak-auth", *v));
    out.insecure = *policy;
  }
  if (const toml::node* node = table.get("peers")) {
    const toml::table* peers = node->as_table();
    if (peers == nullptr) return r.at(*node, "[policy.peers] must be a table of DOMAIN = \"refuse\" | \"require-auth\"");
    for (auto&& [key, value] : *peers) {
      // "*.example" covers every name under example.test (POLICY.md §3).
      std::string_view name = key.str();
      bool subdomains = name.starts_with("*.");
      Result<std::string> domain = normalize_domain(subdomains ? name.substr(2) : name);
      if (!domain) return r.at(value, domain.error().message);
      if (subdomains) domain = "*." + *domain;
      Result<std::string> mode = r.string(value, key.str());
      if (!mode) return mode.error();
      if (*mode == "refuse") {
        out.overrides[*domain] = PeerOverride::Refuse;
      } else if (*mode == "require-auth") {
        out.overrides[*domain] = PeerOverride::RequireAuth;
      } else {
        return r.at(value, fmt::format("peer override '{}' is not \"refuse\" or \"require-auth\"", *mode));
      }
    }
  }
  return ok_status();
}

Status read_limits(const Reader& r, const toml::table& table, NodeLimits& out) {
  using std::chrono::milliseconds;
  const std::pair<const char*, milliseconds*> durations[] = {
      {"connect_timeout_ms", &out.connect_timeout},       {"handshake_timeout_ms", &out.handshake_timeout},
      {"idle_timeout_ms", &out.idle_timeout},             {"keepalive_interval_ms", &out.keepalive_interval},
      {"send_stall_timeout_ms", &out.send_stall_timeout},
  };
  const std::pair<const char*, std::size_t*> counts[] = {
      {"max_sessions", &out.max_sessions},
      {"max_inbound_unauthenticated", &out.max_inbound_unauthenticated},
      {"max_unauthenticated_per_source", &out.max_unauthenticated_per_source},
      {"max_inbound_authenticated", &out.max_inbound_authenticated},
      {"max_outbound", &out.max_outbound},
      {"max_sessions_per_peer_domain", &out.max_sessions_per_peer_domain},
      {"max_pending_lookups", &out.max_pending_lookups},
      {"max_tracked_sources", &out.max_tracked_sources},
      {"max_subscriptions_per_session", &out.max_subscriptions_per_session},
      {"max_subscriptions", &out.max_subscriptions},
  };
  const std::pair<const char*, double*> rates[] = {
      {"message_rate", &out.message_rate},
      {"message_burst", &out.message_burst},
      {"connection_rate_per_source", &out.connection_rate_per_source},
      {"connection_burst_per_source", &out.connection_burst_per_source},
      {"lookup_rate_per_source", &out.lookup_rate_per_source},
      {"lookup_burst_per_source", &out.lookup_burst_per_source},
      {"lookup_rate_total", &out.lookup_rate_total},
      {"lookup_burst_total", &out.lookup_burst_total},
  };
  for (auto&& [key, value] : table) {
    std::string_view name = key.str();
    bool known = name == "max_frame_size" || name == "rekey_bytes" || name == "rekey_interval_s" ||
                 name == "send_queue_high_water" || name == "send_queue_limit";
    for (const auto& d : durations) known |= name == d.first;
    for (const auto& c : counts) known |= name == c.first;
    for (const auto& q : rates) known |= name == q.first;
    if (!known) return r.at(value, fmt::format("unknown setting '{}' in [limits]", name));
  }
  for (const auto& [key, field] : durations) {
    if (const toml::node* node = table.get(key)) {
      auto v = r.integer(*node, key, 1, 86400000);
      if (!v) return v.error();
      *field = milliseconds{*v};
    }
  }
  for (const auto& [key, field] : counts) {
    if (const toml::node* node = table.get(key)) {
      auto v = r.integer(*node, key, 1, 100000000);
      if (!v) return v.error();
      *field = static_cast<std::size_t>(*v);
    }
  }
  for (const auto& [key, field] : rates) {
    if (const toml::node* node = table.get(key)) {
      auto v = node->value<double>();
      if (!v || !(*v > 0) || *v > 1e9) return r.at(*node, fmt::format("'{}' must be a positive number", key));
      *field = *v;
    }
  }
  if (const toml::node* node = table.get("max_frame_size")) {
    auto v = r.integer(*node, "max_frame_size", 1024, static_cast<std::int64_t>(kHardMaxFrameSize));
    if (!v) return v.error();
    out.max_frame_size = static_cast<std::size_t>(*v);
  }
  for (auto [key, field] : {std::pair{"send_queue_high_water", &out.send_queue_high_water},
                            std::pair{"send_queue_limit", &out.send_queue_limit}}) {
    if (const toml::node* node = table.get(key)) {
      auto v = r.integer(*node, key, 4096, std::int64_t{1} << 34);
      if (!v) return v.error();
      *field = static_cast<std::size_t>(*v);
    }
  }
  if (const toml::node* node = table.get("rekey_bytes")) {
    auto v = r.integer(*node, "rekey_bytes", 4096, std::int64_t{1} << 40);
    if (!v) return v.error();
    out.rekey_bytes = static_cast<std::uint64_t>(*v);
  }
  if (const toml::node* node = table.get("rekey_interval_s")) {
    auto v = r.integer(*node, "rekey_interval_s", 1, 86400 * 7);
    if (!v) return v.error();
    out.rekey_interval = std::chrono::seconds{*v};
  }
  if (Status s = check_node_limits(out); !s) return r.at(table, s.error().message);
  return ok_status();
}

Status read_peers(const Reader& r, const toml::array& array, std::vector<StaticPeer>& out) {
  for (const toml::node& item : array) {
    const toml::table* table = item.as_table();
    if (table == nullptr) return r.at(item, "[[peers]] entries must be tables");
    if (Status s = r.only_known(*table, "peers", {"domain", "address", "port"}); !s) return s;
    const toml::node* domain = table->get("domain");
    const toml::node* address = table->get("address");
    if (domain == nullptr || address == nullptr) return r.at(item, "[[peers]] needs domain and address");
    Result<std::string> d = r.string(*domain, "domain");
    if (!d) return d.error();
    Result<std::string> normalized = normalize_domain(*d);
    if (!normalized) return r.at(*domain, normalized.error().message);
    Result<std::string> a = r.string(*address, "address");
    if (!a) return a.error();
    StaticPeer peer{*normalized, *a, kDefaultFederationPort};
    if (const toml::node* port = table->get("port")) {
      auto p = r.integer(*port, "port", 1, 65535);
      if (!p) return p.error();
      peer.port = static_cast<int>(*p);
    }
    out.push_back(std::move(peer));
  }
  return ok_status();
}

}  // namespace

// toml++ 3.3 (Debian 12's) has two faults that a file's text can reach (found
// with fuzz/fuzz_config), so the text is screened before it is parsed:
//  - It walks and frees the parsed tree recursively: a document nested a few
//    ten thousand levels deep ("a.a.a...a = 1" in some 50 KB) overflows the
//    stack. Refused here by an upper bound on the depth each key and value
//    would reach: header segments (twice, for [[arrays]]), then each '.' and
//    each '[' or '{' that opens an array or inline table, reset at ',' and at
//    the end of a top-level line.
//  - It reaches __builtin_unreachable (undefined behaviour) when it asks
//    whether some non-ASCII characters are whitespace (marzer/tomlplusplus
//    #190, #295), which it does for every character outside strings and
//    comments, and for the first one after a backslash in a """string""".
//    TOML 1.0 allows non-ASCII only in strings and comments, so elsewhere it
//    is refused here; the catch is knowing where toml++ sees a string: only
//    where a key or value may start. A quote inside a bare value ("-x="...)
//    is no string to toml++, which scans the whole value up to a space, ',',
//    ']', '}' or '#'.
Status screen_config_text(std::string_view text, const std::filesystem::path& path) {
  struct Open {
    char bracket;  // '[' array or '{' inline table
    int depth;     // depth before it
  };
  std::vector<Open> open;
  int header = 0;  // depth of the current [table]
  int depth = 0;
  int line = 1;
  bool in_header = false;
  bool in_key = true;         // keys (or a header) here, else values
  bool token_start = true;    // a key, value or string may start here
  bool top_line_start = true; // nothing yet on this top-level line
  auto non_ascii = [](char c) { return static_cast<unsigned char>(c) >= 0x80; };
  auto refuse = [&](std::string_view what) { return make_error("{}:{}: {}", path.string(), line, what); };
  for (std::size_t i = text.starts_with("\xEF\xBB\xBF") ? 3 : 0; i < text.size(); ++i) {  // after a BOM
    char c = text[i];
    if (c == ' ' || c == '\t' || c == '\r') continue;
    if (c == '\n') {
      ++line;
      if (in_header) {
        header = depth;
        in_header = false;
      }
      if (open.empty()) {
        depth = header;
        in_key = token_start = top_line_start = true;
      }
      continue;
    }
    bool line_start = std::exchange(top_line_start, false);
    bool start = std::exchange(token_start, false);
    if (c == '#') {
      while (i + 1 < text.size() && text[i + 1] != '\n') ++i;
      token_start = start;
      top_line_start = line_start;
    } else if ((c == '"' || c == '\'') && start) {  // skip the string; i ends on its closing quote
      bool multiline = text.substr(i, 3) == std::string(3, c);
      std::string_view close = text.substr(i, multiline ? 3 : 1);
      for (i += close.size(); i < text.size(); ++i) {
        if (text[i] == '\\' && c == '"') {  // an escape: skip the next character
          std::size_t next = multiline ? text.find_first_not_of(" \t\r\n", i + 1) : std::string_view::npos;
          if (next != std::string_view::npos && non_ascii(text[next])) {
            return refuse("a non-ASCII character after a backslash in a \"\"\"string\"\"\" (toml++ 3.3 misreads it)");
          }
          if (++i < text.size() && text[i] == '\n') ++line;
        } else if (text[i] == '\n') {
          if (!multiline) {
            --i;  // unterminated: toml++ stops here
            break;
          }
          ++line;
        } else if (text.substr(i, close.size()) == close) {
          i += close.size() - 1;
          while (multiline && i + 1 < text.size() && text[i + 1] == c) ++i;  // """a"""" ends with a quote
          break;
        }
      }
    } else if (non_ascii(c)) {
      return refuse("a non-ASCII character outside a string or comment");
    } else if (c == '[' && line_start && open.empty()) {
      in_header = true;
      depth = 2;
      token_start = true;
    } else if (in_header) {
      if (c == '.') depth += 2;
      token_start = c == '.' || c == '[';
    } else if (c == '.') {
      ++depth;
      token_start = in_key;
    } else if ((c == '[' || c == '{') && start && !in_key) {
      open.push_back({c, depth});
      ++depth;
      in_key = c == '{';
      token_start = true;
    } else if ((c == ']' || c == '}') && !open.empty()) {
      depth = open.back().depth;
      open.pop_back();
      in_key = false;
    } else if (c == ',' && !open.empty()) {
      depth = open.back().depth + 1;
      in_key = open.back().bracket == '{';
      token_start = true;
    } else if (c == '=' && in_key) {
      in_key = false;
      token_start = true;
    }
    // `depth` counts the containers opened so far; the value that ends the
    // key or array is one level more (`a = [1]` is two levels deep).
    if (depth + 1 > kMaxConfigNesting) {
      return refuse(fmt::format("tables or arrays nested deeper than {} levels", kMaxConfigNesting));
    }
  }
  return ok_status();
}

Result<NodeConfig> load_node_config(const std::filesystem::path& path) {
  std::ifstream file(path);
  if (!file) return make_error("{}: cannot read the configuration file", path.string());
  std::stringstream text;
  text << file.rdbuf();
  return parse_node_config(text.str(), path);
}

Result<NodeConfig> parse_node_config(std::string_view text, const std::filesystem::path& path) {
  if (Status s = screen_config_text(text, path); !s) return s.error();
  toml::table root;
  try {
    root = toml::parse(text, path.string());
  } catch (const toml::parse_error& e) {
    return make_error("{}:{}: {}", path.string(), e.source().begin.line, e.description());
  }

  Reader r(path);
  NodeConfig config;
  config.source = path;
  if (Status s = r.only_known(root, "", {"resolver", "key_cache", "log", "node", "domains", "policy", "limits", "peers",
                                         "store", "control", "delivery"});
      !s) {
    return s.error();
  }

  const toml::table* resolver = root["resolver"].as_table();
  if (resolver == nullptr) return r.at_file("missing the [resolver] section");
  if (Status s = read_resolver(r, *resolver, config.resolver); !s) return s.error();
  if (const toml::table* cache = root["key_cache"].as_table()) {
    if (Status s = read_key_cache(r, *cache, config.key_cache); !s) return s.error();
  }
  if (const toml::table* log = root["log"].as_table()) {
    if (Status s = read_log(r, *log, config.log_level); !s) return s.error();
  }
  if (const toml::table* node = root["node"].as_table()) {
    if (Status s = read_node(r, *node, config); !s) return s.error();
  }
  if (const toml::array* domains = root["domains"].as_array()) {
    if (Status s = read_domains(r, *domains, config); !s) return s.error();
  }
  if (const toml::table* policy = root["policy"].as_table()) {
    if (Status s = read_policy(r, *policy, config.federation.policy, config.access); !s) return s.error();
  }
  if (const toml::table* limits = root["limits"].as_table()) {
    if (Status s = read_limits(r, *limits, config.federation.limits); !s) return s.error();
  }
  if (const toml::array* peers = root["peers"].as_array()) {
    if (Status s = read_peers(r, *peers, config.peers); !s) return s.error();
  }
  // Defaults beside the config file: keyfed.toml -> keyfed.db, keyfed.sock.
  config.store.path = std::filesystem::path(path).replace_extension(".db");
  config.control.socket = std::filesystem::path(path).replace_extension(".sock");
  if (const toml::table* store = root["store"].as_table()) {
    if (Status s = read_store(r, *store, config.store); !s) return s.error();
  }
  if (const toml::table* control = root["control"].as_table()) {
    if (Status s = read_control(r, *control, config.control); !s) return s.error();
  }
  if (const toml::table* delivery = root["delivery"].as_table()) {
    if (Status s = read_delivery(r, *delivery, config.delivery); !s) return s.error();
  }
  return config;
}

}  // namespace keyfed
