#include <fstream>

#include <catch2/catch.hpp>

#include <openssl/err.h>

#include "common/c_handles.h"
#include "dnskey/key_record.h"
#include "harness.h"

using namespace keyfed;

namespace {

LdnsRrPtr parse_rr(const std::string& text) {
  ldns_rr* rr = nullptr;
  REQUIRE(ldns_rr_new_frm_str(&rr, text.c_str(), 0, nullptr, nullptr) == LDNS_STATUS_OK);
  return LdnsRrPtr(rr);
}

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  std::size_t start = 0;
  while (start < s.size() && std::isspace(static_cast<unsigned char>(s[start]))) ++start;
  return s.substr(start);
}

}  // namespace

TEST_CASE("KEY records from testdata/key_records.txt are accepted or skipped with their reason",
          "[key_record]") {
  std::ifstream file(test::testdata_dir() / "key_records.txt");
  REQUIRE(file);
  std::string line;
  int line_no = 0, cases = 0;
  while (std::getline(file, line)) {
    ++line_no;
    if (line.empty() || line[0] == '#') continue;
    auto bar = line.find('|');
    REQUIRE(bar != std::string::npos);
    std::string expect = trim(line.substr(0, bar));
    std::string record = trim(line.substr(bar + 1));
    INFO("key_records.txt:" << line_no << ": " << record);
    LdnsRrPtr rr = parse_rr(record);
    Result<FederationKey> key = parse_key_rr(rr.get());
    if (expect == "usable") {
      REQUIRE(key.ok());
      CHECK(key->key_tag == ldns_calc_keytag(rr.get()));
      CHECK(key->spki_sha256.size() == 64);
      CHECK(record.find(key->key_base64()) != std::string::npos);
    } else {
      REQUIRE(expect.rfind("skip: ", 0) == 0);
      REQUIRE_FALSE(key.ok());
      CHECK_THAT(key.error().message, Catch::Contains(expect.substr(6)));
    }
    ++cases;
  }
  CHECK(cases >= 15);
}

TEST_CASE("one bad record does not spoil the set: usable keys and skipped records are both reported",
          "[key_record]") {
  LdnsRrListPtr list(ldns_rr_list_new());
  for (const char* text : {
           "_impp._tcp.a.test. 300 IN KEY 512 1 15 x7rvGegRSa07SJBWN4CnzwS5cvMLC2gOuBB/Atj/AXk=",
           "_impp._tcp.a.test. 300 IN KEY 512 3 15 x7rvGegRSa07SJBWN4CnzwS5cvMLC2gOuBB/Atj/AXk=",
           "_impp._tcp.a.test. 300 IN TXT \"not a key\"",
       }) {
    ldns_rr_list_push_rr(list.get(), parse_rr(text).release());
  }
  KeyRecordSet set = parse_key_records(list.get());
  CHECK(set.key_records == 2);
  REQUIRE(set.keys.size() == 1);
  CHECK(set.keys[0].algorithm == kAlgorithmEd25519);
  REQUIRE(set.skipped.size() == 1);
  CHECK_THAT(set.skipped[0].record, Catch::Contains("KEY\t512 3 15"));
  CHECK_THAT(set.skipped[0].reason, Catch::Contains("protocol 3"));
}

TEST_CASE("the SPKI fingerprint of a key matches what OpenSSL computes for the same key",
          "[key_record]") {
  // Same key as in an X.509 certificate: DER SubjectPublicKeyInfo = fixed
  // 12-byte Ed25519 prefix (RFC 8410) followed by the raw key.
  auto rr = parse_rr("_impp._tcp.a.test. 300 IN KEY 512 1 15 x7rvGegRSa07SJBWN4CnzwS5cvMLC2gOuBB/Atj/AXk=");
  Result<FederationKey> key = parse_key_rr(rr.get());
  REQUIRE(key.ok());
  REQUIRE(key->spki_der.size() == 44);
  std::vector<std::uint8_t> prefix(key->spki_der.begin(), key->spki_der.begin() + 12);
  CHECK(to_hex(prefix) == "302a300506032b6570032100");
  std::vector<std::uint8_t> tail(key->spki_der.begin() + 12, key->spki_der.end());
  CHECK(tail == key->public_key);
}

TEST_CASE("small-order Ed25519 keys are refused: with the identity point a forged signature verifies",
          "[key_record][ed25519]") {
  // The identity point (y = 1). OpenSSL takes it as a public key, and the
  // "signature" R = identity, S = 0 verifies for any message: [S]B = R + [k]A
  // is O = O + O. Nobody holds a private key for it.
  std::array<std::uint8_t, 32> identity{};
  identity[0] = 1;
  EvpPkeyPtr raw(EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, identity.data(), identity.size()));
  REQUIRE(raw);
  std::array<std::uint8_t, 64> forged{};
  forged[0] = 1;
  const std::string message = "CertificateVerify of a TLS handshake";
  EvpMdCtxPtr md(EVP_MD_CTX_new());
  REQUIRE(EVP_DigestVerifyInit(md.get(), nullptr, nullptr, nullptr, raw.get()) == 1);
  CHECK(EVP_DigestVerify(md.get(), forged.data(), forged.size(), reinterpret_cast<const unsigned char*>(message.data()),
                         message.size()) == 1);

  Result<FederationKey> key = make_federation_key(kKeyFlagsEntity, kKeyProtocolTls, kAlgorithmEd25519, identity);
  REQUIRE_FALSE(key.ok());
  CHECK_THAT(key.error().message, Catch::Contains("small order"));
}

TEST_CASE("a refused KEY record leaves nothing on OpenSSL's error queue", "[key_record][openssl]") {
  // An off-curve P-256 point makes OpenSSL queue errors; a session reading
  // SSL_get_error() next would take them for its own (docs/SECURITY.md).
  std::vector<std::uint8_t> off_curve(64);
  for (std::size_t i = 0; i < off_curve.size(); ++i) off_curve[i] = static_cast<std::uint8_t>(i + 1);
  ERR_clear_error();
  Result<FederationKey> key = make_federation_key(kKeyFlagsEntity, kKeyProtocolTls, kAlgorithmEcdsaP256, off_curve);
  REQUIRE_FALSE(key.ok());
  CHECK(ERR_peek_error() == 0);
  std::array<std::uint8_t, 32> bad{};
  bad[0] = 2;  // not on the curve
  CHECK_FALSE(make_federation_key(kKeyFlagsEntity, kKeyProtocolTls, kAlgorithmEd25519, bad).ok());
  CHECK(ERR_peek_error() == 0);
}
