#include "federation/identity.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include <openssl/core_names.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

namespace keyfed {
namespace {

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

// The raw public key in KEY RDATA form (docs/KEYS.md, "Record").
Result<FederationKey> public_key_of(EVP_PKEY* key) {
  if (EVP_PKEY_is_a(key, "ED25519")) {
    std::uint8_t raw[32];
    std::size_t len = sizeof raw;
    if (EVP_PKEY_get_raw_public_key(key, raw, &len) != 1 || len != sizeof raw) {
      return make_error("cannot read the Ed25519 public key");
    }
    return make_federation_key(kKeyFlagsEntity, kKeyProtocolTls, kAlgorithmEd25519, {raw, len});
  }
  if (EVP_PKEY_is_a(key, "EC")) {
    char group[32] = {};
    std::size_t group_len = 0;
    if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &group_len) != 1 ||
        std::string_view(group) != "prime256v1") {
      return make_error("EC key is not on P-256");
    }
    std::uint8_t point[65];
    std::size_t len = 0;
    EVP_PKEY_set_utf8_string_param(key, OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, "uncompressed");
    if (EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof point, &len) != 1 ||
        len != sizeof point) {
      return make_error("cannot read the P-256 public key");
    }
    return make_federation_key(kKeyFlagsEntity, kKeyProtocolTls, kAlgorithmEcdsaP256, {point + 1, 64});
  }
  return make_error("key is neither Ed25519 nor ECDSA P-256");
}

Result<X509Ptr> self_signed_certificate(const std::string& domain, EVP_PKEY* key) {
  X509Ptr cert(X509_new());
  if (!cert) return make_error("out of memory");
  // Names and dates are ignored by peers (like DANE-EE); they only have to
  // make a well-formed certificate.
  X509_set_version(cert.get(), 2);
  std::uint8_t serial[16];
  RAND_bytes(serial, sizeof serial);
  serial[0] &= 0x7f;
  BnPtr bn(BN_bin2bn(serial, sizeof serial, nullptr));
  BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert.get()));
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 3600L * 24 * 365);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(domain.c_str()), -1,
                             -1, 0);
  X509_set_issuer_name(cert.get(), name);
  X509_set_pubkey(cert.get(), key);
  const EVP_MD* digest = EVP_PKEY_is_a(key, "ED25519") ? nullptr : EVP_sha256();
  if (X509_sign(cert.get(), key, digest) <= 0) return make_error("cannot sign the certificate");
  return cert;
}

}  // namespace

Result<DomainIdentity> load_domain_identity(const std::string& domain, const std::filesystem::path& key_file) {
  struct stat st {};
  if (::stat(key_file.c_str(), &st) != 0) {
    return make_error("{}: cannot read key file: {}", key_file.string(), std::strerror(errno));
  }
  if ((st.st_mode & 077) != 0) {
    return make_error("{}: key file is accessible by group or others (mode {:o}); chmod 600 it",
                      key_file.string(), st.st_mode & 0777);
  }
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(key_file.c_str(), "r"));
  if (!file) return make_error("{}: cannot read key file: {}", key_file.string(), std::strerror(errno));
  EvpPkeyPtr key(PEM_read_PrivateKey(file.get(), nullptr, nullptr, nullptr));
  if (!key) return make_error("{}: not a PEM private key", key_file.string());
  Result<FederationKey> public_key = public_key_of(key.get());
  if (!public_key) return make_error("{}: {}", key_file.string(), public_key.error().message);
  Result<X509Ptr> cert = self_signed_certificate(domain, key.get());
  if (!cert) return make_error("{}: {}", key_file.string(), cert.error().message);
  return DomainIdentity{domain, key_file, std::move(key), std::move(cert).value(), std::move(public_key).value()};
}

Status generate_key_file(const std::filesystem::path& key_file, std::uint8_t algorithm) {
  EvpPkeyPtr key(algorithm == kAlgorithmEd25519 ? EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519")
                 : algorithm == kAlgorithmEcdsaP256 ? EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256")
                                                     : nullptr);
  if (!key) return make_error("cannot generate a key of algorithm {}", algorithm);
  int fd = ::open(key_file.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0) return make_error("{}: cannot create key file: {}", key_file.string(), std::strerror(errno));
  std::unique_ptr<std::FILE, FileCloser> file(::fdopen(fd, "w"));
  if (!file) {
    ::close(fd);
    return make_error("{}: cannot write key file", key_file.string());
  }
  if (PEM_write_PrivateKey(file.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return make_error("{}: cannot write key file", key_file.string());
  }
  return ok_status();
}

std::string key_record_text(const std::string& domain, const FederationKey& key, std::uint32_t ttl) {
  return fmt::format("_impp._tcp.{}. {} IN KEY {} {} {} {}", domain, ttl, kKeyFlagsEntity, kKeyProtocolTls,
                     key.algorithm, key.key_base64());
}

std::vector<std::uint8_t> certificate_spki(const X509* certificate) {
  if (certificate == nullptr) return {};
  EVP_PKEY* key = X509_get0_pubkey(certificate);
  if (key == nullptr) return {};
  unsigned char* der = nullptr;
  int length = i2d_PUBKEY(key, &der);
  if (length <= 0) return {};
  std::vector<std::uint8_t> out(der, der + length);
  OPENSSL_free(der);
  return out;
}

}  // namespace keyfed
