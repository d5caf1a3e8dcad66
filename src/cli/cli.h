// The keyfed command line (docs/CLI.md). Kept apart from main() so tests can
// run commands in-process and read what they print.
#pragma once

#include <ostream>

namespace keyfed {

/// Exit statuses are a contract with scripts: never renumber them.
/// lookup: with several domains, the highest status among them is returned.
enum class ExitStatus : int {
  Ok = 0,             ///< every domain resolved to keys or no-keys
  InternalError = 1,  ///< a bug or resource failure inside keyfed
  BadInput = 2,       ///< bad arguments, config, zone or trust anchor file, domain name
  TempFail = 3,       ///< at least one domain: temp-fail
  Insecure = 4,       ///< at least one domain: insecure
  Unusable = 5,       ///< at least one domain: unusable
  Bogus = 6,          ///< at least one domain: bogus
  Refused = 7,        ///< send --direct: the receiver NACKed the message
  NoSession = 8,      ///< send --direct: discovery, connection or authentication failed
  NotRunning = 9,     ///< commands for a running node: no node answers on its control socket
  TooEarly = 10,      ///< rollover: the step is refused for now; retry at the time it names
  UpdateFailed = 11,  ///< rollover --update: the dynamic update failed or was refused
  NotSwitched = 12,   ///< rollover: the running node does not present the key it should
};

/// Runs `keyfed ARGS...`; returns the process exit status.
int run_cli(int argc, const char* const* argv, std::ostream& out, std::ostream& err);

}  // namespace keyfed
