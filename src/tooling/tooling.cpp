// The tooling layer: keyfed check, rollover and testbed (docs/CLI.md,
// docs/TESTBED.md). This file anchors the library while its modules land.
namespace keyfed {}
