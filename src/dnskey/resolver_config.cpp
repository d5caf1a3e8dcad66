#include "dnskey/resolver_config.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "common/ldns.h"

#include "common/c_handles.h"

namespace keyfed {
namespace {

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

Result<FilePtr> open_for_reading(const std::filesystem::path& path, std::string_view what) {
  FilePtr file(std::fopen(path.c_str(), "r"));
  if (!file) return make_error("{}: cannot read {}: {}", path.string(), what, std::strerror(errno));
  return file;
}

std::string dname_text(const ldns_rdf* dname) {
  MallocString text(ldns_rdf2str(dname));
  std::string out = text ? text.get() : "";
  if (out.size() > 1 && out.back() == '.') out.pop_back();
  return out;
}

}  // namespace

Result<ZoneFile> inspect_zone_file(const std::filesystem::path& path) {
  Result<FilePtr> file = open_for_reading(path, "zone file");
  if (!file) return file.error();
  ldns_zone* raw = nullptr;
  int line = 0;
  ldns_status status = ldns_zone_new_frm_fp_l(&raw, file->get(), nullptr, 0, LDNS_RR_CLASS_IN, &line);
  LdnsZonePtr zone(raw);
  if (status != LDNS_STATUS_OK) {
    return make_error("{}:{}: {}", path.string(), line, ldns_get_errorstr_by_id(status));
  }
  const ldns_rr* soa = ldns_zone_soa(zone.get());
  if (soa == nullptr) return make_error("{}: zone file has no SOA record", path.string());
  return ZoneFile{dname_text(ldns_rr_owner(soa)), path};
}

Status check_trust_anchor_file(const std::filesystem::path& path) {
  Result<FilePtr> file = open_for_reading(path, "trust anchor file");
  if (!file) return file.error();
  std::uint32_t default_ttl = 3600;
  ldns_rdf* origin_raw = nullptr;
  ldns_rdf* prev_raw = nullptr;
  int line = 0;
  std::size_t anchors = 0;
  Status result = ok_status();
  while (!std::feof(file->get())) {
    ldns_rr* rr_raw = nullptr;
    ldns_status status =
        ldns_rr_new_frm_fp_l(&rr_raw, file->get(), &default_ttl, &origin_raw, &prev_raw, &line);
    LdnsRrPtr rr(rr_raw);
    if (status == LDNS_STATUS_SYNTAX_EMPTY || status == LDNS_STATUS_SYNTAX_TTL ||
        status == LDNS_STATUS_SYNTAX_ORIGIN) {
      continue;
    }
    if (status != LDNS_STATUS_OK) {
      result = make_error("{}:{}: {}", path.string(), line, ldns_get_errorstr_by_id(status));
      break;
    }
    ldns_rr_type type = ldns_rr_get_type(rr.get());
    if (type != LDNS_RR_TYPE_DS && type != LDNS_RR_TYPE_DNSKEY) {
      result = make_error("{}:{}: a trust anchor must be a DS or DNSKEY record", path.string(),
                          line);
      break;
    }
    ++anchors;
  }
  LdnsRdfPtr origin(origin_raw);
  LdnsRdfPtr prev(prev_raw);
  if (result.ok() && anchors == 0) {
    return make_error("{}: no DS or DNSKEY record in the trust anchor file", path.string());
  }
  return result;
}

Status check_resolver_config(const ResolverConfig& config) {
  if (config.query_timeout < kMinQueryTimeout || config.query_timeout > kMaxQueryTimeout) {
    return make_error("query timeout {} ms is outside {}..{} ms", config.query_timeout.count(),
                      kMinQueryTimeout.count(), kMaxQueryTimeout.count());
  }
  if (config.trust_anchor.empty()) return make_error("no trust anchor file is configured");
  Status anchor = check_trust_anchor_file(config.trust_anchor);
  if (!anchor) return anchor;
  if (config.mode == ResolverMode::Testbed) {
    if (config.zones.empty()) return make_error("testbed resolver has no zone files");
    if (!config.forwarders.empty()) return make_error("testbed resolver cannot have forwarders");
  } else if (!config.zones.empty()) {
    return make_error("zone files are only served in testbed mode");
  }
  return ok_status();
}

}  // namespace keyfed
