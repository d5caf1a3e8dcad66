#include "tooling/rollover.h"

#include <signal.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <thread>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "common/c_handles.h"
#include "common/log.h"
#include "common/openssl_call.h"
#include "federation/frames.h"
#include "config/node_config.h"
#include "daemon/daemon.h"
#include "dnskey/domain_name.h"
#include "dnskey/key_cache.h"
#include "federation/identity.h"
#include "tooling/support.h"

namespace keyfed {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr int kStateVersion = 1;

struct KeyInfo {
  std::string file;
  int algorithm = 0;
  int key_tag = 0;
  std::string key;  // base64
};

struct State {
  std::string phase;  // "next", "switched", "retired"
  KeyInfo old_key;
  std::string new_key_file;
  std::optional<KeyInfo> new_key;
  std::int64_t ttl = 0;        // the KEY RRset TTL observed before the new key was added
  std::int64_t min_ttl = 0;    // the node's [key_cache] min_ttl then
  std::int64_t margin = 0;
  std::int64_t created_at = 0;
  std::optional<std::int64_t> published_at, switched_at, retired_at;
  bool added_by_update = false, removed_by_update = false;
  std::string old_key_kept_as;

  std::int64_t wait() const { return std::max(ttl, min_ttl) + margin; }
};

json key_json(const KeyInfo& k, const std::string& domain, std::uint32_t ttl) {
  return {{"file", k.file},
          {"algorithm", k.algorithm},
          {"key_tag", k.key_tag},
          {"key", k.key},
          {"record", fmt::format("_impp._tcp.{}. {} IN KEY 512 1 {} {}", domain, ttl, k.algorithm, k.key)}};
}

std::string record_of(const KeyInfo& k, const std::string& domain, std::uint32_t ttl) {
  return fmt::format("_impp._tcp.{}. {} IN KEY 512 1 {} {}", domain, ttl, k.algorithm, k.key);
}

json opt(const std::optional<std::int64_t>& v) { return v ? json(*v) : json(nullptr); }

json state_to_json(const State& s, const std::string& domain) {
  json j = {{"version", kStateVersion},
            {"domain", domain},
            {"phase", s.phase},
            {"old_key", {{"file", s.old_key.file}, {"algorithm", s.old_key.algorithm},
                         {"key_tag", s.old_key.key_tag}, {"key", s.old_key.key}}},
            {"new_key_file", s.new_key_file},
            {"new_key", nullptr},
            {"ttl", s.ttl},
            {"min_ttl", s.min_ttl},
            {"margin_seconds", s.margin},
            {"created_at", s.created_at},
            {"published_at", opt(s.published_at)},
            {"switched_at", opt(s.switched_at)},
            {"retired_at", opt(s.retired_at)},
            {"added_by_update", s.added_by_update},
            {"removed_by_update", s.removed_by_update},
            {"old_key_kept_as", s.old_key_kept_as}};
  if (s.new_key) {
    j["new_key"] = {{"file", s.new_key->file}, {"algorithm", s.new_key->algorithm},
                    {"key_tag", s.new_key->key_tag}, {"key", s.new_key->key}};
  }
  return j;
}

Result<State> state_from_json(const std::string& text, const fs::path& file, const std::string& domain) {
  auto bad = [&](const std::string& why) {
    return make_error("{}: corrupt rollover state file ({}); inspect it, or move it away to start over",
                      file.string(), why);
  };
  try {
    json j = json::parse(text);
    if (j.at("version").get<int>() != kStateVersion) return bad("unknown version");
    if (j.at("domain").get<std::string>() != domain) return bad("it is for another domain");
    State s;
    s.phase = j.at("phase").get<std::string>();
    if (s.phase != "next" && s.phase != "switched" && s.phase != "retired") return bad("unknown phase");
    auto key = [](const json& k) {
      KeyInfo i;
      i.file = k.at("file").get<std::string>();
      i.algorithm = k.at("algorithm").get<int>();
      i.key_tag = k.at("key_tag").get<int>();
      i.key = k.at("key").get<std::string>();
      return i;
    };
    s.old_key = key(j.at("old_key"));
    s.new_key_file = j.at("new_key_file").get<std::string>();
    if (s.new_key_file.empty()) return bad("no new key file");
    if (!j.at("new_key").is_null()) s.new_key = key(j.at("new_key"));
    s.ttl = j.at("ttl").get<std::int64_t>();
    s.min_ttl = j.at("min_ttl").get<std::int64_t>();
    s.margin = j.at("margin_seconds").get<std::int64_t>();
    s.created_at = j.at("created_at").get<std::int64_t>();
    auto o = [&](const char* name) -> std::optional<std::int64_t> {
      if (j.at(name).is_null()) return std::nullopt;
      return j.at(name).get<std::int64_t>();
    };
    s.published_at = o("published_at");
    s.switched_at = o("switched_at");
    s.retired_at = o("retired_at");
    s.added_by_update = j.at("added_by_update").get<bool>();
    s.removed_by_update = j.at("removed_by_update").get<bool>();
    s.old_key_kept_as = j.at("old_key_kept_as").get<std::string>();
    if (s.ttl < 0 || s.min_ttl < 0 || s.margin < 0) return bad("negative time");
    if ((s.phase == "switched" || s.phase == "retired") && (!s.switched_at || !s.new_key)) return bad("no switch time");
    return s;
  } catch (const std::exception& e) {
    return bad(e.what());
  }
}

KeyInfo key_info(const DomainIdentity& id) {
  return KeyInfo{id.key_file.string(), id.public_key.algorithm, id.public_key.key_tag, id.public_key.key_base64()};
}

bool answer_has(const DomainKeys& answer, const KeyInfo& key) {
  if (answer.outcome != DnsOutcome::Keys) return false;
  return std::any_of(answer.keys.begin(), answer.keys.end(), [&](const FederationKey& k) {
    return k.algorithm == key.algorithm && k.key_base64() == key.key;
  });
}

bool same_file(const fs::path& a, const fs::path& b) {
  std::error_code ec;
  if (fs::equivalent(a, b, ec)) return true;
  return fs::absolute(a).lexically_normal() == fs::absolute(b).lexically_normal();
}

// A key file as the config should name it: relative to the config's
// directory when it lies below it.
std::string config_name(const fs::path& file, const fs::path& config) {
  fs::path dir = fs::absolute(config).parent_path();
  fs::path abs = fs::absolute(file).lexically_normal();
  fs::path rel = abs.lexically_relative(dir);
  if (!rel.empty() && *rel.begin() != "..") return rel.string();
  return abs.string();
}

struct Context {
  const RolloverOptions& options;
  const KeyLookup& lookup;
  const WallClock& now;
  NodeConfig config;
  std::string domain;
  std::vector<fs::path> key_files;
  fs::path state_file;
  RolloverReport& report;
  json& j;

