#include "tooling/check.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <memory>
#include <optional>
#include <span>

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <openssl/sha.h>

#include "common/log.h"
#include "common/openssl_call.h"
#include "config/node_config.h"
#include "daemon/daemon.h"
#include "dnskey/domain_name.h"
#include "federation/discovery.h"
#include "federation/frames.h"
#include "federation/identity.h"
#include "federation/policy.h"
#include "federation/tls_context.h"

namespace keyfed {
namespace {

using Clock = std::chrono::steady_clock;

// ---- findings ---------------------------------------------------------------

Finding error(Problem problem, std::string detail) { return Finding{problem, Severity::Error, std::move(detail)}; }
Finding warning(Problem problem, std::string detail) {
  return Finding{problem, Severity::Warning, std::move(detail)};
}

bool is_dns_status(CheckStatus s) { return s >= CheckStatus::TempFail && s <= CheckStatus::Bogus; }

// Higher is more fundamental (docs/CLI.md, "keyfed check", exit status).
int rank(CheckStatus s) {
  int value = static_cast<int>(s);
  if (is_dns_status(s)) return 3000 + value;          // 6 bogus > 5 > 4 > 3 temp-fail, as lookup
  if (value >= 10) return 2000 - value;               // 10 no-keys > 11 > ... > 15
  if (s == CheckStatus::BadInput) return 1000;
  return value;                                       // 1 warnings > 0 ok
}

std::string duration_text(std::int64_t seconds) {
  if (seconds >= 2 * 86400) return fmt::format("{} days", seconds / 86400);
  if (seconds >= 2 * 3600) return fmt::format("{} hours", seconds / 3600);
  return fmt::format("{} minutes", std::max<std::int64_t>(seconds / 60, 0));
}

std::string utc_text(std::int64_t unix_seconds) {
  std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  return fmt::format("{:%Y-%m-%dT%H:%M:%SZ}", tm);
}

std::string spki_sha256_hex(std::span<const std::uint8_t> spki) {
  std::array<std::uint8_t, SHA256_DIGEST_LENGTH> digest{};
  openssl_call([&] { return SHA256(spki.data(), spki.size(), digest.data()); });
  return to_hex(digest);
}

// ---- probing one server -----------------------------------------------------

enum class ProbeResult { Authenticated, Unreachable, TlsFailed, WrongKey };

struct Probe {
  ProbeResult result = ProbeResult::Unreachable;
  std::string detail;
};

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

int remaining_ms(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<long long>(left, 0, 600000));
}

// Waits for `events` on fd until the deadline; false on timeout.
bool wait_for(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int n = ::poll(&p, 1, remaining_ms(deadline));
    if (n > 0) return true;
    if (n == 0) return false;
    if (errno != EINTR) return false;
  }
}

// A non-blocking TCP connection to address:port, established by the deadline.
Result<int> connect_to(const ServerAddress& server, Clock::time_point deadline, std::chrono::milliseconds timeout) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  std::string port = std::to_string(server.port);
  if (::getaddrinfo(server.address.c_str(), port.c_str(), &hints, &found) != 0 || found == nullptr) {
    return make_error("{} is not a numeric address", untrusted(server.address));
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> info(found, ::freeaddrinfo);
  int fd = ::socket(info->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error("cannot create a socket: {}", std::strerror(errno));
  Fd owner{fd};
  if (::connect(fd, info->ai_addr, info->ai_addrlen) != 0) {
    if (errno != EINPROGRESS) return make_error("{}", std::strerror(errno));
    if (!wait_for(fd, POLLOUT, deadline)) return make_error("no answer within {} ms", timeout.count());
    int err = 0;
    socklen_t len = sizeof err;
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err != 0) return make_error("{}", std::strerror(err));
  }
  owner.fd = -1;
  return fd;
}

// Moves what TLS wrote to the socket (never raising SIGPIPE).
bool flush(int fd, BIO* out, Clock::time_point deadline) {
  std::array<char, 16384> buffer{};
  for (;;) {
    int n = BIO_read(out, buffer.data(), static_cast<int>(buffer.size()));
    if (n <= 0) return true;
    int sent = 0;
    while (sent < n) {
      ssize_t w = ::send(fd, buffer.data() + sent, static_cast<std::size_t>(n - sent), MSG_NOSIGNAL);
      if (w > 0) {
        sent += static_cast<int>(w);
      } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        if (!wait_for(fd, POLLOUT, deadline)) return false;
      } else {
        return false;
      }
    }
  }
}

