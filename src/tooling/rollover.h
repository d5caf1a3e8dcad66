// `keyfed rollover`: a stateful federation key rollover in the
// pre-publication style of RFC 7583 §3.1 (docs/KEYS.md, "Rolling keys";
// docs/CLI.md, "keyfed rollover"). One domain of one node configuration:
//
//   next     create the next key beside the current one, print its KEY
//            record (with an update server: add it to DNS)
//   switch   once the new key has been in the validated KEY RRset for the old
//            RRset's TTL + margin: present it (config rewritten, node reloaded)
//   retire   once the switch is TTL + margin old: remove the old record, drop
//            the old key from the config, keep its file renamed *.retired
//
// The state is a JSON file beside the current key (DOMAIN.rollover.json),
// written atomically; each step may be re-run, and after a crash at any point
// re-running the step that was interrupted finishes it.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "dnskey/key_answer.h"
#include "federation/identity.h"
#include "tooling/dns_update.h"

namespace keyfed {

enum class RolloverStep { Plan, Next, Switch, Retire, Show };  // Show: `status`

/// Why a step did not run; the CLI maps each to an exit status.
enum class RolloverFailure {
  BadInput,      ///< arguments, config, state file, TSIG file, step out of order
  TooEarly,      ///< refused: retry at `retry_at`
  DnsFailure,    ///< the validated lookup failed (temp-fail, bogus, insecure, ...)
  UpdateFailed,  ///< the dynamic update was refused or failed
  NotSwitched,   ///< the running node does not present the key it should (its reload failed?)
  Internal,
};

/// Wall-clock seconds since the epoch; injectable for tests.
using WallClock = std::function<std::int64_t()>;
std::int64_t system_wall_clock();

/// A validated lookup of a domain's KEY RRset (through the node's resolver).
using KeyLookup = std::function<DomainKeys(const std::string& domain)>;
/// The real one: a private Reactor with the config's resolver (DaemonParts::Keys).
KeyLookup config_key_lookup(const std::filesystem::path& config);

struct RolloverOptions {
  std::filesystem::path config;
  std::string domain;
  RolloverStep step = RolloverStep::Show;
  std::int64_t margin_seconds = 60;
  std::uint32_t record_ttl = 0;  ///< TTL of an added record; 0: the observed RRset TTL
  std::optional<DnsServer> update_server;  ///< with tsig: publish by dynamic update
  std::optional<TsigKey> tsig;
  std::string zone;              ///< zone to update; empty: DOMAIN
  bool reload = true;            ///< signal the running node after changing its config
};

struct RolloverReport {
  bool ok = false;
  RolloverFailure failure = RolloverFailure::Internal;
  std::string message;        ///< one line for the user (what happened, or why not)
  nlohmann::json json;        ///< docs/CLI.md, "keyfed rollover", JSON
  std::vector<std::string> lines;  ///< human-readable report
};

/// Runs one step. `lookup` and `now` are injectable (tests); normally
/// config_key_lookup(options.config) and system_wall_clock.
RolloverReport run_rollover(const RolloverOptions& options, const KeyLookup& lookup, const WallClock& now);

/// The state file for a domain whose current (first) key is `key_file`.
std::filesystem::path rollover_state_file(const std::filesystem::path& key_file, const std::string& domain);

/// Replaces the `keys` array of the [[domains]] entry named `domain` in the
/// TOML text, leaving every other byte as it was.
Result<std::string> replace_domain_keys(const std::string& text, const std::filesystem::path& origin,
                                        const std::string& domain, const std::vector<std::string>& keys);

/// The SubjectPublicKeyInfo (DER) of the certificate a node presents for
/// `domain` (SNI) at ADDRESS:PORT: a TLS 1.3 handshake as a client showing
/// `client` (one of the domain's own keys, so the node has no handshake to
/// refuse and audit), closed before any CLAIM once the server's certificate
/// is read.
Result<std::vector<std::uint8_t>> presented_spki(const std::string& address, int port, const std::string& domain,
                                                 const DomainIdentity& client,
                                                 std::chrono::milliseconds timeout = std::chrono::seconds(3));

/// The pid of the process serving the control socket (SO_PEERCRED), or an
/// error if nothing answers on it.
Result<int> control_socket_pid(const std::filesystem::path& socket);

}  // namespace keyfed