  explicit Context(const RolloverOptions& o, const KeyLookup& l, const WallClock& n, RolloverReport& r)
      : options(o), lookup(l), now(n), report(r), j(r.json) {}
};

RolloverReport fail(RolloverReport r, RolloverFailure f, std::string message) {
  r.ok = false;
  r.failure = f;
  r.message = std::move(message);
  r.json["ok"] = false;
  r.json["message"] = r.message;
  return r;
}

std::string utc(std::int64_t t) {
  std::time_t time = static_cast<std::time_t>(t);
  std::tm tm{};
  gmtime_r(&time, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

std::string when(std::int64_t t, std::int64_t now) {
  if (t <= now) return "now";
  return fmt::format("in {} s (at {})", t - now, utc(t));
}

Status save(const Context& c, const State& s) {
  return write_file_atomic(c.state_file, state_to_json(s, c.domain).dump(2) + "\n", 0600);
}

// The config with `keys` for the domain, written atomically in place (same
// mode), if it differs.
Status rewrite_keys(const Context& c, const std::vector<std::string>& keys) {
  // Every key must load as the node will load it, or the node would refuse
  // the reload and go on with the old configuration unnoticed.
  for (const std::string& key : keys) {
    fs::path file = fs::path(key).is_absolute() ? fs::path(key) : c.options.config.parent_path() / key;
    if (Result<DomainIdentity> id = load_domain_identity(c.domain, file); !id) return id.error();
  }
  Result<std::string> text = read_small_file(c.options.config);
  if (!text) return text.error();
  Result<std::string> updated = replace_domain_keys(*text, c.options.config, c.domain, keys);
  if (!updated) return updated.error();
  if (*updated == *text) return ok_status();
  struct stat st {};
  unsigned mode = ::stat(c.options.config.c_str(), &st) == 0 ? (st.st_mode & 07777) : 0600;
  // The symlink, if any, stays: the file it points to is replaced.
  std::error_code ec;
  fs::path target = fs::is_symlink(c.options.config, ec) ? fs::canonical(c.options.config, ec) : c.options.config;
  if (Status s = write_file_atomic(target, *updated, mode); !s) return s;
  // What we wrote must still be a valid configuration.
  if (Result<NodeConfig> check = load_node_config(c.options.config); !check) {
    (void)write_file_atomic(target, *text, mode);
    return make_error("the rewritten configuration is refused, the old one is back: {}", check.error().message);
  }
  return ok_status();
}

// SIGHUP to the node answering on the config's control socket.
void reload_node(Context& c) {
  if (!c.options.reload) {
    c.j["reloaded"] = false;
    c.report.lines.push_back("not reloading the node (--no-reload): send it SIGHUP yourself");
    return;
  }
  Result<int> pid = control_socket_pid(c.config.control.socket);
  if (!pid) {
    c.j["reloaded"] = false;
    c.report.lines.push_back(
        fmt::format("no node answers on {}; it will use the new configuration when it starts",
                    c.config.control.socket.string()));
    return;
  }
  if (::kill(*pid, SIGHUP) != 0) {
    c.j["reloaded"] = false;
    c.report.lines.push_back(fmt::format("cannot signal the node (pid {}): {}", *pid, std::strerror(errno)));
    return;
  }
  c.j["reloaded"] = true;
  c.j["node_pid"] = *pid;
  c.report.lines.push_back(fmt::format("node (pid {}) reloaded with SIGHUP", *pid));
}

// Whether the running node presents `key` for the domain now: nullopt when
// it cannot be asked (no node answers on the control socket, or [node] port
// 0), else the answer, retried for up to `patience` (a reload takes a moment).
std::optional<bool> node_presents(Context& c, const KeyInfo& key, std::chrono::milliseconds patience) {
  if (!control_socket_pid(c.config.control.socket) || c.config.listen_port == 0) return std::nullopt;
  Result<DomainIdentity> id = load_domain_identity(c.domain, key.file);
  if (!id) return false;
  std::string address = c.config.listen_address;
  if (address == "0.0.0.0") address = "127.0.0.1";
  if (address == "::") address = "::1";
  auto until = std::chrono::steady_clock::now() + patience;
  for (;;) {
    Result<std::vector<std::uint8_t>> spki = presented_spki(address, c.config.listen_port, c.domain, *id);
    if (spki && *spki == id->public_key.spki_der) {
      c.j["presenting"] = key.key_tag;
      return true;
    }
    if (std::chrono::steady_clock::now() >= until) {
      c.j["presenting"] = nullptr;
      if (!spki) c.report.lines.push_back("cannot ask the node which key it presents: " + spki.error().message);
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
}

Status update_dns(const Context& c, const std::vector<std::string>& add, const std::vector<std::string>& remove) {
  DnsUpdate u;
  u.zone = c.options.zone.empty() ? c.domain : c.options.zone;
  u.add = add;
  u.remove = remove;
  return send_dns_update(*c.options.update_server, *c.options.tsig, u);
}

void fill_common(Context& c, const std::optional<State>& s, std::uint32_t ttl) {
  json& j = c.j;
  j["state_file"] = c.state_file.string();
  j["phase"] = s ? json(s->phase) : json("none");
  j["old_key"] = s ? key_json(s->old_key, c.domain, ttl) : json(nullptr);
  j["new_key"] = s && s->new_key ? key_json(*s->new_key, c.domain, ttl) : json(nullptr);
  j["ttl"] = s ? json(s->ttl) : j.value("ttl", json(nullptr));
  j["margin_seconds"] = s ? s->margin : c.options.margin_seconds;
  j["wait_seconds"] = s ? json(s->wait()) : json(nullptr);
  j["published_at"] = s ? opt(s->published_at) : json(nullptr);
  j["switched_at"] = s ? opt(s->switched_at) : json(nullptr);
  j["retired_at"] = s ? opt(s->retired_at) : json(nullptr);
  j["old_key_kept_as"] = s && !s->old_key_kept_as.empty() ? json(s->old_key_kept_as) : json(nullptr);
  std::int64_t now = c.now();
  std::string next = "next";
  json allowed = now;
  if (s && s->phase == "next") {
    next = "switch";
    allowed = s->published_at ? json(*s->published_at + s->wait()) : json(nullptr);
  } else if (s && s->phase == "switched") {
    next = "retire";
    allowed = *s->switched_at + s->wait();
  }
  j["next_step"] = next;
  j["next_allowed_at"] = allowed;
  j["old_record_gone_by"] = s && s->retired_at ? json(*s->retired_at + s->wait()) : json(nullptr);
}

// Looks the domain up; records published_at when the new key shows.
Result<DomainKeys> observe(Context& c, std::optional<State>& s, bool write) {
  DomainKeys answer = c.lookup(c.domain);
  c.j["outcome"] = to_string(answer.outcome);
  if (answer.outcome != DnsOutcome::Keys) {
    return make_error("the validated lookup of {} gave {}: {}", c.domain, to_string(answer.outcome),
                      untrusted(answer.reason));
  }
  c.j["observed_ttl"] = answer.ttl;
  if (s && s->new_key) {
    bool visible = answer_has(answer, *s->new_key);
    c.j["visible"] = visible;
    if (visible && !s->published_at && s->phase == "next") {
      s->published_at = c.now();
      if (write) {
        if (Status st = save(c, *s); !st) return st.error();
      }
    }
  }
  return answer;
}

}  // namespace

std::int64_t system_wall_clock() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

KeyLookup config_key_lookup(const fs::path& config_file) {
  return [config_file](const std::string& domain) {
    DomainKeys failed;
    failed.domain = domain;
    failed.outcome = DnsOutcome::TempFail;
    Result<NodeConfig> loaded = load_node_config(config_file);
    if (!loaded) {
      failed.reason = loaded.error().message;
      return failed;
    }
    NodeConfig config;
    config.resolver = loaded->resolver;
    config.key_cache = loaded->key_cache;
    Reactor reactor;
    if (Status s = reactor.start(std::move(config), DaemonParts::Keys); !s) {
      failed.reason = s.error().message;
      return failed;
    }
    std::shared_ptr<const CachedKeys> answer;
    reactor.daemon().cache().lookup(domain, [&](std::shared_ptr<const CachedKeys> e) { answer = std::move(e); });
    if (!reactor.run_until([&] { return answer != nullptr; }) || !answer) {
      failed.reason = "the lookup ended without an answer";
      return failed;
    }
    return answer->answer;
  };
}

fs::path rollover_state_file(const fs::path& key_file, const std::string& domain) {
  return key_file.parent_path() / (domain + ".rollover.json");
}

Result<std::vector<std::uint8_t>> presented_spki(const std::string& address, int port, const std::string& domain,
                                                 const DomainIdentity& client, std::chrono::milliseconds timeout) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  int family = address.find(':') == std::string::npos ? AF_INET : AF_INET6;
  if (family == AF_INET) {
    auto* sa = reinterpret_cast<sockaddr_in*>(&ss);
    sa->sin_family = AF_INET;
    sa->sin_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET, address.c_str(), &sa->sin_addr) != 1) return make_error("{}: bad address", address);
    len = sizeof(sockaddr_in);
  } else {
    auto* sa = reinterpret_cast<sockaddr_in6*>(&ss);
    sa->sin6_family = AF_INET6;
    sa->sin6_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET6, address.c_str(), &sa->sin6_addr) != 1) return make_error("{}: bad address", address);
    len = sizeof(sockaddr_in6);
  }
  int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error("socket: {}", std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  timeval tv{static_cast<time_t>(timeout.count() / 1000), static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);  // bounds connect() too
  if (::connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    return make_error("cannot connect to the node at {} port {}: {}", address, port, std::strerror(errno));
  }
  SslCtxPtr ctx{openssl_call([] { return SSL_CTX_new(TLS_client_method()); })};
  if (!ctx) return make_error("cannot create a TLS context");
  if (Status s = openssl_check("TLS 1.3 only",
                               [&] { return SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION); });
      !s) {
    return s.error();
  }
  // The certificate only wraps the key; nothing in it is to be verified here.
  openssl_call([&] { SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr); return 0; });
  if (Status s = openssl_check("ALPN", [&] {
        return SSL_CTX_set_alpn_protos(ctx.get(), kAlpnWire, sizeof kAlpnWire) == 0 ? 1 : 0;
      });
      !s) {
    return s.error();
  }
  if (Status s = openssl_check("client certificate",
                               [&] { return SSL_CTX_use_certificate(ctx.get(), client.certificate.get()); });
      !s) {
    return s.error();
  }
  if (Status s = openssl_check("client key", [&] { return SSL_CTX_use_PrivateKey(ctx.get(), client.key.get()); });
      !s) {
    return s.error();
  }
  SslPtr ssl{openssl_call([&] { return SSL_new(ctx.get()); })};
  if (!ssl) return make_error("cannot create a TLS session");
  if (Status s = openssl_check("SNI", [&] { return static_cast<int>(SSL_set_tlsext_host_name(ssl.get(), domain.c_str())); });
      !s) {
    return s.error();
  }
  if (Status s = openssl_check("TLS socket", [&] { return SSL_set_fd(ssl.get(), fd); }); !s) return s.error();
  SslIo io = ssl_io(ssl.get(), [&] { return SSL_connect(ssl.get()); });
  // Only a completed handshake proves the node holds the key: OpenSSL keeps
  // the peer's certificate before it has checked CertificateVerify.
  if (io.result != 1) {
    return make_error("the node at {} port {} did not complete a TLS handshake ({})", address, port,
                      untrusted(io.reason.empty() ? "no handshake" : io.reason));
  }
  X509* certificate = openssl_call([&] { return SSL_get0_peer_certificate(ssl.get()); });
  if (certificate == nullptr) {
    return make_error("the node at {} port {} presented no certificate ({})", address, port,
                      untrusted(io.reason.empty() ? "no handshake" : io.reason));
  }
  std::vector<std::uint8_t> spki = certificate_spki(certificate);
  // An orderly close: close_notify, then read until the node closes too.
  // Closing with its tickets unread would reset the connection, and the
  // node could lose our certificate and audit a refused handshake.
  (void)ssl_io(ssl.get(), [&] { return SSL_shutdown(ssl.get()); });
  ::shutdown(fd, SHUT_WR);
  timeval drain{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &drain, sizeof drain);
  char sink[4096];
  // Bounded: a peer that keeps sending is not waited for past 64 KiB or 2 s.
  auto drain_until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  for (std::size_t drained = 0; drained < 64 * 1024 && std::chrono::steady_clock::now() < drain_until;) {
    ssize_t n = ::recv(fd, sink, sizeof sink, 0);
    if (n <= 0) break;
    drained += static_cast<std::size_t>(n);
  }
  if (spki.empty()) return make_error("the node's certificate has no public key");
  return spki;
}

