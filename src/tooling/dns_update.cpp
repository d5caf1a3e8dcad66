#include "tooling/dns_update.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <regex>
#include <vector>

#include "common/c_handles.h"
#include "common/log.h"

namespace keyfed {
namespace {

using LdnsBufferPtr = CPtr<ldns_buffer, ldns_buffer_free>;

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
  // A key file is a few lines; the regexes below are not for megabytes.
  if (text.size() > 4096) return make_error("{}: over 4096 bytes: not a TSIG key file", origin);
  // Comments (#, //) to the end of the line are dropped first, but only
  // outside quotes and where a word starts: '/' is a base64 character, and a
  // secret may hold "//" (about 1 in 100 random 32-byte secrets do).
  std::string clean;
  bool quoted = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '"') quoted = !quoted;
    if (text[i] == '\n') quoted = false;
    bool word_start = i == 0 || text[i - 1] == ' ' || text[i - 1] == '\t' || text[i - 1] == '\n' || text[i - 1] == ';' ||
                      text[i - 1] == '{' || text[i - 1] == '}';
    bool comment = !quoted && word_start &&
                   (text[i] == '#' || (text[i] == '/' && i + 1 < text.size() && text[i + 1] == '/'));
    if (comment) {
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

namespace {

// Waits until fd is ready for `events` or the deadline passes.
bool wait_fd(int fd, short events, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, static_cast<int>(left.count()));
    if (r > 0) return true;
    if (r < 0 && errno != EINTR) return false;
  }
}

// One DNS exchange over TCP (RFC 1035 §4.2.2 framing) or UDP, bounded as a
// whole by `deadline`.
Result<std::vector<uint8_t>> dns_exchange(const sockaddr_storage& to, socklen_t to_len, const uint8_t* query,
                                          std::size_t query_size, bool tcp, std::chrono::steady_clock::time_point deadline) {
  int fd = ::socket(to.ss_family, (tcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error("socket: {}", std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&to), to_len) != 0 && errno != EINPROGRESS) {
    return make_error("connect: {}", std::strerror(errno));
  }
  if (tcp) {
    if (!wait_fd(fd, POLLOUT, deadline)) return make_error("no connection before the deadline");
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) return make_error("connect: {}", std::strerror(err));
  }
  std::vector<uint8_t> out;
  if (tcp) {
    out.push_back(static_cast<uint8_t>(query_size >> 8));
    out.push_back(static_cast<uint8_t>(query_size & 0xff));
  }
  out.insert(out.end(), query, query + query_size);
  for (std::size_t sent = 0; sent < out.size();) {
    if (!wait_fd(fd, POLLOUT, deadline)) return make_error("cannot send before the deadline");
    ssize_t n = ::send(fd, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN && errno != EINTR) return make_error("send: {}", std::strerror(errno));
    if (n > 0) sent += static_cast<std::size_t>(n);
  }
  std::vector<uint8_t> in;
  std::size_t want = tcp ? 2 : 65535;
  std::vector<uint8_t> buffer(65537);
  while (true) {
    if (!wait_fd(fd, POLLIN, deadline)) return make_error("no answer before the deadline");
    ssize_t n = ::recv(fd, buffer.data(), buffer.size(), 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n < 0) return make_error("receive: {}", std::strerror(errno));
    if (!tcp) return std::vector<uint8_t>(buffer.begin(), buffer.begin() + n);
    if (n == 0) return make_error("the server closed the connection before a whole answer");
    in.insert(in.end(), buffer.begin(), buffer.begin() + n);
    if (in.size() >= 2 && want == 2) want = 2 + (static_cast<std::size_t>(in[0]) << 8 | in[1]);
    if (want > 2 && in.size() >= want) return std::vector<uint8_t>(in.begin() + 2, in.begin() + static_cast<long>(want));
  }
}

}  // namespace

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

  const std::string key_name = key.name + ".";
  const std::string algorithm = key.algorithm == "hmac-md5" ? "hmac-md5.sig-alg.reg.int." : key.algorithm + ".";
  if (ldns_status s = ldns_pkt_tsig_sign(packet.get(), key_name.c_str(), key.secret.c_str(), 300, algorithm.c_str(),
                                         nullptr);
      s != LDNS_STATUS_OK) {
    return make_error("cannot sign the update with TSIG key {}: {}", key.name, ldns_get_errorstr_by_id(s));
  }
  // The request's MAC, which the response's TSIG covers (RFC 8945 §5.3).
  const ldns_rr* request_tsig = ldns_pkt_tsig(packet.get());
  if (request_tsig == nullptr || ldns_rr_rd_count(request_tsig) < 4) return make_error("the update was not signed");
  const ldns_rdf* request_mac = ldns_rr_rdf(request_tsig, 3);

  LdnsBufferPtr query{ldns_buffer_new(LDNS_MAX_PACKETLEN)};
  if (!query || ldns_pkt2buffer_wire(query.get(), packet.get()) != LDNS_STATUS_OK) {
    return make_error("cannot encode the update");
  }
  sockaddr_storage to{};
  socklen_t to_len = 0;
  if (server.address.find(':') == std::string::npos) {
    auto* sa = reinterpret_cast<sockaddr_in*>(&to);
    sa->sin_family = AF_INET;
    sa->sin_port = htons(static_cast<uint16_t>(server.port));
    if (inet_pton(AF_INET, server.address.c_str(), &sa->sin_addr) != 1) return make_error("{}: bad address", where);
    to_len = sizeof(sockaddr_in);
  } else {
    auto* sa = reinterpret_cast<sockaddr_in6*>(&to);
    sa->sin6_family = AF_INET6;
    sa->sin6_port = htons(static_cast<uint16_t>(server.port));
    if (inet_pton(AF_INET6, server.address.c_str(), &sa->sin6_addr) != 1) return make_error("{}: bad address", where);
    to_len = sizeof(sockaddr_in6);
  }
  // One deadline for the whole exchange (connect, send, every read): ldns's
  // own senders apply their timeout to each read, so a server answering a
  // byte at a time could hold us for hours.
  auto deadline = std::chrono::steady_clock::now() + options.timeout;
  Result<std::vector<uint8_t>> reply =
      dns_exchange(to, to_len, ldns_buffer_begin(query.get()), ldns_buffer_position(query.get()), options.tcp, deadline);
  if (!reply) return make_error("update of {} at {} failed: {}", update.zone, where, reply.error().message);
  uint8_t* raw_reply = reply->data();
  size_t reply_size = reply->size();
  ldns_pkt* parsed = nullptr;
  if (ldns_wire2pkt(&parsed, raw_reply, reply_size) != LDNS_STATUS_OK || parsed == nullptr) {
    return make_error("update of {} at {}: the answer is not a DNS message", update.zone, where);
  }
  LdnsPktPtr answer{parsed};
  auto rcode_text = [&]() -> std::string {
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
  if (ldns_pkt_id(answer.get()) != ldns_pkt_id(packet.get()) || !ldns_pkt_qr(answer.get())) {
    return make_error("update of {} at {}: the answer's ID does not match", update.zone, where);
  }
  const bool verified = ldns_pkt_tsig(answer.get()) != nullptr &&
                        ldns_pkt_tsig_verify(answer.get(), raw_reply, reply_size, key_name.c_str(),
                                             key.secret.c_str(), request_mac);
  if (!verified) {
    // Unauthenticated: what it says may be forged, so it is only quoted.
    return make_error("update of {} at {} refused or not confirmed: the answer ({}, unverified) is not signed with "
                      "TSIG key {}; the key name or secret is not what the server has",
                      update.zone, where, untrusted(rcode_text()), key.name);
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