// Connects, completes a TLS 1.3 handshake as a node's client would (SNI the
// domain, ALPN keyfed/2, no client certificate: in TLS 1.3 the server's
// certificate comes first), and judges the presented key with the node's
// own rule (decide(): the SPKI among the validated keys).
Probe probe(SSL_CTX* ctx, const CheckSettings& settings, const DomainKeys& answer, const ServerAddress& server) {
  auto connect_deadline = Clock::now() + settings.connect_timeout;
  Result<int> connected = connect_to(server, connect_deadline, settings.connect_timeout);
  if (!connected) return {ProbeResult::Unreachable, connected.error().message};
  Fd fd{*connected};

  auto deadline = Clock::now() + settings.handshake_timeout;
  SslPtr ssl(openssl_call([&] { return SSL_new(ctx); }));
  if (!ssl) return {ProbeResult::TlsFailed, "cannot create a TLS session"};
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  if (in == nullptr || out == nullptr) {
    BIO_free(in);
    BIO_free(out);
    return {ProbeResult::TlsFailed, "cannot create TLS buffers"};
  }
  BIO_set_mem_eof_return(in, -1);
  SSL_set_bio(ssl.get(), in, out);
  SSL_set_connect_state(ssl.get());
  if (Status s = openssl_check("cannot name the domain (SNI)",
                               [&] { return SSL_set_tlsext_host_name(ssl.get(), answer.domain.c_str()); });
      !s) {
    return {ProbeResult::TlsFailed, s.error().message};
  }
  for (;;) {
    SslIo io = ssl_io(ssl.get(), [&] { return SSL_do_handshake(ssl.get()); });
    bool flushed = flush(fd.fd, out, deadline);
    if (io.result == 1) break;
    if (!io.would_block()) return {ProbeResult::TlsFailed, fmt::format("TLS handshake failed: {}", io.reason)};
    if (!flushed) return {ProbeResult::TlsFailed, "the connection broke during the TLS handshake"};
    if (!wait_for(fd.fd, POLLIN, deadline)) {
      return {ProbeResult::TlsFailed, fmt::format("no TLS handshake within {} ms", settings.handshake_timeout.count())};
    }
    std::array<char, 16384> buffer{};
    ssize_t n = ::recv(fd.fd, buffer.data(), buffer.size(), 0);
    if (n == 0) return {ProbeResult::TlsFailed, "the server closed the connection during the TLS handshake"};
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
      return {ProbeResult::TlsFailed, fmt::format("TLS handshake: {}", std::strerror(errno))};
    }
    BIO_write(in, buffer.data(), static_cast<int>(n));
  }

  const unsigned char* alpn = nullptr;
  unsigned int alpn_len = 0;
  SSL_get0_alpn_selected(ssl.get(), &alpn, &alpn_len);
  std::string_view selected(reinterpret_cast<const char*>(alpn), alpn != nullptr ? alpn_len : 0);
  Probe out_probe;
  if (selected != kAlpnProtocol) {
    out_probe = {ProbeResult::TlsFailed,
                 fmt::format("the server did not select ALPN {} (it chose {})", kAlpnProtocol, untrusted(selected))};
  } else {
    std::vector<std::uint8_t> spki =
        certificate_spki(openssl_call([&] { return SSL_get0_peer_certificate(ssl.get()); }));
    PolicyVerdict verdict = decide(PolicyConfig{}, Direction::Outbound, answer, spki);
    if (verdict.decision == Decision::Authenticated && verdict.key) {
      out_probe = {ProbeResult::Authenticated, fmt::format("key tag {}", verdict.key->key_tag)};
    } else {
      out_probe = {ProbeResult::WrongKey,
                   fmt::format("presents a key (spki-sha256 {}) that is not one of the {} key(s) {} publishes",
                               spki.empty() ? std::string("none") : spki_sha256_hex(spki), answer.keys.size(),
                               answer.domain)};
    }
  }
  ssl_io(ssl.get(), [&] { return SSL_shutdown(ssl.get()); });  // close_notify; the answer is not awaited
  flush(fd.fd, out, std::min(deadline, Clock::now() + std::chrono::milliseconds(200)));
  return out_probe;
}

