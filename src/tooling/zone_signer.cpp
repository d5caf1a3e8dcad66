#include "tooling/zone_signer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "common/c_handles.h"
#include "tooling/support.h"

namespace keyfed {
namespace {

using LdnsDnssecZonePtr = CPtr<ldns_dnssec_zone, ldns_dnssec_zone_deep_free>;
// ldns_key_list_free() frees the keys too, and the list only borrows ours:
// it is emptied first (not by popping: shrinking to nothing frees the array,
// which the free would then free again).
void release_key_list(ldns_key_list* list) {
  ldns_key_list_set_key_count(list, 0);
  ldns_key_list_free(list);
}
using LdnsKeyListPtr = CPtr<ldns_key_list, release_key_list>;
using FilePtr = CPtr<std::FILE, std::fclose>;

std::string rr_text(const ldns_rr* rr) {
  MallocString text(ldns_rr2str(rr));
  std::string s = text ? text.get() : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

std::uint32_t unix_seconds(std::chrono::system_clock::time_point t) {
  return static_cast<std::uint32_t>(std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count());
}

Status prepare_key(ldns_key* key, const std::string& origin) {
  ldns_rdf* owner = ldns_dname_new_frm_str((origin + ".").c_str());
  if (owner == nullptr) return make_error("'{}' is not a zone name", origin);
  ldns_key_set_pubkey_owner(key, owner);  // the key owns it from here
  ldns_key_set_flags(key, 257);
  // The key tag covers the flags: computed again, or the RRSIGs would name
  // the tag of the key as it was generated (flags 256).
  LdnsRrPtr dnskey(ldns_key2rr(key));
  if (!dnskey) return make_error("ldns cannot form the DNSKEY of {}", origin);
  ldns_key_set_keytag(key, ldns_calc_keytag(dnskey.get()));
  return ok_status();
}

}  // namespace

void ZoneKey::Free::operator()(ldns_struct_key* key) const { ldns_key_deep_free(key); }

ZoneKey::ZoneKey(std::string origin, ldns_struct_key* key) : origin_(std::move(origin)), key_(key) {}
ZoneKey::ZoneKey(ZoneKey&&) noexcept = default;
ZoneKey& ZoneKey::operator=(ZoneKey&&) noexcept = default;
ZoneKey::~ZoneKey() = default;

Result<ZoneKey> ZoneKey::generate(const std::string& origin) {
  ldns_key* raw = ldns_key_new_frm_algorithm(LDNS_SIGN_ED25519, 256);
  if (raw == nullptr) return make_error("ldns cannot generate an Ed25519 zone key for {}", origin);
  ZoneKey key(origin, raw);
  if (Status s = prepare_key(raw, origin); !s) return s.error();
  return key;
}

Result<ZoneKey> ZoneKey::load(const std::string& origin, const std::filesystem::path& private_file) {
  FilePtr file(std::fopen(private_file.c_str(), "r"));
  if (!file) return make_error("{}: cannot read the zone key", private_file.string());
  ldns_key* raw = nullptr;
  int line = 0;
  ldns_status status = ldns_key_new_frm_fp_l(&raw, file.get(), &line);
  if (status != LDNS_STATUS_OK || raw == nullptr) {
    return make_error("{}:{}: not a zone key ldns can read: {}", private_file.string(), line,
                      ldns_get_errorstr_by_id(status));
  }
  ZoneKey key(origin, raw);
  if (Status s = prepare_key(raw, origin); !s) return s.error();
  return key;
}

Status ZoneKey::save(const std::filesystem::path& stem) const {
  MallocString text(ldns_key2str(key_.get()));
  if (!text) return make_error("ldns cannot write the zone key of {}", origin_);
  // Atomic and fsynced (support.h): a crash leaves the old key or the new one.
  if (Status s = write_file_atomic(stem.string() + ".private", text.get(), 0600); !s) return s;
  return write_file_atomic(stem.string() + ".key", dnskey_record() + "\n", 0644);
}

std::string ZoneKey::dnskey_record() const {
  LdnsRrPtr rr(ldns_key2rr(key_.get()));
  return rr ? rr_text(rr.get()) : std::string();
}

std::string ZoneKey::ds_record(std::uint32_t ttl) const {
  LdnsRrPtr dnskey(ldns_key2rr(key_.get()));
  if (!dnskey) return {};
  LdnsRrPtr ds(ldns_key_rr2ds(dnskey.get(), LDNS_SHA256));
  if (ds) ldns_rr_set_ttl(ds.get(), ttl);
  return ds ? rr_text(ds.get()) : std::string();
}

std::uint16_t ZoneKey::key_tag() const {
  LdnsRrPtr dnskey(ldns_key2rr(key_.get()));
  return dnskey ? ldns_calc_keytag(dnskey.get()) : 0;
}

Result<std::string> sign_zone(const std::string& zone_text, const ZoneKey& key,
                              std::chrono::system_clock::time_point inception,
                              std::chrono::system_clock::time_point expiration) {
  FilePtr in(fmemopen(const_cast<char*>(zone_text.data()), zone_text.size(), "r"));
  if (!in) return make_error("cannot read the zone text of {}", key.origin());
  LdnsRdfPtr origin(ldns_dname_new_frm_str((key.origin() + ".").c_str()));
  ldns_dnssec_zone* raw = nullptr;
  int line = 0;
  ldns_status status = ldns_dnssec_zone_new_frm_fp_l(&raw, in.get(), origin.get(), 3600, LDNS_RR_CLASS_IN, &line);
  LdnsDnssecZonePtr zone(raw);
  if (status != LDNS_STATUS_OK) {
    return make_error("zone {}: line {}: {}", key.origin(), line, ldns_get_errorstr_by_id(status));
  }
  if (zone->soa == nullptr) return make_error("zone {}: no SOA record", key.origin());

  ldns_key_set_inception(key.get(), unix_seconds(inception));
  ldns_key_set_expiration(key.get(), unix_seconds(expiration));
  ldns_rr* dnskey = ldns_key2rr(key.get());
  ldns_dnssec_rrsets* soa = ldns_dnssec_name_find_rrset(zone->soa, LDNS_RR_TYPE_SOA);
  // The zone's TTL (its SOA's), not ldns's 3600: a changed key shows within it.
  if (dnskey != nullptr && soa != nullptr && soa->rrs != nullptr) ldns_rr_set_ttl(dnskey, ldns_rr_ttl(soa->rrs->rr));
  if (dnskey == nullptr || ldns_dnssec_zone_add_rr(zone.get(), dnskey) != LDNS_STATUS_OK) {
    ldns_rr_free(dnskey);
    return make_error("zone {}: cannot add its DNSKEY", key.origin());
  }
  LdnsKeyListPtr keys(ldns_key_list_new());
  ldns_key_list_push_key(keys.get(), key.get());
  CPtr<ldns_rr_list, ldns_rr_list_free> added(ldns_rr_list_new());  // the zone owns the records
  status = ldns_dnssec_zone_sign(zone.get(), added.get(), keys.get(), ldns_dnssec_default_replace_signatures,
                                 nullptr);
  if (status != LDNS_STATUS_OK) {
    return make_error("zone {}: signing failed: {}", key.origin(), ldns_get_errorstr_by_id(status));
  }
  char* buffer = nullptr;
  std::size_t size = 0;
  FilePtr out(open_memstream(&buffer, &size));
  if (!out) return make_error("zone {}: out of memory", key.origin());
  ldns_dnssec_zone_print(out.get(), zone.get());
  out.reset();  // flushes into buffer
  MallocString owned(buffer);
  return std::string(buffer, size);
}

}  // namespace keyfed
