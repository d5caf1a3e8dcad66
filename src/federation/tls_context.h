// The node's TLS 1.3 contexts (docs/PROTOCOL.md §2) for one set of hosted
// identities. A reload builds new ones; a session keeps those it started
// with for as long as it lives.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "common/c_handles.h"
#include "common/result.h"
#include "federation/identity.h"

namespace keyfed {

/// The hosted domains' identities; `first` answers a client without SNI.
struct IdentitySet {
  std::map<std::string, std::shared_ptr<const DomainIdentity>, std::less<>> by_domain;
  std::shared_ptr<const DomainIdentity> first;

  /// nullptr when `domain` is not hosted.
  std::shared_ptr<const DomainIdentity> find(std::string_view domain) const;
};

/// A client context exactly as a node's (TLS 1.3 only, its groups and
/// signature algorithms, ALPN keyfed/2, any certificate accepted: the key is
/// checked against DNS afterwards), without a certificate of its own. The
/// node's client context is one of these; `keyfed check` probes servers with it.
Result<SslCtxPtr> make_client_context();

class TlsContexts {
 public:
  /// Server and client contexts: TLS 1.3 only, X25519/P-256, Ed25519 and
  /// ECDSA P-256 signatures, ALPN keyfed/2, no tickets or resumption. The
  /// server presents the identity named by SNI, and requires a client
  /// certificate unless `client_certificate_optional` (the policy admits
  /// unauthenticated peers).
  static Result<std::shared_ptr<const TlsContexts>> create(std::shared_ptr<const IdentitySet> identities,
                                                            bool client_certificate_optional);
  ~TlsContexts();
  TlsContexts(const TlsContexts&) = delete;
  TlsContexts& operator=(const TlsContexts&) = delete;

  SSL_CTX* server() const { return server_.get(); }
  SSL_CTX* client() const { return client_.get(); }
  const IdentitySet& identities() const { return *identities_; }
  bool client_certificate_optional() const { return client_certificate_optional_; }

 private:
  TlsContexts() = default;
  std::shared_ptr<const IdentitySet> identities_;
  SslCtxPtr server_;
  SslCtxPtr client_;
  bool client_certificate_optional_ = false;
};

}  // namespace keyfed
