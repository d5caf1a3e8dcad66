#include "dnskey/key_record.h"

#include <array>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "common/c_handles.h"
#include "common/openssl_call.h"

namespace keyfed {
namespace {

constexpr std::size_t kEd25519KeyLength = 32;
constexpr std::size_t kP256KeyLength = 64;  // X || Y, RFC 6605 section 4
constexpr std::size_t kMaxSkippedRecordText = 200;

// The encodings of the eight points of small order, sign bit cleared: y = 0
// (order 4), 1 (the identity), p-1 (order 2), and the two y of the points of
// order 8. A key on one of them proves nothing: with the identity point, a
// signature made without any private key verifies. libsodium refuses the same
// points (crypto_sign/ed25519/ref10/open.c).
constexpr std::array<std::array<std::uint8_t, kEd25519KeyLength>, 5> kSmallOrderY = {{
    {0x00},
    {0x01},
    {0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
     0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
    {0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98, 0xf0,
     0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53, 0xfc, 0x05},
    {0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67, 0x0f,
     0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac, 0x03, 0x7a},
}};

enum class PointCheck { Valid, NotCanonical, SmallOrder, NotOnCurve };

// RFC 8032 section 5.1.3 decoding, refusing what libsodium refuses: y must be
// below p (canonical), x = 0 must not carry the sign bit ("-0"), the point
// must not be of small order, and x^2 = (y^2 - 1) / (d y^2 + 1) mod p must
// have a root. OpenSSL accepts any 32 bytes as an Ed25519 public key.
PointCheck check_ed25519_point(std::span<const std::uint8_t> key) {
  std::array<std::uint8_t, kEd25519KeyLength> y_le{};
  std::copy(key.begin(), key.end(), y_le.begin());
  bool x_sign = (y_le[31] & 0x80) != 0;
  y_le[31] &= 0x7f;

  BnCtxPtr ctx(BN_CTX_new());
  BnPtr p(BN_new()), y(BN_lebin2bn(y_le.data(), static_cast<int>(y_le.size()), nullptr));
  BnPtr d(BN_new()), t(BN_new()), u(BN_new()), v(BN_new()), x2(BN_new()), e(BN_new());
  if (!ctx || !p || !y || !d || !t || !u || !v || !x2 || !e) return PointCheck::NotOnCurve;
  // p = 2^255 - 19
  BN_set_bit(p.get(), 255);
  BN_sub_word(p.get(), 19);
  if (BN_cmp(y.get(), p.get()) >= 0) return PointCheck::NotCanonical;
  for (const auto& small : kSmallOrderY) {
    if (y_le == small) return PointCheck::SmallOrder;
  }
  // d = -121665 / 121666 mod p
  BN_set_word(t.get(), 121666);
  if (BN_mod_inverse(d.get(), t.get(), p.get(), ctx.get()) == nullptr) return PointCheck::NotOnCurve;
  BN_mul_word(d.get(), 121665);
  BN_sub(d.get(), p.get(), d.get());
  BN_mod(d.get(), d.get(), p.get(), ctx.get());
  // u = y^2 - 1, v = d y^2 + 1
  BN_mod_sqr(t.get(), y.get(), p.get(), ctx.get());
  BN_copy(u.get(), t.get());
  BN_set_word(e.get(), 1);
  BN_mod_sub(u.get(), u.get(), e.get(), p.get(), ctx.get());
  BN_mod_mul(v.get(), d.get(), t.get(), p.get(), ctx.get());
  BN_mod_add(v.get(), v.get(), e.get(), p.get(), ctx.get());
  if (BN_mod_inverse(v.get(), v.get(), p.get(), ctx.get()) == nullptr) return PointCheck::NotOnCurve;
  BN_mod_mul(x2.get(), u.get(), v.get(), p.get(), ctx.get());
  if (BN_is_zero(x2.get())) return x_sign ? PointCheck::NotCanonical : PointCheck::Valid;
  // Euler's criterion: x2 is a square iff x2^((p-1)/2) = 1.
  BN_copy(e.get(), p.get());
  BN_sub_word(e.get(), 1);
  BN_rshift1(e.get(), e.get());
  BN_mod_exp(t.get(), x2.get(), e.get(), p.get(), ctx.get());
  return BN_is_one(t.get()) ? PointCheck::Valid : PointCheck::NotOnCurve;
}

Result<EvpPkeyPtr> ed25519_key(std::span<const std::uint8_t> key) {
  if (key.size() != kEd25519KeyLength) {
    return make_error("Ed25519 key is {} bytes, expected {}", key.size(), kEd25519KeyLength);
  }
  switch (openssl_call([&] { return check_ed25519_point(key); })) {
    case PointCheck::Valid: break;
    case PointCheck::NotCanonical: return make_error("Ed25519 key is not canonically encoded");
    case PointCheck::SmallOrder:
      return make_error("Ed25519 key is a point of small order (signatures without the private key would verify)");
    case PointCheck::NotOnCurve: return make_error("Ed25519 key is not a point on the curve");
  }
  EvpPkeyPtr pkey(openssl_call([&] {
    return EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, key.data(), key.size());
  }));
  if (!pkey) return make_error("Ed25519 key was rejected by OpenSSL");
  return pkey;
}

Result<EvpPkeyPtr> p256_key(std::span<const std::uint8_t> key) {
  if (key.size() != kP256KeyLength) {
    return make_error("ECDSA P-256 key is {} bytes, expected {}", key.size(), kP256KeyLength);
  }
  std::vector<std::uint8_t> point;
  point.reserve(1 + key.size());
  point.push_back(0x04);  // SEC 1 uncompressed point
  point.insert(point.end(), key.begin(), key.end());

  OsslParamBldPtr builder(OSSL_PARAM_BLD_new());
  if (!builder ||
      !OSSL_PARAM_BLD_push_utf8_string(builder.get(), OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
      !OSSL_PARAM_BLD_push_octet_string(builder.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(),
                                        point.size())) {
    return make_error("out of memory building a P-256 key");
  }
  OsslParamPtr params(OSSL_PARAM_BLD_to_param(builder.get()));
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  EVP_PKEY* raw = nullptr;
  // An off-curve point leaves errors on OpenSSL's queue: openssl_call drains
  // them, or the next session's SSL_get_error() would read them as its own.
  bool built = openssl_call([&] {
    return params && ctx && EVP_PKEY_fromdata_init(ctx.get()) > 0 &&
           EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) > 0;
  });
  EvpPkeyPtr pkey(raw);
  if (!built) return make_error("ECDSA P-256 key is not a point on the curve");
  bool valid = openssl_call([&] {
    EvpPkeyCtxPtr check(EVP_PKEY_CTX_new_from_pkey(nullptr, pkey.get(), nullptr));
    // The quick check (on the curve, not the point at infinity) suffices:
    // P-256 has cofactor 1, so every such point has the group's order.
    return check && EVP_PKEY_public_check_quick(check.get()) == 1;
  });
  if (!valid) return make_error("ECDSA P-256 key is not a valid public key");
  return pkey;
}

Result<std::vector<std::uint8_t>> spki_of(EVP_PKEY* pkey) {
  unsigned char* der = nullptr;
  int length = openssl_call([&] { return i2d_PUBKEY(pkey, &der); });
  if (length <= 0) return make_error("cannot encode the key as SubjectPublicKeyInfo");
  std::vector<std::uint8_t> out(der, der + length);
  OPENSSL_free(der);
  return out;
}

std::string sha256_hex(std::span<const std::uint8_t> bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(), nullptr);
  return to_hex({digest, length});
}

}  // namespace

