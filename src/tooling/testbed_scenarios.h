// `keyfed testbed run` (docs/TESTBED.md, "Scenarios"): scripted,
// reproducible scenarios against a running testbed, each ending in a pass
// or fail with what happened.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "common/result.h"
#include "tooling/testbed.h"

namespace keyfed {

struct ScenarioResult {
  std::string scenario;
  bool passed = false;
  double seconds = 0;
  std::string detail;
};

/// Every scenario, in the order `testbed run` runs them by default.
const std::vector<std::string>& scenario_names();

/// Runs the named scenarios (all when empty) one after the other; each
/// leaves the testbed as it found it (keys, zones, nodes running). An error
/// only for a testbed that cannot run them (not up, unknown scenario).
Result<std::vector<ScenarioResult>> run_scenarios(Testbed& testbed, const std::vector<std::string>& names,
                                                  std::ostream& progress);

}  // namespace keyfed
