// Finding a peer domain's federation servers (docs/PROTOCOL.md §8): SRV
// `_impp._tcp.<domain>` ordered by RFC 2782 priority and weight, each
// target's A and AAAA; without SRV, the domain's own A and AAAA on the
// default port. Everything through the node's validating resolver.
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "common/result.h"
#include "dnskey/resolver.h"

namespace keyfed {

struct SrvRecord {
  std::uint16_t priority = 0;
  std::uint16_t weight = 0;
  std::uint16_t port = 0;
  std::string target;  ///< without trailing dot; "." (root) means "no service"
};

/// RFC 2782 order: ascending priority; within one priority, repeated
/// weighted random choice (weight 0 records first in the running sum, so
/// they are chosen rarely but possibly).
std::vector<SrvRecord> order_srv_records(std::vector<SrvRecord> records, std::mt19937& random);

struct ServerAddress {
  std::string host;     ///< SRV target, or the domain itself
  std::string address;  ///< IPv4 or IPv6 literal
  int port = 0;
};

/// Bounds on what one discovery returns (docs/SECURITY.md, "Budgets"): a
/// domain's DNS cannot make the node try thousands of addresses.
inline constexpr std::size_t kMaxSrvTargets = 8;
inline constexpr std::size_t kMaxAddressesPerHost = 4;
inline constexpr std::size_t kMaxServers = 16;

struct DiscoveredServers {
  std::vector<ServerAddress> servers;  ///< in the order to try them; at most kMaxServers
  bool via_srv = false;
  bool secure = false;  ///< every answer used was DNSSEC-validated
};

/// Why a discovery found no server, for callers that report it (`keyfed
/// check`): the DNS could not be asked or judged, or it says there is none.
enum class DiscoveryFailure {
  None,       ///< servers were found
  TempFail,   ///< an SRV query, or every address query that found nothing, failed or timed out (SERVFAIL, REFUSED, deadline)
  Bogus,      ///< an SRV or address answer failed DNSSEC validation
  NoService,  ///< a single SRV record with target "." (RFC 2782)
  NoAddress,  ///< no A or AAAA record for any target (or for the domain, without SRV)
};

class Discovery {
 public:
  using Callback = std::function<void(Result<DiscoveredServers>)>;
  /// The same result, with why there is no server when it is an error.
  using DetailedCallback = std::function<void(Result<DiscoveredServers>, DiscoveryFailure)>;
  /// The resolver must outlive this object.
  Discovery(KeyResolver& resolver, int default_port);
  ~Discovery();
  Discovery(const Discovery&) = delete;
  Discovery& operator=(const Discovery&) = delete;

  /// Finds the servers of `domain` (normalized). A bogus answer is an error,
  /// never a reason to fall back (no downgrade). The callback runs on the loop.
  void discover(const std::string& domain, Callback callback);
  void discover(const std::string& domain, DetailedCallback callback);
  /// For discoveries started from now on.
  void set_default_port(int port) { default_port_ = port; }

 private:
  struct Job;
  void on_srv(const std::shared_ptr<Job>& job, const struct ub_result* answer, const std::string& failure);
  void resolve_hosts(const std::shared_ptr<Job>& job);

  KeyResolver& resolver_;
  int default_port_;
  std::mt19937 random_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace keyfed
