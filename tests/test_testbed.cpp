// Tests of `keyfed testbed` (docs/CLI.md).
