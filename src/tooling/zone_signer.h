// DNSSEC zone keys and zone signing with the ldns library, for the testbed
// (docs/TESTBED.md, "keyfed testbed"): no ldns-keygen or ldns-signzone
// process, and the keys are kept so a zone can be signed again while the
// testbed runs (a key rolled, a key removed, a DS broken).
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>

#include "common/result.h"

struct ldns_struct_key;

namespace keyfed {

/// One Ed25519 key signing a whole zone (flags 257: it is both KSK and ZSK,
/// as in the build-time testbed).
class ZoneKey {
 public:
  static Result<ZoneKey> generate(const std::string& origin);
  /// Reads a key written by save() (BIND's private-key format, as ldns and
  /// Knot's `keymgr import-bind` read it).
  static Result<ZoneKey> load(const std::string& origin, const std::filesystem::path& private_file);
  /// Writes `<stem>.private` (0600) and `<stem>.key` (the DNSKEY record).
  Status save(const std::filesystem::path& stem) const;

  ZoneKey(ZoneKey&&) noexcept;
  ZoneKey& operator=(ZoneKey&&) noexcept;
  ~ZoneKey();

  const std::string& origin() const { return origin_; }
  std::string dnskey_record() const;
  /// The DS (SHA-256) the parent publishes for this key.
  std::string ds_record(std::uint32_t ttl = 3600) const;
  std::uint16_t key_tag() const;
  ldns_struct_key* get() const { return key_.get(); }

 private:
  struct Free {
    void operator()(ldns_struct_key* key) const;
  };
  ZoneKey(std::string origin, ldns_struct_key* key);
  std::string origin_;
  std::unique_ptr<ldns_struct_key, Free> key_;
};

/// Signs a zone (master-file text, NSEC) with one key: adds its DNSKEY and
/// an RRSIG over every RRset, valid from `inception` to `expiration`.
/// Errors name the line of `zone_text` ldns could not read.
Result<std::string> sign_zone(const std::string& zone_text, const ZoneKey& key,
                              std::chrono::system_clock::time_point inception,
                              std::chrono::system_clock::time_point expiration);

}  // namespace keyfed