std::string to_hex(std::span<const std::uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (std::uint8_t b : bytes) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0x0f]);
  }
  return out;
}

std::string algorithm_name(std::uint8_t algorithm) {
  switch (algorithm) {
    case kAlgorithmEd25519: return "Ed25519";
    case kAlgorithmEcdsaP256: return "ECDSA-P256";
    default: return fmt::format("algorithm {}", algorithm);
  }
}

std::string FederationKey::key_base64() const {
  std::string out(4 * ((public_key.size() + 2) / 3) + 1, '\0');
  int length = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), public_key.data(),
                               static_cast<int>(public_key.size()));
  out.resize(static_cast<std::size_t>(length));
  return out;
}

bool FederationKey::same_key(const FederationKey& other) const {
  return algorithm == other.algorithm && public_key == other.public_key;
}

Result<FederationKey> make_federation_key(std::uint16_t flags, std::uint8_t protocol,
                                          std::uint8_t algorithm,
                                          std::span<const std::uint8_t> key) {
  if (flags != kKeyFlagsEntity) {
    return make_error("flags {}, expected {} (entity key)", flags, kKeyFlagsEntity);
  }
  if (protocol != kKeyProtocolTls) {
    return make_error("protocol {}, expected {} (TLS)", protocol, kKeyProtocolTls);
  }
  Result<EvpPkeyPtr> pkey = [&]() -> Result<EvpPkeyPtr> {
    switch (algorithm) {
      case kAlgorithmEd25519: return ed25519_key(key);
      case kAlgorithmEcdsaP256: return p256_key(key);
      default:
        return make_error("algorithm {} is not supported (use {} Ed25519 or {} ECDSA P-256)",
                          algorithm, kAlgorithmEd25519, kAlgorithmEcdsaP256);
    }
  }();
  if (!pkey) return pkey.error();

  Result<std::vector<std::uint8_t>> spki = spki_of(pkey->get());
  if (!spki) return spki.error();

  // The key tag is computed over the RDATA exactly as it is on the wire.
  std::vector<std::uint8_t> rdata = {static_cast<std::uint8_t>(flags >> 8),
                                     static_cast<std::uint8_t>(flags & 0xff), protocol, algorithm};
  rdata.insert(rdata.end(), key.begin(), key.end());

  FederationKey out;
  out.algorithm = algorithm;
  out.key_tag = ldns_calc_keytag_raw(rdata.data(), rdata.size());
  out.public_key.assign(key.begin(), key.end());
  out.spki_sha256 = sha256_hex(*spki);
  out.spki_der = std::move(spki).value();
  return out;
}