// The host comes from DNS (quoted); the address is ldns's own rendering of an
// A or AAAA record, a numeric literal.
std::string server_text(const ServerAddress& server) {
  bool v6 = server.address.find(':') != std::string::npos;
  return fmt::format("{} at {}{}{}:{}", untrusted(server.host), v6 ? "[" : "", server.address, v6 ? "]" : "",
                     server.port);
}

// ---- one domain -------------------------------------------------------------

struct DomainWork {
  std::shared_ptr<const CachedKeys> keys;
  bool discovering = false;
  std::optional<Result<DiscoveredServers>> servers;
  DiscoveryFailure failure = DiscoveryFailure::None;
};

void judge_dns(const DomainKeys& a, DomainReport& report) {
  switch (a.outcome) {
    case DnsOutcome::Keys: return;
    case DnsOutcome::TempFail:
      report.findings.push_back(error(Problem::TempFail, fmt::format("KEY lookup: {}", untrusted(a.reason, 400))));
      return;
    case DnsOutcome::Insecure:
      report.findings.push_back(error(Problem::Insecure, fmt::format("KEY lookup: {}", untrusted(a.reason, 400))));
      return;
    case DnsOutcome::Unusable:
      report.findings.push_back(error(Problem::Unusable, fmt::format("KEY lookup: {}", untrusted(a.reason, 400))));
      return;
    case DnsOutcome::Bogus:
      report.findings.push_back(error(Problem::Bogus, fmt::format("KEY lookup: {}", untrusted(a.reason, 400))));
      return;
    case DnsOutcome::NoKeys:
      report.findings.push_back(error(
          Problem::NoKeys, fmt::format("{} publishes no KEY RRset ({})", key_owner_name(a.domain), a.reason)));
      return;
  }
}

void judge_publication(const CheckSettings& settings, const DomainKeys& a, const std::vector<OwnKey>& own,
                       DomainReport& report) {
  for (const OwnKey& key : own) {
    PolicyVerdict verdict = decide(PolicyConfig{}, Direction::Outbound, a, key.public_key.spki_der);
    if (verdict.decision != Decision::Authenticated) {
      report.findings.push_back(error(
          Problem::KeyNotPublished,
          fmt::format("the key of {} (tag {}, spki-sha256 {}) is not among the {} validated key(s); publish {}",
                      untrusted(key.file.string()), key.public_key.key_tag, key.public_key.spki_sha256,
                      a.keys.size(), key_record_text(a.domain, key.public_key, a.ttl > 0 ? a.ttl : 300))));
    }
  }
  auto now = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch());
  if (a.signatures_expire != 0) {
    std::int64_t left = a.signatures_expire - now.count();
    if (left < settings.warn_before.count()) {
      report.findings.push_back(warning(
          Problem::SignaturesExpiring,
          fmt::format("the RRSIG over the KEY RRset (signer {}) expires {}, in {} (warning under {} days): re-sign "
                      "the zone",
                      untrusted(a.signer), utc_text(a.signatures_expire), duration_text(left),
                      settings.warn_before.count() / 86400)));
    }
  }
  auto min_ttl = static_cast<std::uint32_t>(settings.key_cache.min_ttl.count());
  auto max_ttl = static_cast<std::uint32_t>(settings.key_cache.max_ttl.count());
  if (a.ttl < min_ttl) {
    report.findings.push_back(warning(
        Problem::TtlTooLow, fmt::format("KEY TTL {} s is under the key cache's min_ttl {} s: peers keep the keys "
                                        "{} s, so a removed key stays accepted that long",
                                        a.ttl, min_ttl, min_ttl)));
  } else if (a.ttl > max_ttl) {
    report.findings.push_back(warning(
        Problem::TtlTooHigh, fmt::format("KEY TTL {} s is over the key cache's max_ttl {} s: peers re-ask every {} s",
                                         a.ttl, max_ttl, max_ttl)));
  }
}

