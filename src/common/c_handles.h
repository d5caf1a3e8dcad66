// Owners for the C library objects keyfed uses: every OpenSSL, ldns and
// libunbound object lives in one of these, so no path can forget its free.
// (libuv handles are different; see common/uv_handle.h.)
#pragma once

#include <cstdlib>
#include <memory>

#include "common/ldns.h"
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <unbound.h>

namespace keyfed {

template <auto FreeFunction>
struct CFree {
  template <typename T>
  void operator()(T* object) const {
    if (object != nullptr) FreeFunction(object);
  }
};

template <typename T, auto FreeFunction>
using CPtr = std::unique_ptr<T, CFree<FreeFunction>>;

using BnPtr = CPtr<BIGNUM, BN_free>;
using BnCtxPtr = CPtr<BN_CTX, BN_CTX_free>;
using X509Ptr = CPtr<X509, X509_free>;
using SslCtxPtr = CPtr<SSL_CTX, SSL_CTX_free>;
using SslPtr = CPtr<SSL, SSL_free>;
using EvpPkeyPtr = CPtr<EVP_PKEY, EVP_PKEY_free>;
using EvpPkeyCtxPtr = CPtr<EVP_PKEY_CTX, EVP_PKEY_CTX_free>;
using EvpMdCtxPtr = CPtr<EVP_MD_CTX, EVP_MD_CTX_free>;
using OsslParamBldPtr = CPtr<OSSL_PARAM_BLD, OSSL_PARAM_BLD_free>;
using OsslParamPtr = CPtr<OSSL_PARAM, OSSL_PARAM_free>;

using LdnsRrPtr = CPtr<ldns_rr, ldns_rr_free>;
using LdnsRrListPtr = CPtr<ldns_rr_list, ldns_rr_list_deep_free>;
using LdnsRdfPtr = CPtr<ldns_rdf, ldns_rdf_deep_free>;
using LdnsPktPtr = CPtr<ldns_pkt, ldns_pkt_free>;
using LdnsZonePtr = CPtr<ldns_zone, ldns_zone_deep_free>;

using UbCtxPtr = CPtr<ub_ctx, ub_ctx_delete>;
using UbResultPtr = CPtr<ub_result, ub_resolve_free>;

/// For strings that ldns allocates with malloc (ldns_rr2str and friends).
struct MallocFree {
  void operator()(void* p) const { std::free(p); }
};
using MallocString = std::unique_ptr<char, MallocFree>;

}  // namespace keyfed
