#include "tooling/knot_server.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <thread>

#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include "common/c_handles.h"
#include "common/log.h"
#include "tooling/support.h"

namespace keyfed {
namespace {

using LdnsKeyPtr = CPtr<ldns_key, ldns_key_deep_free>;
using LdnsResolverPtr = CPtr<ldns_resolver, ldns_resolver_deep_free>;

namespace fs = std::filesystem;

// The zone directly above `origin` among `zones`, if any.
std::string parent_in(const std::string& origin, const std::vector<std::string>& zones) {
  for (std::size_t dot = origin.find('.'); dot != std::string::npos; dot = origin.find('.', dot + 1)) {
    std::string candidate = origin.substr(dot + 1);
    if (std::find(zones.begin(), zones.end(), candidate) != zones.end()) return candidate;
  }
  return {};
}

struct ZoneKey {
  std::string private_file;  ///< K<zone>.+015+<tag>.private
  std::string ds;            ///< presentation form
};

// An Ed25519 key for `origin` (flags 257; Knot uses it as CSK), written in
// BIND's format (.key and .private, 0600), and its DS (SHA-256).
Result<ZoneKey> make_zone_key(const fs::path& dir, const std::string& origin, std::uint32_t ttl) {
  LdnsKeyPtr key{ldns_key_new_frm_algorithm(LDNS_SIGN_ED25519, 0)};
  if (!key) return make_error("{}: ldns cannot generate an Ed25519 key", origin);
  ldns_key_set_flags(key.get(), LDNS_KEY_ZONE_KEY | LDNS_KEY_SEP_KEY);
  ldns_rdf* owner = ldns_dname_new_frm_str((origin + ".").c_str());
  if (owner == nullptr) return make_error("{}: not a zone name", origin);
  ldns_key_set_pubkey_owner(key.get(), owner);
  LdnsRrPtr dnskey{ldns_key2rr(key.get())};
  if (!dnskey) return make_error("{}: ldns cannot make the DNSKEY", origin);
  ldns_rr_set_ttl(dnskey.get(), ttl);
  std::uint16_t tag = ldns_calc_keytag(dnskey.get());
  ldns_key_set_keytag(key.get(), tag);
  std::string base = fmt::format("K{}.+{:03}+{:05}", origin, 15, tag);
  MallocString dnskey_text{ldns_rr2str(dnskey.get())};
  MallocString private_text{ldns_key2str(key.get())};
  if (!dnskey_text || !private_text) return make_error("{}: ldns cannot print the key", origin);
  if (Status s = write_file_atomic(dir / (base + ".key"), dnskey_text.get(), 0600); !s) return s.error();
  if (Status s = write_file_atomic(dir / (base + ".private"), private_text.get(), 0600); !s) return s.error();
  LdnsRrPtr ds{ldns_key_rr2ds(dnskey.get(), LDNS_SHA256)};
  if (!ds) return make_error("{}: ldns cannot compute the DS", origin);
  ldns_rr_set_ttl(ds.get(), ttl);
  MallocString ds_text{ldns_rr2str(ds.get())};
  std::string ds_line = ds_text.get();
  while (!ds_line.empty() && ds_line.back() == '\n') ds_line.pop_back();
  return ZoneKey{(dir / (base + ".private")).string(), ds_line};
}

std::string knot_conf(const KnotSetup& s, const fs::path& dir, const std::string& secret) {
  std::string zones;
  for (const KnotZone& z : s.zones) {
    zones += fmt::format("  - domain: \"{}.\"\n", z.origin);
    if (!z.sign) zones += "    dnssec-signing: off\n";
  }
  return fmt::format(
      "# Written by keyfed (src/tooling/knot_server.cpp); docs/TESTBED.md, \"Knot DNS\".\n"
      "server:\n"
      "    rundir: \"{dir}/run\"\n"
      "    pidfile: \"{dir}/run/knot.pid\"\n"
      "    listen: {addr}@{port}\n"
      "log:\n"
      "  - target: \"{dir}/knot.log\"\n"
      "    any: info\n"
      "database:\n"
      "    storage: \"{dir}/db\"\n"
      "    kasp-db: \"{dir}/kasp\"\n"
      "key:\n"
      "  - id: \"{tsig}.\"\n"
      "    algorithm: hmac-sha256\n"
      "    secret: {secret}\n"
      "acl:\n"
      "  - id: update\n"
      "    key: \"{tsig}.\"\n"
      "    action: update\n"
      "policy:\n"
      "  - id: keyfed\n"
      "    manual: on\n"
      "    algorithm: ed25519\n"
      "    single-type-signing: on\n"
      "    dnskey-ttl: {ttl}\n"
      "    zone-max-ttl: {ttl}\n"
      "    rrsig-lifetime: 14d\n"
      "    rrsig-refresh: 7d\n"
      "template:\n"
      "  - id: default\n"
      "    storage: \"{dir}/zones\"\n"
      "    file: \"%s.zone\"\n"
      "    dnssec-signing: on\n"
      "    dnssec-policy: keyfed\n"
      "    acl: update\n"
      "    zonefile-sync: -1\n"
      "    zonefile-load: difference-no-serial\n"
      "    journal-content: all\n"
      "zone:\n{zones}",
      fmt::arg("dir", dir.string()), fmt::arg("addr", s.address), fmt::arg("port", s.port),
      fmt::arg("tsig", s.tsig_name), fmt::arg("secret", secret), fmt::arg("ttl", s.ttl),
      fmt::arg("zones", zones));
}

Result<std::string> random_secret() {
  unsigned char bytes[32];
  std::ifstream urandom("/dev/urandom", std::ios::binary);
  if (!urandom.read(reinterpret_cast<char*>(bytes), sizeof bytes)) return make_error("cannot read /dev/urandom");
  unsigned char out[64];
  int n = EVP_EncodeBlock(out, bytes, sizeof bytes);
  if (n <= 0) return make_error("cannot encode the TSIG secret");
  return std::string(reinterpret_cast<const char*>(out), static_cast<std::size_t>(n));
}

bool is_knotd(pid_t pid) {
  Result<std::string> comm = read_small_file(fmt::format("/proc/{}/comm", pid), 256);
  return comm && comm->rfind("knotd", 0) == 0;
}

Result<pid_t> read_pid(const fs::path& file) {
  Result<std::string> text = read_small_file(file, 64);
  if (!text) return text.error();
  try {
    long pid = std::stol(*text);
    if (pid <= 1) return make_error("{}: not a pid", file.string());
    return static_cast<pid_t>(pid);
  } catch (const std::exception&) {
    return make_error("{}: not a pid", file.string());
  }
}

// Every zone answers SOA with an RRSIG over it.
bool zones_signed(const KnotInfo& info) {
  LdnsResolverPtr resolver{ldns_resolver_new()};
  LdnsRdfPtr address{ldns_rdf_new_frm_str(LDNS_RDF_TYPE_A, info.address.c_str())};
  if (!resolver || !address) return false;
  ldns_resolver_push_nameserver(resolver.get(), address.get());
  ldns_resolver_set_port(resolver.get(), static_cast<uint16_t>(info.port));
  ldns_resolver_set_dnssec(resolver.get(), true);
  ldns_resolver_set_recursive(resolver.get(), false);
  ldns_resolver_set_retry(resolver.get(), 1);
  ldns_resolver_set_timeout(resolver.get(), timeval{0, 300000});
  for (const std::string& zone : info.zones) {
    LdnsRdfPtr name{ldns_dname_new_frm_str((zone + ".").c_str())};
    ldns_pkt* raw = nullptr;
    if (ldns_resolver_query_status(&raw, resolver.get(), name.get(), LDNS_RR_TYPE_SOA, LDNS_RR_CLASS_IN,
                                   LDNS_RD) != LDNS_STATUS_OK) {
      ldns_pkt_free(raw);
      return false;
    }
    LdnsPktPtr answer{raw};
    if (!answer || ldns_pkt_get_rcode(answer.get()) != LDNS_RCODE_NOERROR) return false;
    if (std::find(info.unsigned_zones.begin(), info.unsigned_zones.end(), zone) != info.unsigned_zones.end()) {
      LdnsRrListPtr soa{ldns_pkt_rr_list_by_type(answer.get(), LDNS_RR_TYPE_SOA, LDNS_SECTION_ANSWER)};
      if (!soa || ldns_rr_list_rr_count(soa.get()) == 0) return false;
      continue;
    }
    LdnsRrListPtr sigs{ldns_pkt_rr_list_by_type(answer.get(), LDNS_RR_TYPE_RRSIG, LDNS_SECTION_ANSWER)};
    if (!sigs || ldns_rr_list_rr_count(sigs.get()) == 0) return false;
  }
  return true;
}

std::string log_tail(const KnotInfo& info) {
  std::string text;
  for (const fs::path& f : {info.log_file, info.dir / "knotd.stderr"}) {
    Result<std::string> t = read_small_file(f, 1 << 22);
    if (t) text += *t;
  }
  if (text.size() > 1500) text = text.substr(text.size() - 1500);
  return text;
}

}  // namespace

std::string KnotInfo::server() const { return fmt::format("{}@{}", address, port); }

Result<fs::path> find_knot_program(const std::string& name) {
  std::vector<fs::path> dirs;
  if (const char* path = std::getenv("PATH")) {
    std::string p = path;
    for (std::size_t start = 0;;) {
      std::size_t colon = p.find(':', start);
      dirs.emplace_back(p.substr(start, colon - start));
      if (colon == std::string::npos) break;
      start = colon + 1;
    }
  }
  dirs.emplace_back("/usr/sbin");
  dirs.emplace_back("/usr/bin");
  for (const fs::path& d : dirs) {
    if (d.empty()) continue;
    fs::path candidate = d / name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return make_error("{} not found on PATH nor in /usr/sbin: install Knot DNS (Debian package knot)", name);
}

Result<KnotInfo> write_knot_setup(const KnotSetup& given) {
  KnotSetup setup = given;
  if (setup.zones.empty()) return make_error("a Knot setup needs at least one zone");
  Result<fs::path> keymgr = find_knot_program("keymgr");
  if (!keymgr) return keymgr.error();
  if (Result<fs::path> knotd = find_knot_program("knotd"); !knotd) return knotd.error();
  std::error_code ec;
  fs::create_directories(setup.dir, ec);
  if (ec) return make_error("{}: cannot create: {}", setup.dir.string(), ec.message());
  const fs::path dir = fs::absolute(setup.dir).lexically_normal();
  if (Result<pid_t> pid = read_pid(dir / "knotd.pid"); pid && ::kill(*pid, 0) == 0 && is_knotd(*pid)) {
    return make_error("{}: a knotd (pid {}) runs there; stop it first", dir.string(), *pid);
  }
  if (setup.port == 0) {
    Result<int> port = pick_free_port(setup.address);
    if (!port) return port.error();
    setup.port = *port;
  }
  for (const char* sub : {"keys", "kasp", "db", "run", "zones"}) fs::remove_all(dir / sub, ec);
  for (const char* sub : {"keys", "kasp", "db", "run", "zones"}) {
    fs::create_directories(dir / sub, ec);
    if (ec) return make_error("{}: cannot create: {}", (dir / sub).string(), ec.message());
    fs::permissions(dir / sub, fs::perms::owner_all, ec);
  }
  fs::remove(dir / "knot.log", ec);

  std::vector<std::string> names;
  for (KnotZone& z : setup.zones) {
    while (!z.origin.empty() && z.origin.back() == '.') z.origin.pop_back();
    std::transform(z.origin.begin(), z.origin.end(), z.origin.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (z.origin.empty()) return make_error("a Knot zone needs an origin (the root is not supported)");
    if (std::find(names.begin(), names.end(), z.origin) != names.end()) {
      return make_error("zone {} is listed twice", z.origin);
    }
    names.push_back(z.origin);
  }
  Result<std::string> secret = random_secret();
  if (!secret) return secret.error();

  std::map<std::string, ZoneKey> keys;
  std::vector<std::string> unsigned_zones;
  for (const KnotZone& z : setup.zones) {
    if (!z.sign) unsigned_zones.push_back(z.origin);
  }
  auto is_signed = [&](const std::string& origin) {
    return std::find(unsigned_zones.begin(), unsigned_zones.end(), origin) == unsigned_zones.end();
  };
  for (const std::string& origin : names) {
    if (!is_signed(origin)) continue;
    Result<ZoneKey> key = make_zone_key(dir / "keys", origin, setup.ttl);
    if (!key) return key.error();
    keys[origin] = *key;
  }
  KnotInfo info;
  info.dir = dir;
  info.address = setup.address;
  info.port = setup.port;
  info.zones = names;
  info.unsigned_zones = unsigned_zones;
  info.config = dir / "knot.conf";
  info.trust_anchor = dir / "trust-anchor.ds";
  info.tsig_file = dir / "tsig.key";
  info.pid_file = dir / "knotd.pid";
  info.log_file = dir / "knot.log";

  std::string anchors;
  for (const KnotZone& z : setup.zones) {
    std::string text = fmt::format(
        "$ORIGIN {0}.\n$TTL {1}\n@ SOA ns.{0}. hostmaster.{0}. 1 60 60 3600 {1}\n@ NS ns.{0}.\nns A {2}\n", z.origin,
        setup.ttl, setup.address);
    for (const std::string& child : names) {
      if (parent_in(child, names) != z.origin) continue;
      text += fmt::format("{0}. NS ns.{0}.\nns.{0}. A {1}\n", child, setup.address);
      if (is_signed(child)) text += keys[child].ds + "\n";
    }
    text += z.records;
    if (!text.empty() && text.back() != '\n') text += '\n';
    if (Status s = write_file_atomic(dir / "zones" / (z.origin + ".zone"), text, 0600); !s) return s.error();
    if (parent_in(z.origin, names).empty() && is_signed(z.origin)) anchors += keys[z.origin].ds + "\n";
  }
  if (Status s = write_file_atomic(info.trust_anchor, anchors, 0644); !s) return s.error();
  if (Status s = write_file_atomic(info.tsig_file,
                                   fmt::format("key \"{}\" {{\n    algorithm hmac-sha256;\n    secret \"{}\";\n}};\n",
                                               setup.tsig_name, *secret),
                                   0600);
      !s) {
    return s.error();
  }
  if (Status s = write_file_atomic(info.config, knot_conf(setup, dir, *secret), 0600); !s) return s.error();

  // Import each zone key into the KASP and make it a CSK (KSK and ZSK): with
  // `manual: on` Knot signs with exactly this key and never rolls it.
  for (const std::string& origin : names) {
    if (!is_signed(origin)) continue;
    const std::string zone = origin + ".";
    Result<std::string> imported =
        run_program({keymgr->string(), "-c", info.config.string(), zone, "import-bind", keys[origin].private_file});
    if (!imported) return make_error("keymgr import-bind for {}: {}", origin, imported.error().message);
    std::string id = *imported;
    id.erase(id.find_first_of(" \r\n") == std::string::npos ? id.size() : id.find_first_of(" \r\n"));
    Result<std::string> set =
        run_program({keymgr->string(), "-c", info.config.string(), zone, "set", id, "ksk=yes", "zsk=yes"});
    if (!set) return make_error("keymgr set for {}: {}", origin, set.error().message);
  }

  nlohmann::json manifest = {{"address", info.address},
                             {"port", info.port},
                             {"zones", info.zones},
                             {"unsigned_zones", info.unsigned_zones}};
  if (Status s = write_file_atomic(dir / "setup.json", manifest.dump(2) + "\n", 0644); !s) return s.error();
  return info;
}

Result<KnotInfo> read_knot_setup(const fs::path& given) {
  const fs::path dir = fs::absolute(given).lexically_normal();
  Result<std::string> text = read_small_file(dir / "setup.json");
  if (!text) return text.error();
  KnotInfo info;
  try {
    nlohmann::json j = nlohmann::json::parse(*text);
    info.address = j.at("address").get<std::string>();
    info.port = j.at("port").get<int>();
    info.zones = j.at("zones").get<std::vector<std::string>>();
    info.unsigned_zones = j.value("unsigned_zones", std::vector<std::string>{});
  } catch (const std::exception& e) {
    return make_error("{}: not a Knot setup: {}", (dir / "setup.json").string(), e.what());
  }
  info.dir = dir;
  info.config = dir / "knot.conf";
  info.trust_anchor = dir / "trust-anchor.ds";
  info.tsig_file = dir / "tsig.key";
  info.pid_file = dir / "knotd.pid";
  info.log_file = dir / "knot.log";
  return info;
}

Result<pid_t> start_knot(const fs::path& dir, std::chrono::milliseconds timeout) {
  Result<KnotInfo> info = read_knot_setup(dir);
  if (!info) return info.error();
  Result<fs::path> knotd = find_knot_program("knotd");
  if (!knotd) return knotd.error();
  if (Result<pid_t> running = read_pid(info->pid_file); running && ::kill(*running, 0) == 0 && is_knotd(*running)) {
    return *running;
  }
  const std::string stderr_file = (info->dir / "knotd.stderr").string();
  pid_t pid = ::fork();
  if (pid < 0) return make_error("fork: {}", std::strerror(errno));
  if (pid == 0) {
    ::setsid();  // its own session: no terminal signal of ours reaches it
    int null = ::open("/dev/null", O_RDWR);
    int err = ::open(stderr_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ::dup2(null, 0);
    ::dup2(null, 1);
    ::dup2(err >= 0 ? err : null, 2);
    ::close_range(3, ~0U, 0);
    ::signal(SIGPIPE, SIG_DFL);
    const std::string conf = info->config.string();
    const std::string program = knotd->string();
    ::execl(program.c_str(), program.c_str(), "-c", conf.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  if (Status s = write_file_atomic(info->pid_file, fmt::format("{}\n", pid), 0644); !s) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    return s.error();
  }
  auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      std::error_code ec;
      fs::remove(info->pid_file, ec);
      return make_error("knotd exited at start (status {}): {}", WIFEXITED(status) ? WEXITSTATUS(status) : -1,
                        untrusted(log_tail(*info), 1500));
    }
    if (zones_signed(*info)) return pid;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::string tail = log_tail(*info);
  (void)stop_knot(dir);
  return make_error("knotd did not serve every zone signed within {} ms: {}", timeout.count(),
                    untrusted(tail, 1500));
}

Status stop_knot(const fs::path& given, std::chrono::milliseconds timeout) {
  const fs::path pid_file = fs::absolute(given).lexically_normal() / "knotd.pid";
  Result<pid_t> pid = read_pid(pid_file);
  std::error_code ec;
  if (!pid) {
    if (!fs::exists(pid_file, ec)) return ok_status();
    return pid.error();
  }
  auto gone = [&] {
    ::waitpid(*pid, nullptr, WNOHANG);  // reaps it if it is our child
    return ::kill(*pid, 0) != 0 || !is_knotd(*pid);
  };
  if (!gone()) {
    ::kill(*pid, SIGTERM);
    auto until = std::chrono::steady_clock::now() + timeout;
    while (!gone() && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!gone()) {
      ::kill(*pid, SIGKILL);
      while (!gone()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  fs::remove(pid_file, ec);
  return ok_status();
}

Result<std::unique_ptr<KnotServer>> KnotServer::start(const KnotSetup& setup) {
  Result<KnotInfo> info = write_knot_setup(setup);
  if (!info) return info.error();
  Result<pid_t> pid = start_knot(info->dir);
  if (!pid) return pid.error();
  return std::unique_ptr<KnotServer>(new KnotServer(std::move(info).value(), *pid));
}

KnotServer::~KnotServer() { (void)stop_knot(info_.dir); }

}  // namespace keyfed