void judge_service(SSL_CTX* ctx, const CheckSettings& settings, const DomainKeys& a, const DomainWork& work,
                   DomainReport& report, std::size_t& authenticated, std::size_t& probed) {
  const Result<DiscoveredServers>& found = *work.servers;
  if (!found) {
    std::string detail = fmt::format("discovery: {}", untrusted(found.error().message, 400));
    switch (work.failure) {
      case DiscoveryFailure::Bogus: report.findings.push_back(error(Problem::Bogus, detail)); return;
      case DiscoveryFailure::TempFail: report.findings.push_back(error(Problem::TempFail, detail)); return;
      case DiscoveryFailure::NoService:
      case DiscoveryFailure::NoAddress:
      case DiscoveryFailure::None: report.findings.push_back(error(Problem::NoServer, detail)); return;
    }
    return;
  }
  std::vector<Finding> failures;
  for (const ServerAddress& server : found->servers) {
    ++probed;
    Probe p = probe(ctx, settings, a, server);
    switch (p.result) {
      case ProbeResult::Authenticated: ++authenticated; break;
      case ProbeResult::Unreachable:
        failures.push_back(error(Problem::ServerUnreachable, fmt::format("{}: {}", server_text(server), p.detail)));
        break;
      case ProbeResult::TlsFailed:
        failures.push_back(error(Problem::ServerTlsFailed, fmt::format("{}: {}", server_text(server), p.detail)));
        break;
      case ProbeResult::WrongKey:
        failures.push_back(error(Problem::ServerWrongKey, fmt::format("{}: {}", server_text(server), p.detail)));
        break;
    }
  }
  for (Finding& f : failures) {
    // A server that cannot be reached while another one authenticates costs
    // peers a detour, not the federation: a warning. A wrong key never is.
    if (authenticated > 0 && f.problem != Problem::ServerWrongKey) {
      f.severity = Severity::Warning;
      f.detail += fmt::format(" ({} other server(s) authenticate)", authenticated);
    }
    report.findings.push_back(std::move(f));
  }
}

std::string plural(std::size_t n, std::string_view word) {
  return fmt::format("{} {}{}", n, word, n == 1 ? "" : "s");
}

}  // namespace

// ---- words and statuses -------------------------------------------------------

std::string_view to_string(Problem problem) {
  switch (problem) {
    case Problem::TempFail: return "temp-fail";
    case Problem::Insecure: return "insecure";
    case Problem::Unusable: return "unusable";
    case Problem::Bogus: return "bogus";
    case Problem::NoKeys: return "no-keys";
    case Problem::KeyNotPublished: return "key-not-published";
    case Problem::NoServer: return "no-server";
    case Problem::ServerUnreachable: return "server-unreachable";
    case Problem::ServerWrongKey: return "server-wrong-key";
    case Problem::ServerTlsFailed: return "server-tls-failed";
    case Problem::SignaturesExpiring: return "signatures-expiring";
    case Problem::TtlTooLow: return "ttl-too-low";
    case Problem::TtlTooHigh: return "ttl-too-high";
  }
  return "unknown";
}

std::string_view to_string(Severity severity) { return severity == Severity::Error ? "error" : "warning"; }

CheckStatus status_of(Problem problem) {
  switch (problem) {
    case Problem::TempFail: return CheckStatus::TempFail;
    case Problem::Insecure: return CheckStatus::Insecure;
    case Problem::Unusable: return CheckStatus::Unusable;
    case Problem::Bogus: return CheckStatus::Bogus;
    case Problem::NoKeys: return CheckStatus::NoKeys;
    case Problem::KeyNotPublished: return CheckStatus::KeyNotPublished;
    case Problem::NoServer: return CheckStatus::NoServer;
    case Problem::ServerUnreachable: return CheckStatus::ServerUnreachable;
    case Problem::ServerWrongKey: return CheckStatus::ServerWrongKey;
    case Problem::ServerTlsFailed: return CheckStatus::ServerTlsFailed;
    case Problem::SignaturesExpiring:
    case Problem::TtlTooLow:
    case Problem::TtlTooHigh: return CheckStatus::Warnings;
  }
  return CheckStatus::Warnings;
}

CheckStatus most_fundamental(CheckStatus a, CheckStatus b) { return rank(a) >= rank(b) ? a : b; }

CheckStatus DomainReport::status() const {
  CheckStatus out = CheckStatus::Ok;
  for (const Finding& f : findings) {
    out = most_fundamental(out, f.severity == Severity::Error ? status_of(f.problem) : CheckStatus::Warnings);
  }
  return out;
}

CheckStatus overall_status(const std::vector<DomainReport>& reports) {
  CheckStatus out = CheckStatus::Ok;
  for (const DomainReport& r : reports) out = most_fundamental(out, r.status());
  return out;
}

Result<OwnKey> load_own_key(const std::string& domain, const std::filesystem::path& file) {
  Result<DomainIdentity> identity = load_domain_identity(domain, file);
  if (!identity) return identity.error();
  return OwnKey{file, identity->public_key};
}