Result<int> control_socket_pid(const fs::path& socket) {
  const std::string path = socket.string();
  if (path.size() >= sizeof(sockaddr_un::sun_path)) return make_error("{}: socket path too long", path);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error("socket: {}", std::strerror(errno));
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::memcpy(sa.sun_path, path.c_str(), path.size());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    int e = errno;
    ::close(fd);
    return make_error("no node answers on {}: {}", path, std::strerror(e));
  }
  ucred cred{};
  socklen_t len = sizeof cred;
  int r = ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len);
  ::close(fd);
  if (r != 0 || cred.pid <= 0) return make_error("{}: cannot tell which process serves it", path);
  // Only our own node is signalled: a socket bound by another user, or a
  // pid gone and reused, must not get a SIGHUP from us (possibly as root).
  if (cred.uid != ::geteuid()) {
    return make_error("{} is served by pid {} of uid {}, not this user's: not signalled", path, cred.pid, cred.uid);
  }
  return static_cast<int>(cred.pid);
}

Result<std::string> replace_domain_keys(const std::string& text, const fs::path& origin, const std::string& domain,
                                        const std::vector<std::string>& keys) {
  toml::table root;
  try {
    root = toml::parse(text, origin.string());
  } catch (const toml::parse_error& e) {
    return make_error("{}: {}", origin.string(), e.description());
  }
  const toml::array* domains = root["domains"].as_array();
  const toml::node* keys_node = nullptr;
  if (domains != nullptr) {
    for (const toml::node& entry : *domains) {
      const toml::table* t = entry.as_table();
      if (t == nullptr) continue;
      const toml::node* name = t->get("name");
      if (name == nullptr || !name->is_string()) continue;
      Result<std::string> n = normalize_domain(name->as_string()->get());
      if (n && *n == domain) keys_node = t->get("keys");
    }
  }
  if (keys_node == nullptr || !keys_node->is_array()) {
    return make_error("{}: no [[domains]] entry with keys for {}", origin.string(), domain);
  }
  // From the array's first character ('['), to its matching ']'.
  const toml::source_position begin = keys_node->source().begin;
  std::size_t offset = 0;
  for (toml::source_index line = 1; line < begin.line; ++line) {
    offset = text.find('\n', offset);
    if (offset == std::string::npos) return make_error("{}: cannot locate the keys array", origin.string());
    ++offset;
  }
  for (toml::source_index col = 1; col < begin.column && offset < text.size(); ++col) {
    ++offset;  // columns count code points
    while (offset < text.size() && (static_cast<unsigned char>(text[offset]) & 0xC0) == 0x80) ++offset;
  }
  if (offset >= text.size() || text[offset] != '[') return make_error("{}: cannot locate the keys array", origin.string());
  std::size_t end = offset + 1;
  int depth = 1;
  while (end < text.size() && depth > 0) {
    char ch = text[end];
    if (ch == '"' || ch == '\'') {
      bool triple = text.compare(end, 3, std::string(3, ch)) == 0;
      std::string close = triple ? std::string(3, ch) : std::string(1, ch);
      end += close.size();
      while (end < text.size() && text.compare(end, close.size(), close) != 0) {
        if (ch == '"' && text[end] == '\\') ++end;
        ++end;
      }
      end += close.size();
      continue;
    }
    if (ch == '#') {
      while (end < text.size() && text[end] != '\n') ++end;
      continue;
    }
    if (ch == '[') ++depth;
    if (ch == ']') --depth;
    ++end;
  }
  if (depth != 0) return make_error("{}: cannot locate the end of the keys array", origin.string());
  std::string array = "[";
  for (std::size_t i = 0; i < keys.size(); ++i) {
    std::string escaped;
    for (char ch : keys[i]) {
      if (ch == '"' || ch == '\\') escaped += '\\';
      escaped += ch;
    }
    array += fmt::format("{}\"{}\"", i == 0 ? "" : ", ", escaped);
  }
  array += "]";
  return text.substr(0, offset) + array + text.substr(end);
}

