#include "dnskey/resolver_config.h"

#include <arpa/inet.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>

#include "common/ldns.h"

#include "common/c_handles.h"

namespace keyfed {
namespace {

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

// Opened without blocking (a FIFO would wait for a writer) and checked to be
// a regular file through the descriptor read from: a directory would never
// reach end-of-file.
Result<FilePtr> open_for_reading(const std::filesystem::path& path, std::string_view what) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) return make_error("{}: cannot read {}: {}", path.string(), what, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return make_error("{}: cannot read {}: not a regular file", path.string(), what);
  }
  FilePtr file(::fdopen(fd, "r"));
  if (!file) {
    ::close(fd);
    return make_error("{}: cannot read {}: {}", path.string(), what, std::strerror(errno));
  }
  return file;
}

std::string dname_text(const ldns_rdf* dname) {
  MallocString text(ldns_rdf2str(dname));
  std::string out = text ? text.get() : "";
  if (out.size() > 1 && out.back() == '.') out.pop_back();
  return out;
}

// Reads the records of a zone-format file one by one, handing each to
// `visit` (which may stop the walk with an error). ldns_zone_new_frm_fp_l()
// is not used: ldns 1.8.3 leaks the records read before a syntax error.
Status for_each_record(const std::filesystem::path& path, std::string_view what,
                       const std::function<Status(const ldns_rr*, int line)>& visit) {
  Result<FilePtr> file = open_for_reading(path, what);
  if (!file) return file.error();
  std::uint32_t default_ttl = 3600;
  ldns_rdf* origin_raw = nullptr;
  ldns_rdf* prev_raw = nullptr;
  int line = 0;
  Status result = ok_status();
  while (result.ok() && !std::feof(file->get())) {
    if (std::ferror(file->get())) {
      result = make_error("{}: cannot read {}: {}", path.string(), what, std::strerror(errno));
      break;
    }
    ldns_rr* rr_raw = nullptr;
    ldns_status status =
        ldns_rr_new_frm_fp_l(&rr_raw, file->get(), &default_ttl, &origin_raw, &prev_raw, &line);
    LdnsRrPtr rr(rr_raw);
    switch (status) {
      case LDNS_STATUS_OK: result = visit(rr.get(), line); break;
      case LDNS_STATUS_SYNTAX_EMPTY:
      case LDNS_STATUS_SYNTAX_TTL:
      case LDNS_STATUS_SYNTAX_ORIGIN: break;
      case LDNS_STATUS_SYNTAX_INCLUDE:
        result = make_error("{}:{}: $INCLUDE is not supported", path.string(), line);
        break;
      default:
        result = make_error("{}:{}: {}", path.string(), line, ldns_get_errorstr_by_id(status));
    }
  }
  LdnsRdfPtr origin(origin_raw);
  LdnsRdfPtr prev(prev_raw);
  return result;
}

}  // namespace

Result<ZoneFile> inspect_zone_file(const std::filesystem::path& path) {
  std::string origin;
  Status read = for_each_record(path, "zone file", [&](const ldns_rr* rr, int line) -> Status {
    if (ldns_rr_get_type(rr) != LDNS_RR_TYPE_SOA) return ok_status();
    if (!origin.empty()) return make_error("{}:{}: a second SOA record", path.string(), line);
    origin = dname_text(ldns_rr_owner(rr));
    return ok_status();
  });
  if (!read) return read.error();
  if (origin.empty()) return make_error("{}: zone file has no SOA record", path.string());
  return ZoneFile{origin, path};
}

Status check_trust_anchor_file(const std::filesystem::path& path) {
  std::size_t anchors = 0;
  Status read = for_each_record(path, "trust anchor file", [&](const ldns_rr* rr, int line) -> Status {
    ldns_rr_type type = ldns_rr_get_type(rr);
    if (type != LDNS_RR_TYPE_DS && type != LDNS_RR_TYPE_DNSKEY) {
      return make_error("{}:{}: a trust anchor must be a DS or DNSKEY record", path.string(), line);
    }
    ++anchors;
    return ok_status();
  });
  if (!read) return read;
  if (anchors == 0) return make_error("{}: no DS or DNSKEY record in the trust anchor file", path.string());
  return ok_status();
}

Status check_resolver_config(const ResolverConfig& config) {
  if (config.query_timeout < kMinQueryTimeout || config.query_timeout > kMaxQueryTimeout) {
    return make_error("query timeout {} ms is outside {}..{} ms", config.query_timeout.count(),
                      kMinQueryTimeout.count(), kMaxQueryTimeout.count());
  }
  if (config.max_key_records < 1 || config.max_key_records > kMaxMaxKeyRecords) {
    return make_error("max_key_records {} is outside 1..{}", config.max_key_records, kMaxMaxKeyRecords);
  }
  if (config.trust_anchor.empty()) return make_error("no trust anchor file is configured");
  Status anchor = check_trust_anchor_file(config.trust_anchor);
  if (!anchor) return anchor;
  if (config.mode == ResolverMode::Testbed) {
    if (config.zones.empty() && config.server.empty()) {
      return make_error("testbed resolver has neither zone files nor a server");
    }
    if (!config.zones.empty() && !config.server.empty()) {
      return make_error("testbed resolver has both zone files and a server: choose one");
    }
    if (!config.forwarders.empty()) return make_error("testbed resolver cannot have forwarders");
    if (!config.server.empty()) {
      std::size_t at = config.server.find('@');
      std::string address = config.server.substr(0, at);
      in6_addr a6{};
      in_addr a4{};
      bool numeric = inet_pton(AF_INET, address.c_str(), &a4) == 1 || inet_pton(AF_INET6, address.c_str(), &a6) == 1;
      bool port_ok = at == std::string::npos ||
                     (at + 1 < config.server.size() && at + 6 >= config.server.size() &&
                      config.server.find_first_not_of("0123456789", at + 1) == std::string::npos &&
                      std::stoul(config.server.substr(at + 1)) >= 1 && std::stoul(config.server.substr(at + 1)) <= 65535);
      if (!numeric || !port_ok) {
        return make_error("testbed server '{}' is not a numeric address with an optional @PORT", config.server);
      }
    }
  } else if (!config.zones.empty() || !config.server.empty()) {
    return make_error("zone files and a server are only used in testbed mode");
  }
  return ok_status();
}

}  // namespace keyfed