// ---- the check ----------------------------------------------------------------

Result<std::vector<DomainReport>> run_check(const CheckSettings& settings, const std::vector<std::string>& domains,
                                            const OwnKeys& own_keys) {
  Result<SslCtxPtr> ctx = make_client_context();
  if (!ctx) return ctx.error();

  NodeConfig config;
  config.resolver = settings.resolver;
  config.key_cache = settings.key_cache;
  Reactor reactor;  // the resolver and cache only, as `lookup`
  if (Status s = reactor.start(std::move(config), DaemonParts::Keys); !s) return s.error();

  // 1. Every domain's KEY RRset, as the node's key cache gets it.
  std::vector<DomainWork> work(domains.size());
  std::size_t remaining = domains.size();
  for (std::size_t i = 0; i < domains.size(); ++i) {
    reactor.daemon().cache().lookup(domains[i], [&, i](std::shared_ptr<const CachedKeys> entry) {
      work[i].keys = std::move(entry);
      --remaining;
    });
  }
  if (!reactor.run_until([&] { return remaining == 0; })) return make_error("a lookup ended without an answer");

  // 2. Discovery, as the node does it, for every domain with keys to judge servers by.
  Discovery discovery(reactor.daemon().resolver(), settings.default_port);
  for (std::size_t i = 0; i < domains.size(); ++i) {
    if (work[i].keys->answer.outcome != DnsOutcome::Keys) continue;
    work[i].discovering = true;
    ++remaining;
    discovery.discover(domains[i], Discovery::DetailedCallback(
                                       [&, i](Result<DiscoveredServers> found, DiscoveryFailure failure) {
                                         work[i].servers.emplace(std::move(found));
                                         work[i].failure = failure;
                                         --remaining;
                                       }));
  }
  if (!reactor.run_until([&] { return remaining == 0; })) return make_error("a discovery ended without an answer");

  // 3. Judge: DNS, then publication, then the servers (probed one at a time,
  //    each within the connect and handshake deadlines).
  std::vector<DomainReport> reports;
  for (std::size_t i = 0; i < domains.size(); ++i) {
    const DomainKeys& a = work[i].keys->answer;
    DomainReport report;
    report.domain = domains[i];
    judge_dns(a, report);
    if (a.outcome == DnsOutcome::Keys) {
      static const std::vector<OwnKey> kNone;
      const std::vector<OwnKey>& own = i < own_keys.size() ? own_keys[i] : kNone;
      judge_publication(settings, a, own, report);
      std::size_t authenticated = 0, probed = 0;
      judge_service(ctx->get(), settings, a, work[i], report, authenticated, probed);
      auto now = std::chrono::duration_cast<std::chrono::seconds>(
          std::chrono::system_clock::now().time_since_epoch());
      report.summary = fmt::format(
          "{} validated, {}{}, signatures valid for {}, {} of {} authenticate",
          plural(a.keys.size(), "key"), own.empty() ? "no own key given" : plural(own.size(), "own key"),
          own.empty() ? "" : " published", duration_text(a.signatures_expire - now.count()),
          authenticated, plural(probed, "server"));
    }
    reports.push_back(std::move(report));
  }
  return reports;
}

// ---- output -------------------------------------------------------------------

std::string check_report_text(const std::vector<DomainReport>& reports) {
  std::string out;
  for (const DomainReport& r : reports) {
    if (r.findings.empty()) {
      out += fmt::format("{} ok: {}\n", r.domain, escape_text(r.summary));
      continue;
    }
    for (const Finding& f : r.findings) {
      out += fmt::format("{} {} {}: {}\n", r.domain, to_string(f.severity), to_string(f.problem),
                         escape_text(f.detail));
    }
  }
  return out;
}

nlohmann::json check_report_json(const std::vector<DomainReport>& reports) {
  nlohmann::json out = nlohmann::json::array();
  for (const DomainReport& r : reports) {
    nlohmann::json findings = nlohmann::json::array();
    for (const Finding& f : r.findings) {
      findings.push_back({{"problem", to_string(f.problem)},
                          {"severity", to_string(f.severity)},
                          {"detail", escape_text(f.detail)}});
    }
    out.push_back({{"domain", r.domain}, {"status", static_cast<int>(r.status())}, {"findings", findings}});
  }
  return out;
}

}  // namespace keyfed
