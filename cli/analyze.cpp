// xmoe analyze: the routing analysis of run directories at every kept checkpoint (RC, RF, expert
// loads), inter-run consistency and token agreement, and token maps; docs/analysis.md, the files:
// docs/run-directory.md.
//   xmoe analyze RUN_DIR [RUN_DIR ...] [--out DIR] [--window M] [--token-map-points N]
#include "commands.h"
#include "validators.h"

#include "xmoe/analysis/run_analysis.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace xmoe::cli {

namespace {

struct AnalyzeArgs {
  std::vector<std::string> runs;
  std::string out;
  int64_t window = 0;
  int64_t token_map_points = 2000;
};

std::string fmt(double v) {
  if (!std::isfinite(v)) return "-";
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.4g", v);
  return buffer;
}

void print_summary(const analysis::RunAnalysis& a, const std::string& out_dir) {
  int width = 3;
  for (const auto& r : a.runs) width = std::max(width, static_cast<int>(r.name.size()));
  std::printf("%-*s %8s %5s %10s %10s %8s %8s\n", width, "run", "step", "layer", "RC router",
              "RC hidden", "RF", "load CV");
  for (const auto& r : a.runs) {
    for (const auto& c : r.checkpoints) {
      if (c.layers.empty())
        std::printf("%-*s %8lld %5s %10s %10s %8s %8s\n", width, r.name.c_str(),
                    static_cast<long long>(c.step), "-", "dense", "-", "-", "-");
      for (const auto& l : c.layers)
        std::printf("%-*s %8lld %5lld %10s %10s %8s %8s\n", width, r.name.c_str(),
                    static_cast<long long>(c.step), static_cast<long long>(l.layer),
                    fmt(l.rc_router).c_str(), fmt(l.rc_hidden).c_str(),
                    l.rf ? fmt(*l.rf).c_str() : "-", fmt(l.load_cv).c_str());
    }
  }
  if (a.consistency) {
    const auto& c = *a.consistency;
    for (const auto& l : c.layers)
      std::printf("consistency, layer %lld: %s (mean over %zu windows of %lld steps)\n",
                  static_cast<long long>(l.layer), fmt(l.mean).c_str(), l.windows.size(),
                  static_cast<long long>(c.window_steps));
    for (const auto& t : c.token_agreement)
      std::printf("token agreement, layer %lld, %s vs %s: %s\n", static_cast<long long>(t.layer),
                  t.run_a.c_str(), t.run_b.c_str(), fmt(t.agreement).c_str());
  }
  size_t maps = 0;
  for (const auto& r : a.runs) maps += r.token_maps.size();
  std::printf("wrote %s/analysis.json, %s/analysis.csv and %zu token map%s "
              "(token_map-<run>-layer<L>.safetensors)\n",
              out_dir.c_str(), out_dir.c_str(), maps, maps == 1 ? "" : "s");
}

void run_analyze(const AnalyzeArgs& a) {
  std::string out = a.out;
  if (out.empty())
    out = a.runs.size() == 1 ? (std::filesystem::path(a.runs[0]) / "analysis").string() : "analysis";
  analysis::RunAnalysisOptions options;
  options.window_steps = a.window;
  options.token_map_points = a.token_map_points;
  const analysis::RunAnalysis result = analysis::analyze_runs(a.runs, options);
  analysis::write_run_analysis(result, out);
  print_summary(result, out);
}

}  // namespace

void register_analyze(CLI::App& app) {
  auto args = std::make_shared<AnalyzeArgs>();
  CLI::App* cmd = app.add_subcommand(
      "analyze", "Routing analysis of runs at every kept checkpoint (RC, RF, expert loads), "
                 "inter-run consistency and token maps -> analysis.json, analysis.csv, "
                 "token_map-*.safetensors (docs/analysis.md)");
  cmd->add_option("runs", args->runs, "Run directories (written by xmoe pretrain)")->required();
  cmd->add_option("--out", args->out,
                  "Output folder (default: RUN_DIR/analysis for one run, else ./analysis)");
  cmd->add_option("--window", args->window,
                  "Steps per consistency window (default: 10 x the runs' log.every)")
      ->check(kPositive);
  cmd->add_option("--token-map-points", args->token_map_points,
                  "Probe tokens per token map, the first N (default 2000; 0 = no maps)")
      ->check(kNonNegative);
  cmd->callback([args] { run_analyze(*args); });
}

}  // namespace xmoe::cli
