#include "tooling/knot_testbed.h"

#include <algorithm>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include "federation/identity.h"
#include "tooling/dns_update.h"
#include "tooling/knot_server.h"
#include "tooling/testbed.h"
#include "tooling/zone_signer.h"

namespace keyfed {
namespace fs = std::filesystem;

namespace {

fs::path knot_dir(Testbed& tb) { return tb.dir() / "knot"; }

// The DS records Knot's setup put in test. for each child (by owner), read
// back from the zone file it wrote: the DS a repaired delegation gets again.
std::map<std::string, std::string> real_ds_records(Testbed& tb) {
  std::map<std::string, std::string> ds;
  std::ifstream in(knot_dir(tb) / "zones" / "test.zone");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::vector<std::string> w{std::istream_iterator<std::string>(words), std::istream_iterator<std::string>()};
    if (w.size() >= 5 && (w[3] == "DS" || w[2] == "DS")) {
      std::string owner = w[0];
      if (!owner.empty() && owner.back() == '.') owner.pop_back();
      ds[owner] = line;
    }
  }
  return ds;
}

// Every KEY record the domain's zone may hold: one per key file in its node
// directory (published or not), so an update can remove all but the wanted.
std::vector<std::pair<std::string, std::string>> key_records(Testbed& tb, const TestbedDomain& d) {
  std::vector<std::pair<std::string, std::string>> records;  // (file, record)
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(tb.node_dir(d), ec)) {
    std::string name = entry.path().filename().string();
    if (!name.starts_with("key-") || !name.ends_with(".pem")) continue;
    Result<DomainIdentity> id = load_domain_identity(d.name, entry.path());
    if (id) records.emplace_back(name, key_record_text(d.name, id->public_key, tb.key_ttl()));
  }
  return records;
}

Result<KnotInfo> info_of(Testbed& tb) { return read_knot_setup(knot_dir(tb)); }

Status update(Testbed& tb, const DnsUpdate& u) {
  Result<KnotInfo> info = info_of(tb);
  if (!info) return info.error();
  Result<TsigKey> key = read_tsig_file(info->tsig_file);
  if (!key) return key.error();
  Result<DnsServer> server = parse_dns_server(info->server());
  if (!server) return server.error();
  if (Status s = send_dns_update(*server, *key, u); !s) return make_error("update of {}: {}", u.zone, s.error().message);
  return ok_status();
}

}  // namespace

Status knot_write_setup(Testbed& tb, std::uint16_t port) {
  KnotSetup setup;
  setup.dir = knot_dir(tb);
  setup.port = port;
  setup.ttl = tb.key_ttl();
  setup.zones.push_back({"test", ""});
  for (TestbedDomain& d : tb.domains()) {
    std::string records = "@ A 127.0.0.1\n";
    for (const std::string& file : d.published_keys) {
      Result<DomainIdentity> id = load_domain_identity(d.name, tb.node_dir(d) / file);
      if (!id) return id.error();
      records += key_record_text(d.name, id->public_key, tb.key_ttl()) + "\n";
    }
    if (d.port != 0) records += fmt::format("_impp._tcp SRV 0 0 {} {}.\n", d.port, d.name);
    setup.zones.push_back({d.name, records});
  }
  Result<KnotInfo> info = write_knot_setup(setup);
  if (!info) return info.error();
  // The testbed's trust anchor is Knot's key for test.
  std::error_code ec;
  fs::copy_file(info->trust_anchor, tb.dir() / "trust-anchor.ds", fs::copy_options::overwrite_existing, ec);
  if (ec) return make_error("{}: cannot copy the trust anchor: {}", info->trust_anchor.string(), ec.message());
  return ok_status();
}

Result<pid_t> knot_start(Testbed& tb) {
  Result<pid_t> pid = start_knot(knot_dir(tb));
  if (!pid) return pid.error();
  // Knot's setup delegates every zone with its DS and publishes the keys of
  // the start; the testbed's state since (keys rolled or removed, special
  // cases: no DS for insecure, a stray DS for bogus) is applied by update,
  // also after a restart, when Knot reads its zone files again.
  std::vector<std::string> all{"test"};
  for (const TestbedDomain& d : tb.domains()) all.push_back(d.name);
  if (Status s = knot_publish(tb, all); !s) return s.error();
  return pid;
}

Status knot_stop(Testbed& tb) { return stop_knot(knot_dir(tb)); }

Status knot_publish(Testbed& tb, const std::vector<std::string>& zones) {
  std::set<std::string> changed(zones.begin(), zones.end());
  if (changed.count("test") != 0) {
    std::map<std::string, std::string> real = real_ds_records(tb);
    DnsUpdate u{.zone = "test", .add = {}, .remove = {}};
    for (TestbedDomain& d : tb.domains()) {
      Result<ZoneKey> stray = ZoneKey::load(d.name, (tb.dir() / "zonekeys" / "stray.private").string());
      if (!stray) return stray.error();
      std::string stray_ds = stray->ds_record(tb.key_ttl());
      std::string real_ds = real.count(d.name) ? real[d.name] : "";
      std::string wanted = d.kind == TestbedKind::Insecure ? "" : d.ds_broken ? stray_ds : real_ds;
      for (const std::string& ds : {real_ds, stray_ds}) {
        if (!ds.empty() && ds != wanted) u.remove.push_back(ds);
      }
      if (!wanted.empty()) u.add.push_back(wanted);
    }
    if (Status s = update(tb, u); !s) return s;
  }
  for (TestbedDomain& d : tb.domains()) {
    if (changed.count(d.name) == 0) continue;
    DnsUpdate u{.zone = d.name, .add = {}, .remove = {}};
    for (const auto& [file, record] : key_records(tb, d)) {
      bool wanted = std::find(d.published_keys.begin(), d.published_keys.end(), file) != d.published_keys.end();
      (wanted ? u.add : u.remove).push_back(record);
    }
    if (Status s = update(tb, u); !s) return s;
  }
  return ok_status();
}

}  // namespace keyfed
