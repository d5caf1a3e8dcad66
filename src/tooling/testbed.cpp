#include "tooling/testbed.h"

#include <signal.h>
#include <spawn.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "daemon/control_client.h"
#include "federation/identity.h"
#include "tooling/knot_testbed.h"
#include "tooling/support.h"
#include "tooling/zone_signer.h"

extern char** environ;

namespace keyfed {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr int kStateVersion = 1;
constexpr const char* kUsers[] = {"alice", "bob", "carol"};
constexpr const char* kNames[] = {"alpha", "beta",   "gamma",   "delta", "epsilon", "zeta",    "eta",     "theta",
                                  "iota",  "kappa",  "lambda",  "mu",    "nu",      "xi",      "omicron", "pi",
                                  "rho",   "sigma",  "tau",     "upsilon", "phi",   "chi",     "psi",     "omega"};

std::string domain_name_for(int i) {
  if (i < static_cast<int>(std::size(kNames))) return fmt::format("{}.test", kNames[i]);
  return fmt::format("d{:03}.test", i + 1);
}

fs::path zone_key_stem(const fs::path& dir, const std::string& origin) { return dir / "zonekeys" / origin; }

// The testbed's directory holds private keys, node configurations and the
// pids the testbed signals: it must be this user's alone. A directory
// another user made first (in /tmp, say) is refused, as is a symbolic link.
Status check_private_dir(const fs::path& dir) {
  struct stat st{};
  if (::lstat(dir.c_str(), &st) != 0) return make_error("{}: {}", dir.string(), std::strerror(errno));
  if (S_ISLNK(st.st_mode)) return make_error("{} is a symbolic link: refused (give the real directory)", dir.string());
  if (!S_ISDIR(st.st_mode)) return make_error("{} is not a directory", dir.string());
  if (st.st_uid != ::geteuid()) {
    return make_error("{} belongs to uid {}, not to this user: refused", dir.string(), st.st_uid);
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return make_error("{} is writable by group or others: refused (chmod 0700)", dir.string());
  }
  return ok_status();
}

bool is_signed(const TestbedDomain* d) { return d == nullptr || d->kind != TestbedKind::Insecure; }

// The process still runs `keyfed run --config CONFIG` (a pid recorded in the
// state file may have been reused by something else since).
bool process_runs(pid_t pid, const fs::path& config) {
  if (pid <= 0) return false;
  int status = 0;
  if (waitpid(pid, &status, WNOHANG) == pid) return false;  // ours, and it has exited: reaped now
  std::ifstream stat(fmt::format("/proc/{}/stat", pid));
  std::string line;
  if (!std::getline(stat, line)) return false;
  std::size_t close = line.rfind(')');
  if (close == std::string::npos || close + 2 >= line.size()) return false;
  if (line[close + 2] == 'Z') {
    // It died since the waitpid() above: reap it now if it is our child, so
    // no zombie outlives a `down` (a child of ours when this process started it).
    waitpid(pid, &status, WNOHANG);
    return false;
  }
  // Another user's process is never ours to signal, whatever its command line.
  struct stat owner{};
  if (::stat(fmt::format("/proc/{}", pid).c_str(), &owner) != 0 || owner.st_uid != ::geteuid()) return false;
  std::ifstream cmdline(fmt::format("/proc/{}/cmdline", pid), std::ios::binary);
  std::string args((std::istreambuf_iterator<char>(cmdline)), std::istreambuf_iterator<char>());
  return args.find(config.string()) != std::string::npos;
}

// A node this process started (a child) is reaped once it stopped, so no
// zombie outlives `down`: its command line empties while it exits, before
// it is a zombie, so process_runs() already says it is gone.
void reap_if_child(pid_t pid) {
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (std::chrono::steady_clock::now() < until) {
    int status = 0;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid || r < 0) return;  // reaped, or not our child
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

}  // namespace

std::string_view to_string(TestbedDns dns) { return dns == TestbedDns::Knot ? "knot" : "embedded"; }

std::string_view to_string(TestbedKind kind) {
  switch (kind) {
    case TestbedKind::Node: return "node";
    case TestbedKind::NoKeys: return "no-keys";
    case TestbedKind::Insecure: return "insecure";
    case TestbedKind::Bogus: return "bogus";
  }
  return "node";
}

fs::path keyfed_binary() {
  if (const char* env = std::getenv("KEYFED_BINARY"); env != nullptr && *env != '\0') return env;
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path("keyfed") : self;
}

TestbedDomain* Testbed::find(const std::string& name) {
  for (TestbedDomain& d : domains_) {
    if (d.name == name) return &d;
  }
  return nullptr;
}

std::vector<TestbedDomain*> Testbed::nodes() {
  std::vector<TestbedDomain*> list;
  for (TestbedDomain& d : domains_) {
    if (d.kind == TestbedKind::Node) list.push_back(&d);
  }
  return list;
}

fs::path Testbed::node_dir(const TestbedDomain& d) const { return dir_ / "nodes" / d.name; }
fs::path Testbed::node_config(const TestbedDomain& d) const { return node_dir(d) / "node.toml"; }
fs::path Testbed::node_socket(const TestbedDomain& d) const { return node_dir(d) / "node.sock"; }
fs::path Testbed::node_log(const TestbedDomain& d) const { return node_dir(d) / "node.log"; }

Result<Testbed> Testbed::create(const TestbedOptions& options) {
  if (options.domains < 1 || options.domains > 200) {
    return make_error("--domains {} is outside 1..200", options.domains);
  }
  if (static_cast<int>(options.base_port) + options.domains + 4 > 65535 || options.base_port < 1024) {
    return make_error("--base-port {} leaves no room for {} nodes below 65536 (or is below 1024)", options.base_port,
                      options.domains);
  }
  // Each node's control socket lives in DIR/nodes/DOMAIN/: a Unix socket's
  // path has room for 107 bytes, so a deep DIR is refused here, by name,
  // rather than by every node failing to start.
  std::size_t socket_path = fs::absolute(options.dir).lexically_normal().string().size() +
                            std::string("/nodes/").size() + std::max<std::size_t>(domain_name_for(options.domains - 1).size(), std::string("insecure.test").size()) +
                            std::string("/node.sock").size();
  if (socket_path > 107) {
    return make_error("{}: too deep for the nodes' control sockets ({} bytes of a Unix socket path's 107): choose a "
                      "shorter --dir",
                      options.dir.string(), socket_path);
  }
  std::error_code ec;
  if (fs::exists(options.dir / "testbed.json", ec)) {
    return make_error("{} already holds a testbed (keyfed testbed down --dir {} --remove, or another --dir)",
                      options.dir.string(), options.dir.string());
  }
  bool existed = fs::exists(options.dir, ec);
  fs::create_directories(options.dir, ec);
  if (ec) return make_error("{}: cannot create: {}", options.dir.string(), ec.message());
  if (!existed) fs::permissions(options.dir, fs::perms::owner_all, ec);
  if (Status s = check_private_dir(options.dir); !s) return s.error();
  Testbed tb;
  tb.dir_ = fs::absolute(options.dir).lexically_normal();
  tb.dns_ = options.dns;
  tb.base_port_ = options.base_port;
  tb.key_ttl_ = options.key_ttl;
  for (const char* sub : {"zones", "zonekeys", "nodes"}) fs::create_directories(tb.dir_ / sub, ec);
  fs::permissions(tb.dir_ / "zonekeys", fs::perms::owner_all, ec);

  for (int i = 0; i < options.domains; ++i) {
    TestbedDomain d;
    d.name = domain_name_for(i);
    d.port = static_cast<std::uint16_t>(options.base_port + 1 + i);
    tb.domains_.push_back(std::move(d));
  }
  if (options.special) {
    for (auto [name, kind] : {std::pair{"nokeys.test", TestbedKind::NoKeys}, std::pair{"insecure.test", TestbedKind::Insecure},
                              std::pair{"bogus.test", TestbedKind::Bogus}}) {
      TestbedDomain d;
      d.name = name;
      d.kind = kind;
      d.ds_broken = kind == TestbedKind::Bogus;
      tb.domains_.push_back(std::move(d));
    }
  }
  // Federation keys: one per node domain (and one for the zones that publish
  // a key without a node: insecure and bogus).
  for (TestbedDomain& d : tb.domains_) {
    if (d.kind == TestbedKind::NoKeys) continue;
    fs::create_directories(tb.node_dir(d), ec);
    fs::permissions(tb.node_dir(d), fs::perms::owner_all, ec);
    if (Status s = generate_key_file(tb.node_dir(d) / "key-1.pem", kAlgorithmEd25519); !s) return s.error();
    d.published_keys = {"key-1.pem"};
    if (d.kind == TestbedKind::Node) d.node_key = "key-1.pem";
  }
  if (Status s = tb.generate_zone_keys(); !s) return s.error();
  std::vector<std::string> all{"test"};
  for (const TestbedDomain& d : tb.domains_) all.push_back(d.name);
  if (tb.dns_ == TestbedDns::Embedded) {
    if (Status s = tb.write_zones(all); !s) return s.error();
  } else {
    // Knot signs the zones itself (knot_server.h).
    if (Status s = knot_write_setup(tb, tb.base_port_); !s) return s.error();
  }
  for (TestbedDomain* d : tb.nodes()) {
    if (Status s = tb.write_node_config(*d); !s) return s.error();
  }
  if (Status s = tb.save(); !s) return s.error();
  return tb;
}

Status Testbed::generate_zone_keys() {
  std::vector<std::string> origins{"test", "stray"};  // stray: the key a broken DS names
  for (const TestbedDomain& d : domains_) {
    if (d.kind != TestbedKind::Insecure) origins.push_back(d.name);
  }
  for (const std::string& origin : origins) {
    Result<ZoneKey> key = ZoneKey::generate(origin);
    if (!key) return key.error();
    if (Status s = key->save(zone_key_stem(dir_, origin)); !s) return s;
    if (origin == "test") {
      if (Status s = write_file_atomic(dir_ / "trust-anchor.ds", key->ds_record() + "\n", 0644); !s) return s;
    }
  }
  return ok_status();
}

std::string Testbed::zone_text(const std::string& origin) const {
  auto serial = static_cast<std::uint32_t>(std::time(nullptr));
  std::string text = fmt::format(
      "$ORIGIN {0}.\n$TTL {2}\n@ IN SOA ns.{0}. hostmaster.{0}. {1} 3600 600 86400 {2}\n@ IN NS ns.{0}.\n"
      "ns IN A 127.0.0.1\n",
      origin, serial, key_ttl_);
  if (origin == "test") {
    for (const TestbedDomain& d : domains_) {
      text += fmt::format("{0}. IN NS ns.{0}.\nns.{0}. IN A 127.0.0.1\n", d.name);
      if (d.kind == TestbedKind::Insecure) continue;  // no DS: an insecure delegation
      std::string key_origin = d.ds_broken ? "stray" : d.name;
      // Broken: the DS of a stray key, which the child's zone never uses.
      Result<ZoneKey> key = ZoneKey::load(d.name, zone_key_stem(dir_, key_origin).string() + ".private");
      if (key) text += key->ds_record(key_ttl_) + "\n";
    }
    return text;
  }
  const TestbedDomain* d = nullptr;
  for (const TestbedDomain& x : domains_) {
    if (x.name == origin) d = &x;
  }
  if (d == nullptr) return text;
  text += fmt::format("@ IN A 127.0.0.1\n");
  for (const std::string& file : d->published_keys) {
    Result<DomainIdentity> id = load_domain_identity(d->name, node_dir(*d) / file);
    if (id) text += key_record_text(d->name, id->public_key, key_ttl_) + "\n";
  }
  if (d->port != 0) text += fmt::format("_impp._tcp.{}. IN SRV 0 0 {} {}.\n", d->name, d->port, d->name);
  return text;
}

Status Testbed::write_zones(const std::vector<std::string>& zones) {
  auto now = std::chrono::system_clock::now();
  for (const std::string& origin : zones) {
    const TestbedDomain* d = origin == "test" ? nullptr : find(origin);
    std::string text = zone_text(origin);
    fs::path unsigned_path = dir_ / "zones" / (origin + ".zone");
    if (Status s = write_file_atomic(unsigned_path, text, 0644); !s) return s;
    if (!is_signed(d)) continue;
    Result<ZoneKey> key = ZoneKey::load(origin, zone_key_stem(dir_, origin).string() + ".private");
    if (!key) return key.error();
    Result<std::string> signed_text = sign_zone(text, *key, now - std::chrono::hours(1), now + std::chrono::days(30));
    if (!signed_text) return signed_text.error();
    if (Status s = write_file_atomic(dir_ / "zones" / (origin + ".zone.signed"), *signed_text, 0644); !s) return s;
  }
  return ok_status();
}

Status Testbed::write_node_config(const TestbedDomain& d) const {
  std::string resolver;
  if (dns_ == TestbedDns::Knot) {
    resolver = fmt::format("server = \"127.0.0.1@{}\"\n", base_port_);
  } else {
    resolver = "zones = [\n";
    resolver += fmt::format("  \"{}\",\n", (dir_ / "zones" / "test.zone.signed").string());
    for (const TestbedDomain& z : domains_) {
      if (!z.served) continue;
      resolver += fmt::format("  \"{}\",\n", (dir_ / "zones" / (z.name + (is_signed(&z) ? ".zone.signed" : ".zone"))).string());
    }
    resolver += "]\n";
  }
  std::string users;
  for (const char* u : kUsers) users += fmt::format("{}\"{}\"", users.empty() ? "" : ", ", u);
  std::string text = fmt::format(
      "# Generated by keyfed testbed (docs/TESTBED.md); rewritten by the testbed as it runs.\n"
      "[resolver]\nmode = \"testbed\"\ntrust_anchor = \"{}\"\n{}query_timeout_ms = 2000\n\n"
      "[key_cache]\nmin_ttl = 1\nmax_ttl = 3600\nfailure_ttl = 2\n\n"
      "[log]\nlevel = \"info\"\n\n"
      "[node]\nlisten = \"127.0.0.1\"\nport = {}\nrevalidate_interval_ms = 1000\n\n"
      "[[domains]]\nname = \"{}\"\nkeys = [\"{}\"]\nusers = [{}]\n\n"
      "[store]\npath = \"node.db\"\nsynchronous = \"normal\"\n\n"
      "[control]\nsocket = \"node.sock\"\n\n"
      "[delivery]\nretry_first_s = 1\nretry_max_s = 2\n",
      (dir_ / "trust-anchor.ds").string(), resolver, d.port, d.name, d.node_key, users);
  return write_file_atomic(node_config(d), text, 0644);
}

Status Testbed::save() const {
  json domains = json::array();
  for (const TestbedDomain& d : domains_) {
    domains.push_back({{"name", d.name},
                       {"kind", std::string(to_string(d.kind))},
                       {"port", d.port},
                       {"published_keys", d.published_keys},
                       {"node_key", d.node_key},
                       {"ds_broken", d.ds_broken},
                       {"served", d.served},
                       {"pid", d.pid}});
  }
  json state = {{"version", kStateVersion}, {"dns", std::string(to_string(dns_))}, {"base_port", base_port_},
                {"key_ttl", key_ttl_},      {"knot_pid", knot_pid_},               {"domains", domains}};
  return write_file_atomic(dir_ / "testbed.json", state.dump(2) + "\n", 0600);
}

Result<Testbed> Testbed::open(const fs::path& dir) {
  fs::path file = dir / "testbed.json";
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    if (Status s = check_private_dir(dir); !s) return s.error();
  }
  Result<std::string> text = read_small_file(file);
  if (!text) return make_error("{}: no testbed here (keyfed testbed up --dir {})", dir.string(), dir.string());
  Testbed tb;
  tb.dir_ = fs::absolute(dir).lexically_normal();
  try {
    json state = json::parse(*text);
    if (state.at("version").get<int>() != kStateVersion) {
      return make_error("{}: state version {} is not {}", file.string(), state.at("version").dump(), kStateVersion);
    }
    tb.dns_ = state.at("dns").get<std::string>() == "knot" ? TestbedDns::Knot : TestbedDns::Embedded;
    tb.base_port_ = state.at("base_port").get<std::uint16_t>();
    tb.key_ttl_ = state.at("key_ttl").get<std::uint32_t>();
    tb.knot_pid_ = state.at("knot_pid").get<pid_t>();
    for (const json& j : state.at("domains")) {
      TestbedDomain d;
      d.name = j.at("name").get<std::string>();
      std::string kind = j.at("kind").get<std::string>();
      d.kind = kind == "no-keys"    ? TestbedKind::NoKeys
               : kind == "insecure" ? TestbedKind::Insecure
               : kind == "bogus"    ? TestbedKind::Bogus
                                    : TestbedKind::Node;
      d.port = j.at("port").get<std::uint16_t>();
      d.published_keys = j.at("published_keys").get<std::vector<std::string>>();
      d.node_key = j.at("node_key").get<std::string>();
      d.ds_broken = j.at("ds_broken").get<bool>();
      d.served = j.at("served").get<bool>();
      d.pid = j.at("pid").get<pid_t>();
      tb.domains_.push_back(std::move(d));
    }
  } catch (const json::exception& e) {
    return make_error("{}: not a testbed state file: {}", file.string(), e.what());
  }
  return tb;
}

