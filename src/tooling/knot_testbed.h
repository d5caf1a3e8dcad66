// The testbed's DNS in Knot mode (docs/TESTBED.md, "Knot DNS"): one knotd
// on loopback serving and signing every testbed zone, changed by dynamic
// update while the nodes run.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/result.h"

namespace keyfed {

class Testbed;

/// Writes Knot's setup for the testbed's zones into DIR/knot (zone keys
/// imported into its KASP, zones with the DS chain, TSIG key, knot.conf) and
/// makes its key for test. the testbed's trust anchor.
Status knot_write_setup(Testbed& testbed, std::uint16_t port);
/// Starts knotd for the testbed's zones (detached); its pid once every zone
/// answers signed.
Result<pid_t> knot_start(Testbed& testbed);
/// Stops the testbed's knotd and waits for it to go.
Status knot_stop(Testbed& testbed);
/// Brings the served zones in line with the testbed's state by dynamic update.
Status knot_publish(Testbed& testbed, const std::vector<std::string>& zones);

}  // namespace keyfed
