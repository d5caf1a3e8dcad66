// The federation testbed (docs/TESTBED.md, "keyfed testbed"): a signed
// `test.` parent and N signed child domains generated into one directory,
// one `keyfed run` process per domain, and DNS either embedded (each node's
// libunbound loads the signed zone files) or one Knot DNS server on
// loopback that signs the zones itself and takes dynamic updates.
//
// Everything the testbed knows lives in DIR/testbed.json, so `up`, `status`,
// `run` and `down` are separate invocations of keyfed, like a script's.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"

namespace keyfed {

enum class TestbedDns { Embedded, Knot };
std::string_view to_string(TestbedDns dns);

/// What a testbed domain is for. Only `Node` domains run a node; the others
/// are DNS special cases a node must handle (docs/POLICY.md §1).
enum class TestbedKind { Node, NoKeys, Insecure, Bogus };
std::string_view to_string(TestbedKind kind);

struct TestbedOptions {
  std::filesystem::path dir = "keyfed-testbed";
  int domains = 3;                        ///< Node domains, 1..200
  TestbedDns dns = TestbedDns::Embedded;
  bool special = false;                   ///< also nokeys.test, insecure.test, bogus.test
  std::uint16_t base_port = 25500;        ///< DNS on it (Knot), node i on base_port + i
  std::uint32_t key_ttl = 10;             ///< TTL of the KEY RRsets, seconds
};

struct TestbedDomain {
  std::string name;
  TestbedKind kind = TestbedKind::Node;
  std::uint16_t port = 0;  ///< its node's, 0 without one
  /// Federation key files (relative to the domain's node directory) whose
  /// KEY records the zone publishes, and the one the node presents.
  std::vector<std::string> published_keys;
  std::string node_key;
  bool ds_broken = false;  ///< the parent's DS names a key the zone does not use (bogus)
  bool served = true;      ///< embedded: the nodes load its zone (false: a DNS outage of it)
  pid_t pid = 0;
};

class Testbed {
 public:
  /// Generates a new testbed in options.dir (which must not hold one):
  /// zone keys, federation keys, zones, trust anchor, node configurations.
  static Result<Testbed> create(const TestbedOptions& options);
  /// A testbed made by create(), from DIR/testbed.json.
  static Result<Testbed> open(const std::filesystem::path& dir);

  const std::filesystem::path& dir() const { return dir_; }
  TestbedDns dns() const { return dns_; }
  std::uint32_t key_ttl() const { return key_ttl_; }
  std::vector<TestbedDomain>& domains() { return domains_; }
  TestbedDomain* find(const std::string& name);
  /// The domains that run a node.
  std::vector<TestbedDomain*> nodes();

  /// Every port a node (or Knot) that is not running needs is free; the
  /// error names the one that is not.
  Status check_ports();
  /// Starts DNS (Knot) and every node that is not running; returns once
  /// every node listens and answers on its control socket.
  Status up(std::ostream& progress, std::chrono::seconds limit = std::chrono::seconds(60));
  /// SIGTERM to every node (SIGKILL past `grace`), then stops Knot.
  Status down(std::chrono::seconds grace = std::chrono::seconds(15));

  Status start_node(TestbedDomain& domain);
  /// Waits until the node listens and answers on its control socket.
  Status wait_listening(const TestbedDomain& domain, std::chrono::milliseconds limit);
  /// Sends `signal`; with wait, until the process is gone.
  Status stop_node(TestbedDomain& domain, int signal, bool wait = true);
  bool running(const TestbedDomain& domain) const;
  /// SIGHUP to every running node (they reload their configuration and
  /// judge their sessions again: docs/CONFIG.md "Reload"); returns once each
  /// has logged that it reloaded (an error if one refused or did not).
  Status reload_nodes(std::chrono::milliseconds limit = std::chrono::seconds(30));
  /// The same for some nodes.
  Status reload(const std::vector<TestbedDomain*>& which, std::chrono::milliseconds limit = std::chrono::seconds(30));

  /// Puts the DNS in line with the domains' state (published keys, DS,
  /// served): embedded, the zone files are signed again and every node
  /// reloads; Knot, by dynamic update (or Knot stopped/started for
  /// `served`). `zones` names the zones whose content changed.
  Status publish(const std::vector<std::string>& zones);
  /// Knot mode: stops or starts the DNS server (a DNS outage).
  Status set_dns_running(bool running);

  std::filesystem::path node_dir(const TestbedDomain& domain) const;
  std::filesystem::path node_config(const TestbedDomain& domain) const;
  std::filesystem::path node_socket(const TestbedDomain& domain) const;
  std::filesystem::path node_log(const TestbedDomain& domain) const;
  /// Writes the node's configuration from its state (key, zones served).
  Status write_node_config(const TestbedDomain& domain) const;

  /// One request on a node's control socket (docs/CONTROL.md).
  Result<nlohmann::json> control(const TestbedDomain& domain, const nlohmann::json& request) const;

  /// `testbed status --json` (docs/CLI.md).
  nlohmann::json status();
  /// `testbed status --dot`: the domains and their sessions as a Graphviz graph.
  std::string dot();

  Status save() const;

 private:
  Testbed() = default;
  Status generate_zone_keys();
  Status write_zones(const std::vector<std::string>& zones);
  std::string zone_text(const std::string& origin) const;
  Status start_knot();

  std::filesystem::path dir_;
  TestbedDns dns_ = TestbedDns::Embedded;
  std::uint16_t base_port_ = 25500;
  std::uint32_t key_ttl_ = 10;
  std::vector<TestbedDomain> domains_;
  pid_t knot_pid_ = 0;
};

/// The keyfed binary the testbed starts its nodes with: $KEYFED_BINARY if
/// set, else this process's own executable.
std::filesystem::path keyfed_binary();

}  // namespace keyfed
