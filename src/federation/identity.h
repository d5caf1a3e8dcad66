// A hosted domain's identity: its private key(s) and the self-signed
// certificate that merely carries the public key in TLS (docs/PROTOCOL.md §2).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "common/c_handles.h"
#include "common/result.h"
#include "dnskey/key_record.h"

namespace keyfed {

struct DomainIdentity {
  std::string domain;
  std::filesystem::path key_file;
  EvpPkeyPtr key;
  X509Ptr certificate;
  FederationKey public_key;  ///< as it must appear in the domain's KEY RRset
};

/// Loads a PEM private key (Ed25519 or P-256) and wraps it in a fresh
/// self-signed certificate. Like ssh, refuses a key file readable by group or
/// others, owned by another user than this one or root, a symbolic link, or
/// anything but a regular file: a leaked federation key lets anyone speak for
/// the domain. The file is checked through the descriptor it is read from.
Result<DomainIdentity> load_domain_identity(const std::string& domain, const std::filesystem::path& key_file);

/// Generates a new key of the given algorithm and writes it, mode 0600, as
/// PEM. Refuses to overwrite an existing file.
Status generate_key_file(const std::filesystem::path& key_file, std::uint8_t algorithm);

/// The KEY record for a public key: "_impp._tcp.DOMAIN. TTL IN KEY 512 1 ALG BASE64".
std::string key_record_text(const std::string& domain, const FederationKey& key, std::uint32_t ttl);

/// The DER SubjectPublicKeyInfo of a certificate's public key (empty if none).
std::vector<std::uint8_t> certificate_spki(const X509* certificate);

}  // namespace keyfed
