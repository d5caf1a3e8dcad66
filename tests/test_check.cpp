// Tests of `keyfed check` (docs/CLI.md).
