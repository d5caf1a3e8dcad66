// The testbed's DNS in Knot mode (docs/TESTBED.md, "Knot DNS"): one knotd
// on loopback serving and signing every testbed zone, changed by dynamic
// update while the nodes run.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "common/result.h"

namespace keyfed {

class Testbed;

/// Starts knotd for the testbed's zones (detached); its pid once every zone
/// answers signed.
Result<pid_t> knot_start(Testbed& testbed);
/// Stops the testbed's knotd and waits for it to go.
Status knot_stop(Testbed& testbed);
/// Brings the served zones in line with the testbed's state by dynamic update.
Status knot_publish(Testbed& testbed, const std::vector<std::string>& zones);

}  // namespace keyfed
