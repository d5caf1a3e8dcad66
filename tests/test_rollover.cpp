// Tests of `keyfed rollover` (docs/CLI.md).