RolloverReport run_rollover(const RolloverOptions& options, const KeyLookup& lookup, const WallClock& now) {
  RolloverReport report;
  Context c(options, lookup, now, report);
  static const char* const names[] = {"plan", "next", "switch", "retire", "status"};
  c.j = {{"step", names[static_cast<int>(options.step)]}};
  auto failed = [&](RolloverFailure f, std::string message) { return fail(std::move(report), f, std::move(message)); };

  Result<std::string> domain = normalize_domain(options.domain);
  if (!domain) return failed(RolloverFailure::BadInput, domain.error().message);
  c.domain = *domain;
  c.j["domain"] = c.domain;
  if (options.margin_seconds < 0 || options.margin_seconds > 31536000) {
    return failed(RolloverFailure::BadInput, "--margin-seconds must be 0..31536000");
  }
  if (options.update_server.has_value() != options.tsig.has_value()) {
    return failed(RolloverFailure::BadInput, "--update SERVER and --tsig FILE go together");
  }
  Result<NodeConfig> config = load_node_config(options.config);
  if (!config) return failed(RolloverFailure::BadInput, config.error().message);
  c.config = std::move(config).value();
  const HostedDomain* hosted = nullptr;
  for (const HostedDomain& h : c.config.federation.domains) {
    if (h.domain == c.domain) hosted = &h;
  }
  if (hosted == nullptr) {
    return failed(RolloverFailure::BadInput,
                  fmt::format("{}: {} is not one of its [[domains]]", options.config.string(), c.domain));
  }
  c.key_files = hosted->key_files;
  Result<DomainIdentity> current = load_domain_identity(c.domain, c.key_files.front());
  if (!current) return failed(RolloverFailure::BadInput, current.error().message);
  c.state_file = rollover_state_file(c.key_files.front(), c.domain);
  // One step at a time per domain: a `status` from cron and an operator's
  // `next` must not both read, change and write the state (two keys made,
  // one forgotten in DNS).
  fs::path lock_path = c.state_file;
  lock_path += ".lock";
  int lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (lock_fd < 0) {
    return failed(RolloverFailure::BadInput, fmt::format("{}: cannot open the lock file: {}", lock_path.string(), std::strerror(errno)));
  }
  struct LockFile {
    int fd;
    ~LockFile() { ::close(fd); }
  } lock{lock_fd};
  if (::flock(lock.fd, LOCK_EX | LOCK_NB) != 0) {
    return failed(RolloverFailure::BadInput,
                  fmt::format("another keyfed rollover of {} is running (lock {}): run this step again when it ends",
                              c.domain, lock_path.string()));
  }

  std::optional<State> state;
  {
    std::error_code ec;
    if (fs::exists(c.state_file, ec)) {
      Result<std::string> text = read_small_file(c.state_file);
      if (!text) return failed(RolloverFailure::BadInput, text.error().message);
      Result<State> s = state_from_json(*text, c.state_file, c.domain);
      if (!s) return failed(RolloverFailure::BadInput, s.error().message);
      state = std::move(s).value();
    }
  }
  auto ttl_for_records = [&]() -> std::uint32_t {
    if (options.record_ttl != 0) return options.record_ttl;
    return state ? static_cast<std::uint32_t>(state->ttl) : 300;
  };
  c.j["current_key"] = key_json(key_info(*current), c.domain, ttl_for_records());
  auto finish = [&](std::string message) {
    fill_common(c, state, ttl_for_records());
    report.ok = true;
    report.message = std::move(message);
    c.j["ok"] = true;
    c.j["message"] = report.message;
    return std::move(report);
  };
  auto too_early = [&](std::int64_t retry_at, std::string message) {
    fill_common(c, state, ttl_for_records());
    c.j["retry_at"] = retry_at;
    return failed(RolloverFailure::TooEarly, std::move(message));
  };
  const std::int64_t t = now();
  bool in_progress = state && state->phase != "retired";

  switch (options.step) {
    case RolloverStep::Plan:
    case RolloverStep::Show: {
      if (in_progress || options.step == RolloverStep::Plan || !state) {
        Result<DomainKeys> answer = observe(c, state, options.step == RolloverStep::Show);
        if (!answer) {
          fill_common(c, state, ttl_for_records());
          return failed(RolloverFailure::DnsFailure, answer.error().message);
        }
        if (!state || !in_progress) c.j["ttl"] = answer->ttl;
      }
      fill_common(c, state, ttl_for_records());
      const std::int64_t seen_ttl = c.j["ttl"].is_number() ? c.j["ttl"].get<std::int64_t>() : 0;
      std::int64_t wait = state && in_progress
                              ? state->wait()
                              : std::max<std::int64_t>(seen_ttl, c.config.key_cache.min_ttl.count()) +
                                    options.margin_seconds;
      std::string step = c.j["next_step"];
      if (!in_progress) {
        report.lines.push_back(fmt::format("{}: no rollover in progress; presenting key tag {} ({})", c.domain,
                                           current->public_key.key_tag, current->key_file.string()));
        report.lines.push_back(fmt::format(
            "next:   create the next key beside it and publish its KEY record{}",
            options.update_server ? " by dynamic update" : " (you add it to the zone)"));
        report.lines.push_back(fmt::format(
            "switch: allowed {} s after the new key is first seen in validated DNS (TTL {} or min_ttl {}, the larger, + margin {})",
            wait, seen_ttl, c.config.key_cache.min_ttl.count(), options.margin_seconds));
        report.lines.push_back(fmt::format("retire: allowed {} s after the switch; removes the old record", wait));
      } else {
        report.lines.push_back(fmt::format("{}: phase {}; old key tag {}, new key tag {}", c.domain, state->phase,
                                           state->old_key.key_tag, state->new_key ? state->new_key->key_tag : 0));
        if (state->phase == "next") {
          if (!state->published_at) {
            report.lines.push_back("the new key is not yet in the validated KEY RRset; publish it:");
            if (state->new_key) report.lines.push_back("  " + record_of(*state->new_key, c.domain, ttl_for_records()));
          } else {
            report.lines.push_back(fmt::format("new key seen in validated DNS at {}; switch allowed {}",
                                               utc(*state->published_at), when(*state->published_at + wait, t)));
          }
        } else {
          report.lines.push_back(fmt::format("switched at {}; retire allowed {}", utc(*state->switched_at),
                                             when(*state->switched_at + wait, t)));
        }
      }
      return finish(fmt::format("next step: {}", step));
    }

    case RolloverStep::Next: {
      if (state && state->phase == "switched") {
        fill_common(c, state, ttl_for_records());
        return failed(RolloverFailure::BadInput, "the rollover is switched already: retire the old key first");
      }
      if (!in_progress) {
        DomainKeys answer = lookup(c.domain);
        c.j["outcome"] = to_string(answer.outcome);
        if (answer.outcome != DnsOutcome::Keys) {
          return failed(RolloverFailure::DnsFailure,
                        fmt::format("the validated lookup of {} gave {}: {}; the current key must be published first",
                                    c.domain, to_string(answer.outcome), untrusted(answer.reason)));
        }
        State s;
        s.phase = "next";
        s.old_key = key_info(*current);
        s.ttl = answer.ttl;
        s.min_ttl = c.config.key_cache.min_ttl.count();
        s.margin = options.margin_seconds;
        s.created_at = t;
        s.new_key_file = (c.key_files.front().parent_path() / fmt::format("{}-{}.pem", c.domain, t)).string();
        // The file's name is recorded before the file exists: a crash in between
        // is finished by the next run, which creates it under that name.
        if (Status st = save(c, s); !st) return failed(RolloverFailure::Internal, st.error().message);
        state = s;
      }
      std::error_code ec;
      if (!fs::exists(state->new_key_file, ec)) {
        if (Status st = generate_key_file(state->new_key_file, static_cast<std::uint8_t>(state->old_key.algorithm));
            !st) {
          return failed(RolloverFailure::Internal, st.error().message);
        }
      }
      Result<DomainIdentity> next = load_domain_identity(c.domain, state->new_key_file);
      if (!next) return failed(RolloverFailure::BadInput, next.error().message);
      if (state->new_key && state->new_key->key != key_info(*next).key &&
          (state->added_by_update || state->published_at)) {
        // Its record is in DNS already: replacing it would leave that record
        // published for ever, never retired.
        return failed(RolloverFailure::BadInput,
                      fmt::format("{} is not the next key the state records (tag {}), which is published already; put "
                                  "that key back, or remove its record and the state file",
                                  state->new_key_file, state->new_key->key_tag));
      }
      if (!state->new_key || state->new_key->key != key_info(*next).key) {
        state->new_key = key_info(*next);
        if (Status st = save(c, *state); !st) return failed(RolloverFailure::Internal, st.error().message);
      }
      const std::string record = record_of(*state->new_key, c.domain, ttl_for_records());
      report.lines.push_back(fmt::format("next key: {} (tag {})", state->new_key->file, state->new_key->key_tag));
      if (options.update_server) {
        if (Status st = update_dns(c, {record}, {}); !st) {
          fill_common(c, state, ttl_for_records());
          return failed(RolloverFailure::UpdateFailed, st.error().message);
        }
        c.j["dns_update"] = "added";
        if (!state->added_by_update) {
          state->added_by_update = true;
          if (Status st = save(c, *state); !st) return failed(RolloverFailure::Internal, st.error().message);
        }
        report.lines.push_back("added by dynamic update: " + record);
      } else {
        report.lines.push_back("publish this record beside the current one:");
        report.lines.push_back("  " + record);
      }
      Result<DomainKeys> answer = observe(c, state, true);
      if (!answer) report.lines.push_back("validated lookup failed: " + answer.error().message);
      if (state->published_at) {
        report.lines.push_back(fmt::format("seen in validated DNS; switch allowed {}",
                                           when(*state->published_at + state->wait(), t)));
      } else {
        report.lines.push_back("not yet seen in validated DNS; `status` or `switch` will notice it");
      }
      c.j["record"] = record;
      return finish("next key ready");
    }

    case RolloverStep::Switch: {
      if (!in_progress) {
        fill_common(c, state, ttl_for_records());
        return failed(RolloverFailure::BadInput, "no rollover in progress: run `next` first");
      }
      if (state->phase == "switched") {
        report.lines.push_back(fmt::format("already switched at {}", utc(*state->switched_at)));
        return finish("already switched");
      }
      if (!state->new_key) return failed(RolloverFailure::BadInput, "the next key was never created: run `next`");
      Result<DomainKeys> answer = observe(c, state, true);
      if (!answer) {
        fill_common(c, state, ttl_for_records());
        return failed(RolloverFailure::DnsFailure, answer.error().message);
      }
      if (!state->published_at) {
        return too_early(t + std::max<std::int64_t>(state->wait(), 1),
                         fmt::format("too early: the new key (tag {}) is not in the validated KEY RRset of {} yet",
                                     state->new_key->key_tag, c.domain));
      }
      if (!answer_has(*answer, *state->new_key)) {
        return failed(RolloverFailure::DnsFailure,
                      fmt::format("the new key (tag {}) was seen, but is no longer in the validated KEY RRset",
                                  state->new_key->key_tag));
      }
      std::int64_t allowed = *state->published_at + state->wait();
      if (t < allowed) {
        return too_early(allowed, fmt::format("too early: peers may still cache the KEY RRset without the new key; "
                                              "switch allowed {}",
                                              when(allowed, t)));
      }
      // The new key first (presented), the old one kept loaded.
      std::vector<std::string> keys{config_name(state->new_key->file, options.config),
                                    config_name(state->old_key.file, options.config)};
      for (const fs::path& f : c.key_files) {
        if (!same_file(f, state->new_key->file) && !same_file(f, state->old_key.file)) {
          keys.push_back(config_name(f, options.config));
        }
      }
      if (Status st = rewrite_keys(c, keys); !st) return failed(RolloverFailure::BadInput, st.error().message);
      reload_node(c);
      if (node_presents(c, *state->new_key, std::chrono::seconds(5)) == false) {
        fill_common(c, state, ttl_for_records());
        return failed(RolloverFailure::NotSwitched,
                      fmt::format("the running node does not present the new key (tag {}) after the reload; was "
                                  "the reload refused? (see its log) Run switch again once it is fixed",
                                  state->new_key->key_tag));
      }
      state->phase = "switched";
      state->switched_at = t;
      if (Status st = save(c, *state); !st) return failed(RolloverFailure::Internal, st.error().message);
      report.lines.push_back(fmt::format("switched {} to key tag {}; retire allowed {}", c.domain,
                                         state->new_key->key_tag, when(t + state->wait(), t)));
      return finish("switched");
    }

    case RolloverStep::Retire: {
      if (state && state->phase == "retired") {
        fill_common(c, state, ttl_for_records());
        report.lines.push_back(fmt::format("already retired at {}", utc(*state->retired_at)));
        return finish("already retired");
      }
      if (!state || state->phase != "switched") {
        fill_common(c, state, ttl_for_records());
        return failed(RolloverFailure::BadInput, "nothing to retire: run `next` and `switch` first");
      }
      std::int64_t allowed = *state->switched_at + state->wait();
      if (t < allowed) {
        return too_early(allowed, fmt::format("too early: the old key may still be needed; retire allowed {}",
                                              when(allowed, t)));
      }
      Result<DomainKeys> answer = observe(c, state, false);
      if (!answer || !answer_has(*answer, *state->new_key)) {
        fill_common(c, state, ttl_for_records());
        return failed(RolloverFailure::DnsFailure,
                      answer ? "the new key is not in the validated KEY RRset: not removing the old one"
                             : answer.error().message);
      }
      if (node_presents(c, *state->new_key, std::chrono::seconds(2)) == false) {
        fill_common(c, state, ttl_for_records());
        return failed(RolloverFailure::NotSwitched,
                      fmt::format("the running node does not present the new key (tag {}): not removing the old "
                                  "one (run switch again, and see the node's log)",
                                  state->new_key->key_tag));
      }
      const std::string old_record = record_of(state->old_key, c.domain, ttl_for_records());
      if (options.update_server) {
        if (Status st = update_dns(c, {}, {old_record}); !st) {
          fill_common(c, state, ttl_for_records());
          return failed(RolloverFailure::UpdateFailed, st.error().message);
        }
        state->removed_by_update = true;
        c.j["dns_update"] = "removed";
        report.lines.push_back("removed by dynamic update: " + old_record);
      } else {
        report.lines.push_back("remove this record from the zone:");
        report.lines.push_back("  " + old_record);
      }
      std::vector<std::string> keys;
      for (const fs::path& f : c.key_files) {
        if (!same_file(f, state->old_key.file)) keys.push_back(config_name(f, options.config));
      }
      if (keys.empty()) keys.push_back(config_name(state->new_key->file, options.config));
      if (Status st = rewrite_keys(c, keys); !st) return failed(RolloverFailure::BadInput, st.error().message);
      reload_node(c);
      // The old private key is kept, renamed, so nothing loads it by mistake,
      // unless another domain of this configuration still names the file.
      std::error_code ec;
      std::string kept = state->old_key.file + ".retired";
      std::string shared_with;
      for (const HostedDomain& other : c.config.federation.domains) {
        if (other.domain == c.domain) continue;
        for (const fs::path& f : other.key_files) {
          if (same_file(f, state->old_key.file)) shared_with = other.domain;
        }
      }
      if (!shared_with.empty()) {
        kept = state->old_key.file;
        report.lines.push_back(fmt::format("{} is also a key of {}: left in place", state->old_key.file, shared_with));
      } else if (fs::exists(state->old_key.file, ec)) {
        fs::rename(state->old_key.file, kept, ec);
        if (ec) return failed(RolloverFailure::Internal, fmt::format("cannot rename {}: {}", state->old_key.file, ec.message()));
      }
      state->old_key_kept_as = kept;
      state->phase = "retired";
      state->retired_at = t;
      if (Status st = save(c, *state); !st) return failed(RolloverFailure::Internal, st.error().message);
      report.lines.push_back(fmt::format("old key kept as {}; peers drop it from their caches {}", kept,
                                         when(t + state->wait(), t)));
      return finish("retired");
    }
  }
  return failed(RolloverFailure::Internal, "unknown step");
}

}  // namespace keyfed