Result<FederationKey> KeyRecordMemo::decode(std::uint16_t flags, std::uint8_t protocol, std::uint8_t algorithm,
                                            std::span<const std::uint8_t> key) {
  std::string rdata;
  rdata.reserve(4 + key.size());
  rdata.push_back(static_cast<char>(flags >> 8));
  rdata.push_back(static_cast<char>(flags & 0xff));
  rdata.push_back(static_cast<char>(protocol));
  rdata.push_back(static_cast<char>(algorithm));
  rdata.append(reinterpret_cast<const char*>(key.data()), key.size());
  if (auto it = index_.find(rdata); it != index_.end()) {
    ++hits_;
    recent_.splice(recent_.begin(), recent_, it->second);
    return it->second->second;
  }
  Result<FederationKey> decoded = make_federation_key(flags, protocol, algorithm, key);
  recent_.emplace_front(rdata, decoded);
  index_.emplace(std::move(rdata), recent_.begin());
  if (index_.size() > capacity_) {
    index_.erase(recent_.back().first);
    recent_.pop_back();
  }
  return decoded;
}

Result<FederationKey> parse_key_rr(const ldns_rr* rr, KeyRecordMemo* memo) {
  if (ldns_rr_get_type(rr) != LDNS_RR_TYPE_KEY) return make_error("not a KEY record");
  if (ldns_rr_rd_count(rr) != 4) {
    return make_error("KEY record has {} RDATA fields, expected 4", ldns_rr_rd_count(rr));
  }
  const ldns_rdf* flags = ldns_rr_rdf(rr, 0);
  const ldns_rdf* protocol = ldns_rr_rdf(rr, 1);
  const ldns_rdf* algorithm = ldns_rr_rdf(rr, 2);
  const ldns_rdf* key = ldns_rr_rdf(rr, 3);
  if (ldns_rdf_size(flags) != 2 || ldns_rdf_size(protocol) != 1 || ldns_rdf_size(algorithm) != 1) {
    return make_error("KEY record RDATA is malformed");
  }
  std::span<const std::uint8_t> bytes{ldns_rdf_data(key), ldns_rdf_size(key)};
  if (memo != nullptr) {
    return memo->decode(ldns_rdf2native_int16(flags), ldns_rdf2native_int8(protocol), ldns_rdf2native_int8(algorithm),
                        bytes);
  }
  return make_federation_key(ldns_rdf2native_int16(flags), ldns_rdf2native_int8(protocol),
                             ldns_rdf2native_int8(algorithm), bytes);
}

KeyRecordSet parse_key_records(const ldns_rr_list* rrs, KeyRecordMemo* memo) {
  KeyRecordSet out;
  for (std::size_t i = 0; i < ldns_rr_list_rr_count(rrs); ++i) {
    const ldns_rr* rr = ldns_rr_list_rr(rrs, i);
    if (ldns_rr_get_type(rr) != LDNS_RR_TYPE_KEY) continue;
    ++out.key_records;
    Result<FederationKey> key = parse_key_rr(rr, memo);
    if (key) {
      out.keys.push_back(std::move(key).value());
      continue;
    }
    MallocString text(ldns_rr2str(rr));
    std::string record = text ? text.get() : "(unprintable KEY record)";
    while (!record.empty() && (record.back() == '\n' || record.back() == ' ')) record.pop_back();
    // A KEY's RDATA may be 64 KiB; what is kept of a record that is only
    // reported is bounded (docs/SECURITY.md, "Budgets").
    if (record.size() > kMaxSkippedRecordText) record = record.substr(0, kMaxSkippedRecordText) + "...";
    out.skipped.push_back({std::move(record), key.error().message});
  }
  return out;
}

}  // namespace keyfed
