#include "federation/discovery.h"

#include <algorithm>
#include <map>

#include <unbound.h>

#include "common/c_handles.h"
#include "common/ldns.h"
#include "dnskey/key_answer.h"

namespace keyfed {

struct Discovery::Job {
  std::string domain;
  DetailedCallback callback;
  std::vector<SrvRecord> srv;  // ordered; empty when falling back to the domain's addresses
  bool via_srv = false;
  bool secure = true;
  std::size_t outstanding = 0;
  std::map<std::pair<std::string, int>, std::vector<std::string>> addresses;  // (host, port) -> addresses
  std::vector<std::pair<std::string, int>> hosts;                              // in order
  std::string failure;
  std::string temp_failure;  // an address lookup that failed (not NXDOMAIN or NODATA)

  void fail(DiscoveryFailure why, Error error) { callback(std::move(error), why); }
};

namespace {

std::string strip_dot(std::string name) {
  if (name.size() > 1 && name.back() == '.') name.pop_back();
  return name;
}

std::string rdf_text(const ldns_rdf* rdf) {
  MallocString text(ldns_rdf2str(rdf));
  return text ? text.get() : "";
}

}  // namespace

std::vector<SrvRecord> order_srv_records(std::vector<SrvRecord> records, std::mt19937& random) {
  std::stable_sort(records.begin(), records.end(),
                   [](const SrvRecord& a, const SrvRecord& b) { return a.priority < b.priority; });
  std::vector<SrvRecord> ordered;
  auto begin = records.begin();
  while (begin != records.end()) {
    auto end = std::find_if(begin, records.end(), [&](const SrvRecord& r) { return r.priority != begin->priority; });
    std::vector<SrvRecord> group(begin, end);
    // RFC 2782: zero-weight records first, then pick by a running sum.
    std::stable_partition(group.begin(), group.end(), [](const SrvRecord& r) { return r.weight == 0; });
    while (!group.empty()) {
      std::uint32_t total = 0;
      for (const SrvRecord& r : group) total += r.weight;
      std::uint32_t pick = std::uniform_int_distribution<std::uint32_t>(0, total)(random);
      std::uint32_t sum = 0;
      auto chosen = group.begin();
      for (auto it = group.begin(); it != group.end(); ++it) {
        sum += it->weight;
        if (sum >= pick) {
          chosen = it;
          break;
        }
      }
      ordered.push_back(*chosen);
      group.erase(chosen);
    }
    begin = end;
  }
  return ordered;
}

Discovery::Discovery(KeyResolver& resolver, int default_port)
    : resolver_(resolver), default_port_(default_port), random_(std::random_device{}()) {}

Discovery::~Discovery() { alive_.reset(); }

void Discovery::discover(const std::string& domain, Callback callback) {
  discover(domain, DetailedCallback([callback = std::move(callback)](Result<DiscoveredServers> found,
                                                                      DiscoveryFailure) {
             callback(std::move(found));
           }));
}

void Discovery::discover(const std::string& domain, DetailedCallback callback) {
  auto job = std::make_shared<Job>();
  job->domain = domain;
  job->callback = std::move(callback);
  std::weak_ptr<bool> alive = alive_;
  resolver_.query("_impp._tcp." + domain + ".", LDNS_RR_TYPE_SRV,
                  [this, alive, job](const ub_result* answer, const std::string& failure) {
                    if (!alive.expired()) on_srv(job, answer, failure);
                  });
}

void Discovery::on_srv(const std::shared_ptr<Job>& job, const ub_result* answer, const std::string& failure) {
  if (answer == nullptr) {
    return job->fail(DiscoveryFailure::TempFail, make_error("SRV lookup for {}: {}", job->domain, failure));
  }
  if (answer->bogus) {
    return job->fail(DiscoveryFailure::Bogus, make_error("SRV lookup for {} is bogus: {}", job->domain,
                                    answer->why_bogus != nullptr ? answer->why_bogus : "validation failed"));
  }
  if (answer->rcode != 0 && answer->rcode != 3) {
    return job->fail(DiscoveryFailure::TempFail,
                     make_error("SRV lookup for {} failed (rcode {})", job->domain, answer->rcode));
  }
  job->secure = answer->secure != 0;
  if (answer->havedata) {
    LdnsRrListPtr rrs = answer_records(*answer, LDNS_RR_TYPE_SRV);
    std::vector<SrvRecord> records;
    for (std::size_t i = 0; i < ldns_rr_list_rr_count(rrs.get()); ++i) {
      const ldns_rr* rr = ldns_rr_list_rr(rrs.get(), i);
      if (ldns_rr_rd_count(rr) != 4) continue;
      records.push_back({ldns_rdf2native_int16(ldns_rr_rdf(rr, 0)), ldns_rdf2native_int16(ldns_rr_rdf(rr, 1)),
                         ldns_rdf2native_int16(ldns_rr_rdf(rr, 2)), strip_dot(rdf_text(ldns_rr_rdf(rr, 3)))});
    }
    if (records.size() == 1 && records[0].target == ".") {
      return job->fail(DiscoveryFailure::NoService,
                       make_error("{} says it offers no federation service (SRV target \".\")", job->domain));
    }
    job->srv = order_srv_records(std::move(records), random_);
    if (job->srv.size() > kMaxSrvTargets) job->srv.resize(kMaxSrvTargets);
    job->via_srv = true;
    for (const SrvRecord& r : job->srv) job->hosts.emplace_back(r.target, r.port);
  } else {
    job->hosts.emplace_back(job->domain, default_port_);  // no SRV: the domain itself, default port
  }
  resolve_hosts(job);
}

void Discovery::resolve_hosts(const std::shared_ptr<Job>& job) {
  std::weak_ptr<bool> alive = alive_;
  for (const auto& host : job->hosts) {
    for (std::uint16_t type : {static_cast<std::uint16_t>(LDNS_RR_TYPE_A), static_cast<std::uint16_t>(LDNS_RR_TYPE_AAAA)}) {
      ++job->outstanding;
      resolver_.query(host.first + ".", type, [alive, job, host, type](const ub_result* answer, const std::string&) {
        if (alive.expired()) return;
        if (answer != nullptr && answer->bogus) {
          job->failure = fmt::format("address of {} is bogus", host.first);
        } else if (answer == nullptr || (answer->rcode != 0 && answer->rcode != 3)) {
          // SERVFAIL, REFUSED, a deadline: not "no address" (a transient failure).
          job->temp_failure = fmt::format("the address lookup of {} failed", host.first);
        } else if (answer != nullptr && answer->havedata) {
          job->secure = job->secure && answer->secure != 0;
          LdnsRrListPtr rrs = answer_records(*answer, static_cast<ldns_rr_type>(type));
          std::vector<std::string>& addresses = job->addresses[host];
          for (std::size_t i = 0; i < ldns_rr_list_rr_count(rrs.get()) && addresses.size() < kMaxAddressesPerHost; ++i) {
            addresses.push_back(rdf_text(ldns_rr_rdf(ldns_rr_list_rr(rrs.get(), i), 0)));
          }
        }
        if (--job->outstanding > 0) return;
        if (!job->failure.empty()) return job->fail(DiscoveryFailure::Bogus, make_error("{}", job->failure));
        DiscoveredServers found;
        found.via_srv = job->via_srv;
        found.secure = job->secure;
        for (const auto& h : job->hosts) {
          for (const std::string& address : job->addresses[h]) {
            if (found.servers.size() < kMaxServers) found.servers.push_back({h.first, address, h.second});
          }
        }
        if (found.servers.empty() && !job->temp_failure.empty()) {
          return job->fail(DiscoveryFailure::TempFail, make_error("{}", job->temp_failure));
        }
        if (found.servers.empty()) {
          return job->fail(DiscoveryFailure::NoAddress,
                           make_error("no address found for the servers of {}", job->domain));
        }
        job->callback(std::move(found), DiscoveryFailure::None);
      });
    }
  }
}

}  // namespace keyfed
