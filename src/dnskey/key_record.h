// Federation keys as published in KEY records (docs/KEYS.md, "Record").
//
// A record is usable when its flags are 512 (entity key), its protocol is
// 1 (TLS), its algorithm is 15 (Ed25519) or 13 (ECDSA P-256) and its key
// decodes to a valid public key. Anything else is skipped with a reason.
#pragma once

#include <cstdint>
#include <list>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/ldns.h"

#include "common/result.h"

namespace keyfed {

inline constexpr std::uint16_t kKeyFlagsEntity = 512;
inline constexpr std::uint8_t kKeyProtocolTls = 1;
inline constexpr std::uint8_t kAlgorithmEcdsaP256 = 13;
inline constexpr std::uint8_t kAlgorithmEd25519 = 15;

/// A validated public key of a domain.
struct FederationKey {
  std::uint8_t algorithm = 0;
  std::uint16_t key_tag = 0;                ///< RFC 4034 appendix B, over the KEY RDATA
  std::vector<std::uint8_t> public_key;     ///< as in the RDATA (Ed25519: 32 bytes; P-256: X||Y)
  std::vector<std::uint8_t> spki_der;       ///< SubjectPublicKeyInfo, as a TLS certificate carries it
  std::string spki_sha256;                  ///< hex SHA-256 of spki_der (as DANE's "3 1 1")

  /// Base64 of public_key, the form written in the zone file.
  std::string key_base64() const;
  /// Two keys are the same key when algorithm and public key bytes match.
  bool same_key(const FederationKey& other) const;
};

/// A KEY record that was not usable, and why.
struct SkippedRecord {
  std::string record;  ///< presentation form of the record
  std::string reason;
};

/// Builds a key from the four RDATA fields, or says why they are not usable.
Result<FederationKey> make_federation_key(std::uint16_t flags, std::uint8_t protocol,
                                          std::uint8_t algorithm,
                                          std::span<const std::uint8_t> key);

/// Decoded KEY RDATA, remembered (docs/SECURITY.md, "Budgets"): decoding a
/// key costs tens of microseconds, and a wildcard's RRset is the same for
/// every name under it, so each distinct RDATA is decoded once while it stays
/// among the `capacity` most recently used. Single-threaded (the loop's).
class KeyRecordMemo {
 public:
  explicit KeyRecordMemo(std::size_t capacity = 4096) : capacity_(capacity) {}
  /// make_federation_key(), from memory when these RDATA were decoded before.
  Result<FederationKey> decode(std::uint16_t flags, std::uint8_t protocol, std::uint8_t algorithm,
                               std::span<const std::uint8_t> key);
  std::size_t size() const { return index_.size(); }
  std::uint64_t hits() const { return hits_; }

 private:
  using Entry = std::pair<std::string, Result<FederationKey>>;
  std::size_t capacity_;
  std::list<Entry> recent_;  // most recently used first
  std::unordered_map<std::string, std::list<Entry>::iterator> index_;
  std::uint64_t hits_ = 0;
};

/// Same, from a KEY resource record parsed by ldns (through `memo` if given).
Result<FederationKey> parse_key_rr(const ldns_rr* rr, KeyRecordMemo* memo = nullptr);

/// Sorts the KEY records of `rrs` into usable keys and skipped records.
/// Records of other types are ignored.
struct KeyRecordSet {
  std::vector<FederationKey> keys;
  std::vector<SkippedRecord> skipped;
  std::size_t key_records = 0;  ///< KEY records seen, usable or not
};
KeyRecordSet parse_key_records(const ldns_rr_list* rrs, KeyRecordMemo* memo = nullptr);

/// "Ed25519", "ECDSA-P256", or "algorithm N".
std::string algorithm_name(std::uint8_t algorithm);

/// Lower-case hex of bytes.
std::string to_hex(std::span<const std::uint8_t> bytes);

}  // namespace keyfed
