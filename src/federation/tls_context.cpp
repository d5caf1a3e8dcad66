#include "federation/tls_context.h"

#include "common/openssl_call.h"
#include "federation/frames.h"

namespace keyfed {
namespace {

// Certificates are only key carriers (docs/PROTOCOL.md §2): OpenSSL's chain
// check is skipped and the key is checked against DNS after the handshake.
int accept_any_certificate(int, X509_STORE_CTX*) { return 1; }

Status configure(SSL_CTX* ctx) {
  // docs/PROTOCOL.md §2: TLS 1.3 only, ephemeral ECDHE, no resumption.
  return openssl_check("cannot configure TLS 1.3", [&] {
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    return SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) == 1 &&
                   SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) == 1 &&
                   SSL_CTX_set1_groups_list(ctx, "X25519:P-256") == 1 &&
                   SSL_CTX_set1_sigalgs_list(ctx, "ed25519:ecdsa_secp256r1_sha256") == 1 &&
                   SSL_CTX_set_num_tickets(ctx, 0) == 1
               ? 1
               : 0;
  });
}

int select_alpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in, unsigned int inlen,
                void*) {
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, outlen, kAlpnWire, sizeof kAlpnWire, in, inlen) != OPENSSL_NPN_NEGOTIATED) {
    return SSL_TLSEXT_ERR_ALERT_FATAL;  // no_application_protocol
  }
  *out = selected;
  return SSL_TLSEXT_ERR_OK;
}

// The responder presents the key of the domain the initiator asked for (SNI).
int select_identity(SSL* ssl, int* alert, void* arg) {
  const auto* identities = static_cast<const IdentitySet*>(arg);
  const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  std::shared_ptr<const DomainIdentity> identity = name != nullptr ? identities->find(name) : identities->first;
  if (!identity) {
    *alert = SSL_AD_UNRECOGNIZED_NAME;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  // OpenSSL keeps one certificate per key type: drop the default one, or an
  // Ed25519 default could be served in place of a P-256 domain key.
  bool ok = openssl_call([&] {
    SSL_certs_clear(ssl);
    return SSL_use_certificate(ssl, identity->certificate.get()) == 1 &&
           SSL_use_PrivateKey(ssl, identity->key.get()) == 1;
  });
  if (!ok) {
    *alert = SSL_AD_INTERNAL_ERROR;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  return SSL_TLSEXT_ERR_OK;
}

}  // namespace

Result<SslCtxPtr> make_client_context() {
  SslCtxPtr client(openssl_call([] { return SSL_CTX_new(TLS_client_method()); }));
  if (!client) return make_error("cannot create a TLS client context");
  if (Status s = configure(client.get()); !s) return s.error();
  SSL_CTX_set_verify(client.get(), SSL_VERIFY_PEER, accept_any_certificate);
  if (Status s = openssl_check("cannot offer ALPN", [&] {
        return SSL_CTX_set_alpn_protos(client.get(), kAlpnWire, sizeof kAlpnWire) == 0 ? 1 : 0;
      });
      !s) {
    return s.error();
  }
  return client;
}

std::shared_ptr<const DomainIdentity> IdentitySet::find(std::string_view domain) const {
  auto it = by_domain.find(domain);
  return it == by_domain.end() ? nullptr : it->second;
}

TlsContexts::~TlsContexts() = default;

Result<std::shared_ptr<const TlsContexts>> TlsContexts::create(std::shared_ptr<const IdentitySet> identities,
                                                               bool client_certificate_optional) {
  if (!identities || !identities->first) return make_error("no hosted domain to present in TLS");
  std::shared_ptr<TlsContexts> out(new TlsContexts());
  out->identities_ = std::move(identities);
  out->client_certificate_optional_ = client_certificate_optional;
  out->server_.reset(openssl_call([] { return SSL_CTX_new(TLS_server_method()); }));
  if (!out->server_) return make_error("cannot create TLS contexts");
  if (Status s = configure(out->server_.get()); !s) return s.error();
  Result<SslCtxPtr> client = make_client_context();
  if (!client) return client.error();
  out->client_ = std::move(client).value();

  SSL_CTX* server = out->server_.get();
  // docs/PROTOCOL.md §2: without a certificate a client cannot authenticate;
  // unless the policy admits unauthenticated peers, the handshake fails, so an
  // anonymous client costs no CLAIM and no lookup.
  int verify = SSL_VERIFY_PEER | (client_certificate_optional ? 0 : SSL_VERIFY_FAIL_IF_NO_PEER_CERT);
  SSL_CTX_set_verify(server, verify, accept_any_certificate);
  SSL_CTX_set_alpn_select_cb(server, select_alpn, nullptr);
  SSL_CTX_set_tlsext_servername_callback(server, select_identity);
  SSL_CTX_set_tlsext_servername_arg(server, const_cast<IdentitySet*>(out->identities_.get()));
  // Without SNI, the first hosted domain answers.
  const DomainIdentity& first = *out->identities_->first;
  if (Status s = openssl_check("cannot install the default certificate", [&] {
        return SSL_CTX_use_certificate(server, first.certificate.get()) == 1 &&
                       SSL_CTX_use_PrivateKey(server, first.key.get()) == 1
                   ? 1
                   : 0;
      });
      !s) {
    return s.error();
  }
  return std::shared_ptr<const TlsContexts>(std::move(out));
}

}  // namespace keyfed
