// A Knot DNS authoritative server on loopback for a set of zones that Knot
// signs itself (automatic DNSSEC signing with keys we generate and import),
// accepting RFC 2136 updates signed with one TSIG key. Everything lives in
// one directory: nothing system-wide. docs/TESTBED.md, "Knot DNS".
//
//   write_knot_setup(setup)  generate zone keys, zone files (with the DS
//                            chain), trust anchor, TSIG key, knot.conf, KASP
//   start_knot(dir)          start knotd detached (own session, pid file),
//                            return once every zone answers SOA with RRSIG
//   stop_knot(dir)           stop it by its pid file
//   KnotServer               all three in one owner, for tests
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "common/result.h"

namespace keyfed {

/// One zone. Knot signs it; its NS is ns.ORIGIN (an A record at `address`),
/// and for every other zone of the setup directly below it, a delegation
/// (NS, glue) and the child's DS are added.
struct KnotZone {
  std::string origin;   ///< "test", "alpha.test" (no trailing dot)
  std::string records;  ///< more zone file lines, relative to the origin ("_impp._tcp KEY 512 1 15 ...")
  bool sign = true;     ///< false: served unsigned, delegated without DS (an insecure zone)
};

struct KnotSetup {
  std::filesystem::path dir;     ///< created if missing; must not hold a running Knot
  std::string address = "127.0.0.1";
  int port = 0;                  ///< 0: a free port, picked now
  std::uint32_t ttl = 5;         ///< $TTL, SOA minimum, DNSKEY and DS TTL (short: for tests)
  std::vector<KnotZone> zones;   ///< any order; parents are found by name
  std::string tsig_name = "keyfed-update";
};

/// What a set-up directory holds (its setup.json).
struct KnotInfo {
  std::filesystem::path dir;
  std::string address;
  int port = 0;
  std::vector<std::string> zones;
  std::vector<std::string> unsigned_zones;  ///< the zones served without DNSSEC
  std::filesystem::path config;        ///< DIR/knot.conf
  std::filesystem::path trust_anchor;  ///< DIR/trust-anchor.ds: the DS of each zone without a parent in the set
  std::filesystem::path tsig_file;     ///< DIR/tsig.key (BIND format, 0600): may update every zone
  std::filesystem::path pid_file;      ///< DIR/knotd.pid while it runs
  std::filesystem::path log_file;      ///< DIR/knot.log
  /// "ADDR@PORT", for `[resolver] server` and `rollover --update`.
  std::string server() const;
};

/// knotd or keymgr: on PATH, else /usr/sbin, /usr/bin; an error naming the
/// Debian package `knot` if missing.
Result<std::filesystem::path> find_knot_program(const std::string& name);

/// Writes a complete setup into setup.dir (replacing a previous one that is
/// not running): zone keys (Ed25519, generated with ldns, imported into
/// Knot's KASP with `keymgr import-bind`, policy `manual: on` so Knot signs
/// with exactly those keys and never rolls them), zone files, trust anchor,
/// TSIG key, knot.conf and setup.json. Private files are 0600.
Result<KnotInfo> write_knot_setup(const KnotSetup& setup);

/// Reads DIR/setup.json.
Result<KnotInfo> read_knot_setup(const std::filesystem::path& dir);

/// Starts knotd for DIR in its own session (setsid; stdin/stdout /dev/null,
/// stderr to DIR/knotd.stderr, no inherited descriptors), writes
/// DIR/knotd.pid, and returns its pid once every zone answers SOA (with an
/// RRSIG, for the signed ones). It survives the process that started it. If DIR's knotd already
/// runs, returns its pid. On timeout it is stopped and the error quotes its log.
Result<pid_t> start_knot(const std::filesystem::path& dir,
                         std::chrono::milliseconds timeout = std::chrono::seconds(20));

/// Stops DIR's knotd (SIGTERM, SIGKILL after `timeout`) by its pid file, if
/// the pid is still a knotd; removes the pid file. Not running: ok.
Status stop_knot(const std::filesystem::path& dir, std::chrono::milliseconds timeout = std::chrono::seconds(10));

/// Owns a running knotd: set up and started by start(), stopped on destruction.
class KnotServer {
 public:
  static Result<std::unique_ptr<KnotServer>> start(const KnotSetup& setup);
  ~KnotServer();
  KnotServer(const KnotServer&) = delete;
  KnotServer& operator=(const KnotServer&) = delete;
  const KnotInfo& info() const { return info_; }
  pid_t pid() const { return pid_; }

 private:
  KnotServer(KnotInfo info, pid_t pid) : info_(std::move(info)), pid_(pid) {}
  KnotInfo info_;
  pid_t pid_;
};

}  // namespace keyfed
