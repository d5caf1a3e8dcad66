#include "tooling/dns_update.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <regex>

#include "common/c_handles.h"
#include "common/log.h"

namespace keyfed {
namespace {

using LdnsResolverPtr = CPtr<ldns_resolver, ldns_resolver_deep_free>;

const char* const kAlgorithms[] = {"hmac-md5", "hmac-sha1", "hmac-sha224", "hmac-sha256", "hmac-sha384",
                                   "hmac-sha512"};

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

Result<TsigKey> checked(TsigKey key, const std::string& origin) {
  key.algorithm = lower(key.algorithm);
  if (key.algorithm == "hmac-md5.sig-alg.reg.int") key.algorithm = "hmac-md5";
  if (std::find(std::begin(kAlgorithms), std::end(kAlgorithms), key.algorithm) == std::end(kAlgorithms)) {
    return make_error("{}: unsupported TSIG algorithm {} (hmac-sha256, hmac-sha384, hmac-sha512, hmac-sha224, "
                      "hmac-sha1, hmac-md5)",
                      origin, untrusted(key.algorithm));
  }
  while (!key.name.empty() && key.name.back() == '.') key.name.pop_back();
  static const std::regex name_re{R"([A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*)"};
  if (key.name.empty() || key.name.size() > 253 || !std::regex_match(key.name, name_re)) {
    return make_error("{}: the TSIG key name {} is not a domain name", origin, untrusted(key.name));
  }
  // The secret must be base64 of at least one byte; never quoted in errors.
  static const std::regex b64_re{R"([A-Za-z0-9+/]+={0,2})"};
  if (key.secret.size() < 4 || key.secret.size() % 4 != 0 || !std::regex_match(key.secret, b64_re)) {
    return make_error("{}: the TSIG secret of key {} is not base64", origin, key.name);
  }
  return key;
}

}  // namespace

Result<TsigKey> parse_tsig_key(std::string_view text, const std::string& origin) {
  // Comments (#, //) to the end of the line are dropped first.
  std::string clean;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '#' || (text[i] == '/' && i + 1 < text.size() && text[i + 1] == '/')) {
      while (i < text.size() && text[i] != '\n') ++i;
      if (i < text.size()) clean += '\n';
      continue;
    }
    clean += text[i];
  }
  std::string trimmed = clean;
  trimmed.erase(0, trimmed.find_first_not_of(" \t\r\n"));
  trimmed.erase(trimmed.find_last_not_of(" \t\r\n") + 1);
  if (trimmed.empty()) return make_error("{}: no TSIG key in the file", origin);

  if (trimmed.rfind("key", 0) == 0) {
    static const std::regex block_re{
        R"re(^key\s+"?([^"\s{]+)"?\s*\{([^}]*)\}\s*;?$)re"};
    std::smatch m;
    if (!std::regex_match(trimmed, m, block_re)) {
      return make_error("{}: expected exactly one key \"NAME\" {{ algorithm ALG; secret \"BASE64\"; }};", origin);
    }
    TsigKey key;
    key.name = m[1];
    std::string body = m[2];
    static const std::regex stmt_re{R"re(\s*([A-Za-z-]+)\s+"?([^";\s]+)"?\s*;)re"};
    auto begin = std::sregex_iterator(body.begin(), body.end(), stmt_re);
    std::size_t consumed = 0;
    for (auto it = begin; it != std::sregex_iterator(); ++it) {
      if (static_cast<std::size_t>(it->position()) != consumed) break;
      consumed += it->length();
      std::string what = lower((*it)[1]);
      if (what == "algorithm") key.algorithm = (*it)[2];
      else if (what == "secret") key.secret = (*it)[2];
      else return make_error("{}: unknown statement {} in the key block", origin, untrusted(what));
    }
    if (body.find_first_not_of(" \t\r\n", consumed) != std::string::npos) {
      return make_error("{}: malformed key block (each statement: NAME VALUE;)", origin);
    }
    if (key.algorithm.empty() || key.secret.empty()) {
      return make_error("{}: the key block needs both algorithm and secret", origin);
    }
    return checked(std::move(key), origin);
  }
  // ALG:NAME:SECRET (the algorithm may be left out: hmac-sha256, as knsupdate does).
  if (trimmed.find_first_of(" \t\r\n") != std::string::npos) {
    return make_error("{}: expected one line ALGORITHM:NAME:BASE64 or a key {{ ... }}; block", origin);
  }
  std::vector<std::string> parts;
  std::size_t start = 0;
  for (;;) {
    std::size_t colon = trimmed.find(':', start);
    parts.push_back(trimmed.substr(start, colon - start));
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  TsigKey key;
  if (parts.size() == 3) key = {parts[1], parts[0], parts[2]};
  else if (parts.size() == 2) key = {parts[0], "hmac-sha256", parts[1]};
  else return make_error("{}: expected ALGORITHM:NAME:BASE64", origin);
  return checked(std::move(key), origin);
}

Result<TsigKey> read_tsig_file(const std::filesystem::path& file) {
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return make_error("{}: cannot open the TSIG key file: {}", file.string(), std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return make_error("{}: the TSIG key file is not a regular file", file.string());
  }
  if ((st.st_mode & 077) != 0) {
    ::close(fd);
    return make_error("{}: the TSIG key file is accessible by group or others (mode {:o}); chmod 600 it",
                      file.string(), st.st_mode & 0777);
  }
  std::string text;
  char buffer[4096];
  for (;;) {
    ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ::close(fd);
      return make_error("{}: cannot read: {}", file.string(), std::strerror(errno));
    }
    if (n == 0) break;
    text.append(buffer, static_cast<std::size_t>(n));
    if (text.size() > 65536) {
      ::close(fd);
      return make_error("{}: too large for a TSIG key file", file.string());
    }
  }
  ::close(fd);
  return parse_tsig_key(text, file.string());
}

Result<DnsServer> parse_dns_server(std::string_view text) {
  DnsServer server;
  std::string s{text};
  if (std::size_t at = s.rfind('@'); at != std::string::npos) {
    std::string port = s.substr(at + 1);
    s.resize(at);
    if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
        std::stoi(port) < 1 || std::stoi(port) > 65535) {
      return make_error("{}: the port must be 1..65535 (ADDR[@PORT])", untrusted(text));
    }
    server.port = std::stoi(port);
  }
  unsigned char buf[sizeof(in6_addr)];
  if (inet_pton(AF_INET, s.c_str(), buf) != 1 && inet_pton(AF_INET6, s.c_str(), buf) != 1) {
    return make_error("{}: not a numeric IPv4 or IPv6 address (ADDR[@PORT])", untrusted(text));
  }
  server.address = s;
  return server;
}

Status send_dns_update(const DnsServer& server, const TsigKey& key, const DnsUpdate& update,
                       const UpdateOptions& options) {
  const std::string where = fmt::format("{}@{}", server.address, server.port);
  LdnsRrListPtr updates{ldns_rr_list_new()};
  auto push = [&](const std::string& text, bool remove) -> Status {
    ldns_rr* rr = nullptr;
    ldns_status s = ldns_rr_new_frm_str(&rr, text.c_str(), 0, nullptr, nullptr);
    LdnsRrPtr owned{rr};
    if (s != LDNS_STATUS_OK) {
      return make_error("cannot parse the record {}: {}", untrusted(text), ldns_get_errorstr_by_id(s));
    }
    if (remove) {  // RFC 2136 §2.5.4: delete an RR from an RRset
      ldns_rr_set_class(rr, LDNS_RR_CLASS_NONE);
      ldns_rr_set_ttl(rr, 0);
    }
    ldns_rr_list_push_rr(updates.get(), owned.release());
    return ok_status();
  };
  for (const std::string& rr : update.remove) {
    if (Status s = push(rr, true); !s) return s;
  }
  for (const std::string& rr : update.add) {
    if (Status s = push(rr, false); !s) return s;
  }
  ldns_rdf* zone = ldns_dname_new_frm_str(update.zone.c_str());
  if (zone == nullptr) return make_error("{}: not a zone name", untrusted(update.zone));
  // The packet takes the zone name; the lists are copied.
  LdnsPktPtr packet{ldns_update_pkt_new(zone, LDNS_RR_CLASS_IN, nullptr, updates.get(), nullptr)};
  if (!packet) return make_error("cannot build the update packet");
  ldns_pkt_set_random_id(packet.get());

  LdnsResolverPtr resolver{ldns_resolver_new()};
  if (!resolver) return make_error("out of memory");
  ldns_rdf_type type = server.address.find(':') == std::string::npos ? LDNS_RDF_TYPE_A : LDNS_RDF_TYPE_AAAA;
  LdnsRdfPtr address{ldns_rdf_new_frm_str(type, server.address.c_str())};
  if (!address || ldns_resolver_push_nameserver(resolver.get(), address.get()) != LDNS_STATUS_OK) {
    return make_error("{}: not a numeric address", untrusted(server.address));
  }
  ldns_resolver_set_port(resolver.get(), static_cast<uint16_t>(server.port));
  ldns_resolver_set_usevc(resolver.get(), options.tcp);
  ldns_resolver_set_retry(resolver.get(), 1);
  ldns_resolver_set_retrans(resolver.get(), 1);
  ldns_resolver_set_fail(resolver.get(), true);
  auto ms = options.timeout.count();
  ldns_resolver_set_timeout(resolver.get(), timeval{static_cast<time_t>(ms / 1000),
                                                    static_cast<suseconds_t>((ms % 1000) * 1000)});
  // ldns copies these strings; with them set, ldns_send() verifies the TSIG
  // of the response against the MAC of our request.
  const std::string key_name = key.name + ".";
  const std::string algorithm = key.algorithm == "hmac-md5" ? "hmac-md5.sig-alg.reg.int." : key.algorithm + ".";
  ldns_resolver_set_tsig_keyname(resolver.get(), key_name.c_str());
  ldns_resolver_set_tsig_keydata(resolver.get(), key.secret.c_str());
  ldns_resolver_set_tsig_algorithm(resolver.get(), algorithm.c_str());
  if (ldns_status s = ldns_update_pkt_tsig_add(packet.get(), resolver.get()); s != LDNS_STATUS_OK) {
    return make_error("cannot sign the update with TSIG key {}: {}", key.name, ldns_get_errorstr_by_id(s));
  }

  ldns_pkt* raw_answer = nullptr;
  ldns_status s = ldns_resolver_send_pkt(&raw_answer, resolver.get(), packet.get());
  LdnsPktPtr answer{raw_answer};
  auto rcode_text = [&]() -> std::string {
    if (!answer) return "no answer";
    const ldns_lookup_table* entry = ldns_lookup_by_id(ldns_rcodes, ldns_pkt_get_rcode(answer.get()));
    std::string text = entry != nullptr ? entry->name : fmt::format("RCODE{}", ldns_pkt_get_rcode(answer.get()));
    if (const ldns_rr* tsig = ldns_pkt_tsig(answer.get()); tsig != nullptr && ldns_rr_rd_count(tsig) >= 7) {
      // The TSIG error field (RFC 8945 §4.3): BADSIG 16, BADKEY 17, BADTIME 18.
      uint16_t error = ldns_rdf2native_int16(ldns_rr_rdf(tsig, 5));
      if (error == 16) text += ", TSIG BADSIG: wrong secret";
      else if (error == 17) text += ", TSIG BADKEY: the server does not know this key";
      else if (error == 18) text += ", TSIG BADTIME: clocks differ";
      else if (error != 0) text += fmt::format(", TSIG error {}", error);
    }
    return text;
  };
  if (s == LDNS_STATUS_CRYPTO_TSIG_BOGUS) {
    return make_error("update of {} at {}: the server's answer failed TSIG verification ({}); the key {} or its "
                      "secret is not what the server has",
                      update.zone, where, untrusted(rcode_text()), key.name);
  }
  if (s != LDNS_STATUS_OK || !answer) {
    return make_error("update of {} at {} failed: {}", update.zone, where, ldns_get_errorstr_by_id(s));
  }
  if (ldns_pkt_id(answer.get()) != ldns_pkt_id(packet.get())) {
    return make_error("update of {} at {}: the answer's ID does not match", update.zone, where);
  }
  if (ldns_pkt_tsig(answer.get()) == nullptr) {
    return make_error("update of {} at {}: the answer is not signed with TSIG ({})", update.zone, where,
                      untrusted(rcode_text()));
  }
  ldns_pkt_rcode rcode = ldns_pkt_get_rcode(answer.get());
  if (rcode != LDNS_RCODE_NOERROR) {
    std::string hint;
    switch (rcode) {
      case LDNS_RCODE_REFUSED: hint = ": the server refuses updates from this key (ACL)"; break;
      case LDNS_RCODE_NOTAUTH: hint = ": the server is not authoritative for the zone, or refused the TSIG key"; break;
      case LDNS_RCODE_NOTZONE: hint = ": a record is outside the zone"; break;
      default: break;
    }
    return make_error("update of {} at {} refused: {}{}", update.zone, where, untrusted(rcode_text()), hint);
  }
  return ok_status();
}

}  // namespace keyfed