bool Testbed::running(const TestbedDomain& d) const { return process_runs(d.pid, node_config(d)); }

Status Testbed::start_node(TestbedDomain& d) {
  if (running(d)) return ok_status();
  fs::path binary = keyfed_binary();
  std::string config = node_config(d).string();
  std::string log = node_log(d).string();
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // Its own session: the node outlives `keyfed testbed up` and a terminal's ^C.
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID);
  std::string arg0 = "keyfed", arg1 = "run", arg2 = "--config";
  char* argv[] = {arg0.data(), arg1.data(), arg2.data(), config.data(), nullptr};
  pid_t pid = 0;
  int err = posix_spawn(&pid, binary.c_str(), &actions, &attr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (err != 0) return make_error("{}: cannot start {}: {}", d.name, binary.string(), std::strerror(err));
  d.pid = pid;
  return save();
}

Status Testbed::wait_listening(const TestbedDomain& d, std::chrono::milliseconds limit) {
  auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    if (!running(d)) {
      return make_error("{}: the node exited (its log: {})", d.name, node_log(d).string());
    }
    if (control(d, {{"command", "peers"}})) return ok_status();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return make_error("{}: the node does not answer on {} after {} ms (its log: {})", d.name, node_socket(d).string(),
                    limit.count(), node_log(d).string());
}

