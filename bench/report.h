// What every benchmark here shares: its command line and how it reports a
// figure as a ratio to the same-run baseline (docs/BENCH.md).
#pragma once

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace keyfed::bench {

struct Options {
  const char* testbed = nullptr;
  bool quick = false;  ///< few iterations: a smoke run
  bool json = false;
};

/// Parses "NAME TESTBED_DIR [--quick] [--json]"; exits 2 on a usage error.
inline Options parse_options(int argc, char** argv, const char* name) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s TESTBED_DIR [--quick] [--json]\n", name);
    std::exit(2);
  }
  Options options;
  options.testbed = argv[1];
  for (int i = 2; i < argc; ++i) {
    options.quick |= std::strcmp(argv[i], "--quick") == 0;
    options.json |= std::strcmp(argv[i], "--json") == 0;
  }
  return options;
}

inline double ns_per_op(std::chrono::steady_clock::duration d, long ops) {
  return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()) / ops;
}

struct Figure {
  std::string name;
  double keyfed_ns = 0;
  double baseline_ns = 0;
  long iterations = 0;
  std::string baseline = {};  ///< empty: the run's baseline (report()'s); else this figure's own
};

/// Prints the figures as a table (ratio = keyfed / baseline) or as JSON. A
/// figure with its own `baseline` says so under the table.
inline void report(const std::vector<Figure>& figures, bool json, const char* baseline) {
  if (json) {
    std::printf("[\n");
    for (std::size_t i = 0; i < figures.size(); ++i) {
      const Figure& f = figures[i];
      std::string own = f.baseline.empty() ? "" : ", \"baseline\": \"" + f.baseline + "\"";
      std::printf("  {\"name\": \"%s\", \"keyfed_ns\": %.1f, \"baseline_ns\": %.1f, \"ratio\": %.4g, "
                  "\"iterations\": %ld%s}%s\n",
                  f.name.c_str(), f.keyfed_ns, f.baseline_ns, f.keyfed_ns / f.baseline_ns, f.iterations,
                  own.c_str(), i + 1 < figures.size() ? "," : "");
    }
    std::printf("]\n");
    return;
  }
  std::printf("%-26s %14s %16s %8s %12s\n", "benchmark", "keyfed ns/op", "baseline ns/op", "ratio", "keyfed op/s");
  for (const Figure& f : figures) {
    std::printf("%-26s %14.1f %16.1f %8.4g %12.0f\n", f.name.c_str(), f.keyfed_ns, f.baseline_ns,
                f.keyfed_ns / f.baseline_ns, 1e9 / f.keyfed_ns);
  }
  std::printf("baseline: %s, in this run; ratio = keyfed / baseline, below 1 is faster\n", baseline);
  for (const Figure& f : figures) {
    if (!f.baseline.empty()) std::printf("  %s: baseline %s\n", f.name.c_str(), f.baseline.c_str());
  }
}

}  // namespace keyfed::bench
