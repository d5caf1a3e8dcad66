#include "federation/identity.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <openssl/core_names.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include "common/openssl_call.h"

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
    if (openssl_call([&] { return EVP_PKEY_get_raw_public_key(key, raw, &len); }) != 1 || len != sizeof raw) {
      return make_error("cannot read the Ed25519 public key");
    }
    return make_federation_key(kKeyFlagsEntity, kKeyProtocolTls, kAlgorithmEd25519, {raw, len});
  }
  if (EVP_PKEY_is_a(key, "EC")) {
    char group[32] = {};
    std::size_t group_len = 0;
    if (!openssl_call([&] {
          return EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &group_len);
        }) || std::string_view(group) != "prime256v1") {
      return make_error("EC key is not on P-256");
    }
    std::uint8_t point[65];
    std::size_t len = 0;
    bool read = openssl_call([&] {
      EVP_PKEY_set_utf8_string_param(key, OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, "uncompressed");
      return EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof point, &len) == 1;
    });
    if (!read || len != sizeof point) {
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
  // make a well-formed certificate. A CN holds at most 64 characters
  // (RFC 5280 ub-common-name): a longer domain gets a fixed one.
  std::string common_name = domain.size() <= 64 ? domain : "keyfed";
  std::uint8_t serial[16];
  return openssl_check("cannot build the certificate", [&] {
           X509_NAME* name = X509_get_subject_name(cert.get());
           if (X509_set_version(cert.get(), 2) != 1 || RAND_bytes(serial, sizeof serial) != 1) return 0;
           serial[0] &= 0x7f;
           BnPtr bn(BN_bin2bn(serial, sizeof serial, nullptr));
           return bn && BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert.get())) != nullptr &&
                          X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600) != nullptr &&
                          X509_gmtime_adj(X509_getm_notAfter(cert.get()), 3600L * 24 * 365) != nullptr &&
                          X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                                     reinterpret_cast<const unsigned char*>(common_name.c_str()),
                                                     -1, -1, 0) == 1 &&
                          X509_set_issuer_name(cert.get(), name) == 1 && X509_set_pubkey(cert.get(), key) == 1 &&
                          X509_sign(cert.get(), key, EVP_PKEY_is_a(key, "ED25519") ? nullptr : EVP_sha256()) > 0
                      ? 1
                      : 0;
         })
             ? Result<X509Ptr>(std::move(cert))
             : Result<X509Ptr>(make_error("cannot sign the certificate for {}", domain));
}

// Never asks for a passphrase (OpenSSL's default would read the terminal).
int no_passphrase(char*, int, int, void*) { return -1; }

}  // namespace

Result<DomainIdentity> load_domain_identity(const std::string& domain, const std::filesystem::path& key_file) {
  // Opened once, without following a symbolic link, and checked through the
  // descriptor that is then read: no window between the check and the read.
  // O_NONBLOCK: opening a FIFO must not wait for a writer.
  int fd = ::open(key_file.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ELOOP) {
      return make_error("{}: key file is a symbolic link; name the file itself", key_file.string());
    }
    return make_error("{}: cannot read key file: {}", key_file.string(), std::strerror(errno));
  }
  std::unique_ptr<std::FILE, FileCloser> file(::fdopen(fd, "r"));
  if (!file) {
    ::close(fd);
    return make_error("{}: cannot read key file: {}", key_file.string(), std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) return make_error("{}: cannot stat key file: {}", key_file.string(), std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return make_error("{}: key file is not a regular file", key_file.string());
  if ((st.st_mode & 077) != 0) {
    return make_error("{}: key file is accessible by group or others (mode {:o}); chmod 600 it",
                      key_file.string(), st.st_mode & 0777);
  }
  if (st.st_uid != ::geteuid() && st.st_uid != 0) {
    return make_error("{}: key file is owned by uid {}, neither this user ({}) nor root", key_file.string(),
                      st.st_uid, ::geteuid());
  }
  EvpPkeyPtr key(openssl_call([&] { return PEM_read_PrivateKey(file.get(), nullptr, no_passphrase, nullptr); }));
  if (!key) return make_error("{}: not an unencrypted PEM private key", key_file.string());
  Result<FederationKey> public_key = public_key_of(key.get());
  if (!public_key) return make_error("{}: {}", key_file.string(), public_key.error().message);
  Result<X509Ptr> cert = self_signed_certificate(domain, key.get());
  if (!cert) return make_error("{}: {}", key_file.string(), cert.error().message);
  return DomainIdentity{domain, key_file, std::move(key), std::move(cert).value(), std::move(public_key).value()};
}

Status generate_key_file(const std::filesystem::path& key_file, std::uint8_t algorithm) {
  EvpPkeyPtr key(openssl_call([&]() -> EVP_PKEY* {
    if (algorithm == kAlgorithmEd25519) return EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
    if (algorithm == kAlgorithmEcdsaP256) return EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
    return nullptr;
  }));
  if (!key) return make_error("cannot generate a key of algorithm {}", algorithm);
  // Crash-safe: the key is written and synced under a temporary name, then
  // linked to its own (link() fails if the name exists, as O_EXCL would), so
  // the name never holds a partial key, even after a power loss.
  std::filesystem::path dir = key_file.has_parent_path() ? key_file.parent_path() : std::filesystem::path(".");
  std::string tmp = (dir / ("." + key_file.filename().string() + ".tmp-XXXXXX")).string();
  int fd = ::mkstemp(tmp.data());
  if (fd < 0) return make_error("{}: cannot create key file: {}", key_file.string(), std::strerror(errno));
  struct Unlink {
    std::string path;
    ~Unlink() { ::unlink(path.c_str()); }
  } cleanup{tmp};
  ::fchmod(fd, 0600);
  std::unique_ptr<std::FILE, FileCloser> file(::fdopen(fd, "w"));
  if (!file) {
    ::close(fd);
    return make_error("{}: cannot write key file", key_file.string());
  }
  if (Status s = openssl_check("cannot write key file", [&] {
        return PEM_write_PrivateKey(file.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr);
      });
      !s) {
    return make_error("{}: {}", key_file.string(), s.error().message);
  }
  if (std::fflush(file.get()) != 0 || ::fsync(::fileno(file.get())) != 0) {
    return make_error("{}: cannot write key file: {}", key_file.string(), std::strerror(errno));
  }
  if (::link(tmp.c_str(), key_file.c_str()) != 0) {
    return make_error("{}: cannot create key file: {}", key_file.string(), std::strerror(errno));
  }
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return ok_status();
}

std::string key_record_text(const std::string& domain, const FederationKey& key, std::uint32_t ttl) {
  return fmt::format("_impp._tcp.{}. {} IN KEY {} {} {} {}", domain, ttl, kKeyFlagsEntity, kKeyProtocolTls,
                     key.algorithm, key.key_base64());
}

std::vector<std::uint8_t> certificate_spki(const X509* certificate) {
  if (certificate == nullptr) return {};
  EVP_PKEY* key = openssl_call([&] { return X509_get0_pubkey(certificate); });
  if (key == nullptr) return {};
  unsigned char* der = nullptr;
  int length = openssl_call([&] { return i2d_PUBKEY(key, &der); });
  if (length <= 0) return {};
  std::vector<std::uint8_t> out(der, der + length);
  OPENSSL_free(der);
  return out;
}

}  // namespace keyfed