// A port another program holds makes a node fail at start; say which first.
static Status port_free(std::uint16_t port, int type) {
  int fd = ::socket(AF_INET, type | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error("cannot create a socket: {}", std::strerror(errno));
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  int err = errno;
  ::close(fd);
  if (rc != 0) return make_error("127.0.0.1:{} is taken ({}); choose another --base-port", port, std::strerror(err));
  return ok_status();
}

Status Testbed::check_ports() {
  for (TestbedDomain* d : nodes()) {
    if (running(*d)) continue;
    if (Status s = port_free(d->port, SOCK_STREAM); !s) return make_error("{}: {}", d->name, s.error().message);
  }
  if (dns_ == TestbedDns::Knot && knot_pid_ == 0) {
    if (Status s = port_free(base_port_, SOCK_DGRAM); !s) return make_error("Knot DNS: {}", s.error().message);
  }
  return ok_status();
}

Status Testbed::up(std::ostream& progress, std::chrono::seconds limit) {
  if (Status s = check_ports(); !s) return s;
  if (dns_ == TestbedDns::Knot) {
    if (Status s = start_knot(); !s) return s;
  }
  for (TestbedDomain* d : nodes()) {
    if (Status s = start_node(*d); !s) return s;
  }
  for (TestbedDomain* d : nodes()) {
    if (Status s = wait_listening(*d, limit); !s) return s;
    progress << fmt::format("{:<16} pid {:<7} 127.0.0.1:{}  listening\n", d->name, d->pid, d->port);
  }
  return ok_status();
}

Status Testbed::stop_node(TestbedDomain& d, int signal, bool wait) {
  if (!running(d)) {
    d.pid = 0;
    return save();
  }
  ::kill(d.pid, signal);
  if (wait) {
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    bool killed = false;
    while (running(d)) {
      if (std::chrono::steady_clock::now() > until) {
        if (killed) return make_error("{}: pid {} still runs after SIGKILL", d.name, d.pid);
        ::kill(d.pid, SIGKILL);
        killed = true;
        until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    reap_if_child(d.pid);
    d.pid = 0;
  }
  return save();
}

Status Testbed::down(std::chrono::seconds grace) {
  for (TestbedDomain* d : nodes()) {
    if (running(*d)) ::kill(d->pid, SIGTERM);
  }
  auto until = std::chrono::steady_clock::now() + grace;
  auto give_up = until + std::chrono::seconds(10);
  std::vector<std::string> stuck;
  for (TestbedDomain* d : nodes()) {
    while (running(*d)) {
      auto now = std::chrono::steady_clock::now();
      if (now > give_up) break;
      if (now > until) ::kill(d->pid, SIGKILL);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (running(*d)) {
      stuck.push_back(fmt::format("{} (pid {})", d->name, d->pid));
    } else {
      reap_if_child(d->pid);
      d->pid = 0;
    }
  }
  if (!stuck.empty()) {
    (void)save();
    return make_error("still running after SIGKILL: {}", fmt::join(stuck, ", "));
  }
  if (dns_ == TestbedDns::Knot) {
    if (Status s = set_dns_running(false); !s) return s;
  }
  return save();
}

Status Testbed::reload_nodes(std::chrono::milliseconds limit) { return reload(nodes(), limit); }

Status Testbed::reload(const std::vector<TestbedDomain*>& which, std::chrono::milliseconds limit) {
  // A SIGHUP is handled when the node's loop gets to it: wait for each
  // node's "reloaded" line, so that what follows sees the new zones.
  std::vector<std::pair<TestbedDomain*, std::uintmax_t>> signalled;
  for (TestbedDomain* d : which) {
    if (!running(*d)) continue;
    std::error_code ec;
    std::uintmax_t offset = fs::file_size(node_log(*d), ec);
    if (::kill(d->pid, SIGHUP) == 0) signalled.emplace_back(d, ec ? 0 : offset);
  }
  auto until = std::chrono::steady_clock::now() + limit;
  for (auto& [d, offset] : signalled) {
    for (;;) {
      std::ifstream in(node_log(*d));
      in.seekg(static_cast<std::streamoff>(offset));
      std::string line;
      bool reloaded = false;
      while (std::getline(in, line)) {
        if (line.find("reload refused") != std::string::npos) {
          return make_error("{}: {}", d->name, line.substr(0, 400));
        }
        reloaded = reloaded || line.find("info: reloaded ") != std::string::npos;
      }
      if (reloaded) break;
      if (std::chrono::steady_clock::now() > until || !running(*d)) {
        return make_error("{}: no reload seen in {} within {} ms", d->name, node_log(*d).string(), limit.count());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  return ok_status();
}

Status Testbed::publish(const std::vector<std::string>& zones) {
  if (dns_ == TestbedDns::Knot) return knot_publish(*this, zones);
  std::set<std::string> changed(zones.begin(), zones.end());
  std::vector<std::string> list(changed.begin(), changed.end());
  if (Status s = write_zones(list); !s) return s;
  for (TestbedDomain* d : nodes()) {
    if (Status s = write_node_config(*d); !s) return s;
  }
  return reload_nodes();
}

Status Testbed::start_knot() {
  Result<pid_t> pid = knot_start(*this);
  if (!pid) return pid.error();
  knot_pid_ = *pid;
  return save();
}

Status Testbed::set_dns_running(bool run) {
  if (dns_ != TestbedDns::Knot) return make_error("the testbed's DNS is embedded: no server to stop or start");
  if (run) return start_knot();
  if (Status s = knot_stop(*this); !s) return s;
  knot_pid_ = 0;
  return save();
}

Result<json> Testbed::control(const TestbedDomain& d, const json& request) const {
  Result<ControlClient> client = ControlClient::connect(node_socket(d));
  if (!client) return client.error();
  return client->request(request);
}

json Testbed::status() {
  json nodes_json = json::array();
  for (TestbedDomain* d : nodes()) {
    bool alive = running(*d);
    json sessions = json::array();
    bool listening = false;
    if (alive) {
      Result<json> peers = control(*d, {{"command", "peers"}});
      if (peers && peers->value("ok", false)) {
        listening = true;
        for (const json& p : peers->at("peers")) {
          sessions.push_back({{"peer_domain", p.value("peer_domain", "")},
                              {"direction", p.value("direction", "")},
                              {"decision", p.value("decision", "")},
                              {"established", p.value("established", false)},
                              {"key_tag", p.value("key_tag", json(nullptr))}});
        }
      }
    }
    nodes_json.push_back({{"domain", d->name},
                          {"pid", alive ? json(d->pid) : json(nullptr)},
                          {"address", "127.0.0.1"},
                          {"port", d->port},
                          {"listening", listening},
                          {"sessions", sessions}});
  }
  json special = json::array();
  for (const TestbedDomain& d : domains_) {
    if (d.kind != TestbedKind::Node) special.push_back({{"domain", d.name}, {"kind", std::string(to_string(d.kind))}});
  }
  return {{"dir", dir_.string()}, {"dns", std::string(to_string(dns_))}, {"nodes", nodes_json}, {"special", special}};
}

std::string Testbed::dot() {
  json s = status();
  std::string out = "digraph keyfed_testbed {\n  rankdir=LR;\n  node [shape=box, style=rounded, fontname=\"Helvetica\"];\n"
                    "  edge [fontname=\"Helvetica\", fontsize=9];\n";
  std::set<std::string> known;
  for (const json& n : s["nodes"]) {
    std::string domain = n["domain"].get<std::string>();
    known.insert(domain);
    out += fmt::format("  \"{}\" [label=\"{}\\n127.0.0.1:{}\"{}];\n", domain, domain, n["port"].get<int>(),
                       n["listening"].get<bool>() ? "" : ", style=\"rounded,dashed\", color=gray");
  }
  for (const json& sp : s["special"]) {
    out += fmt::format("  \"{}\" [label=\"{}\\n({})\", shape=ellipse, color=gray];\n", sp["domain"].get<std::string>(),
                       sp["domain"].get<std::string>(), sp["kind"].get<std::string>());
  }
  for (const json& n : s["nodes"]) {
    std::string domain = n["domain"].get<std::string>();
    for (const json& session : n["sessions"]) {
      std::string peer = session["peer_domain"].get<std::string>();
      std::string decision = session["decision"].get<std::string>();
      bool outbound = session["direction"] == "outbound";
      // Each session between two testbed nodes appears at both ends: drawn
      // once, from the side that opened it.
      if (!outbound && known.count(peer) != 0) continue;
      // A peer domain name comes from the network: only DNS name characters reach the graph.
      std::string safe;
      for (char c : peer) safe += (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-') ? c : '_';
      std::string color = decision == "authenticated" ? "darkgreen" : decision == "refuse" ? "red" : "orange";
      out += fmt::format("  \"{}\" -> \"{}\" [label=\"{}\", color={}{}];\n", outbound ? domain : safe,
                         outbound ? safe : domain, decision, color,
                         session.value("established", false) ? "" : ", style=dashed");
    }
  }
  out += "}\n";
  return out;
}

}  // namespace keyfed
