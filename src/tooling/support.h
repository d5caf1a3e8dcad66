// Small helpers of the tooling layer: atomic files and running a program.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "common/result.h"

namespace keyfed {

/// Writes `text` to `file` atomically: a temporary file in the same
/// directory with `mode`, fsync, rename over `file`, fsync of the directory.
/// A crash leaves either the old file or the new one, never a mix.
Status write_file_atomic(const std::filesystem::path& file, const std::string& text, unsigned mode = 0600);

/// Reads a whole (small) file.
Result<std::string> read_small_file(const std::filesystem::path& file, std::size_t limit = 1 << 20);

/// Runs argv[0] (a path) with argv, no shell, stdin /dev/null, no inherited
/// descriptors; returns its stdout+stderr if it exits 0, else an error with
/// the output quoted (untrusted).
Result<std::string> run_program(const std::vector<std::string>& argv);

/// The same, whatever the exit status: the status (128 + signal when a
/// signal ended it) and the output (at most 1 MiB kept).
struct ProgramRun {
  int status = 0;
  std::string output;
};
Result<ProgramRun> run_program_status(const std::vector<std::string>& argv);

/// NAME on PATH (then /usr/sbin, /usr/bin), executable.
Result<std::filesystem::path> find_program(const std::string& name);

/// A free TCP+UDP port on 127.0.0.1 a moment ago.
Result<int> pick_free_port(const std::string& address = "127.0.0.1");

}  // namespace keyfed
