// xmoe report: analyses run directories into DIR/analysis (as xmoe analyze does), then draws the
// figures and the self-contained DIR/index.html with scripts/report/make_report.py (python3 with
// numpy and matplotlib; docs/analysis.md).
//   xmoe report RUN_DIR [RUN_DIR ...] --out DIR [--window M] [--token-map-points N]
//               [--tsne-points N]
#include "commands.h"
#include "python_script.h"
#include "validators.h"

#include "xmoe/analysis/run_analysis.h"

#include <filesystem>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace xmoe::cli {

namespace {

struct ReportArgs {
  std::vector<std::string> runs;
  std::string out;
  int64_t window = 0;
  int64_t token_map_points = 2000;
  int64_t tsne_points = -1;  // -1: the script's default
};

void run_report(const ReportArgs& a) {
  namespace fs = std::filesystem;
  const std::string script = find_script("report/make_report.py");  // fail before the analysis
  const std::string analysis_dir = (fs::path(a.out) / "analysis").string();
  // An index.html of an earlier report must not stand beside this analysis if drawing fails.
  std::error_code ec;
  fs::remove(fs::path(a.out) / "index.html", ec);
  analysis::RunAnalysisOptions options;
  options.window_steps = a.window;
  options.token_map_points = a.token_map_points;
  const analysis::RunAnalysis result = analysis::analyze_runs(a.runs, options);
  analysis::write_run_analysis(result, analysis_dir);
  std::cout << "analysis: " << analysis_dir << "/analysis.json" << std::endl;

  std::vector<std::string> args = {"python3", script, "--out", a.out, "--analysis", analysis_dir};
  if (a.tsne_points >= 0) {
    args.push_back("--tsne-points");
    args.push_back(std::to_string(a.tsne_points));
  }
  args.insert(args.end(), a.runs.begin(), a.runs.end());
  const int status = run_process(args);
  if (status != 0)
    throw std::runtime_error(script + " failed (exit status " + std::to_string(status) +
                             "; its message is above): no report in " + a.out);
  const fs::path index = fs::path(a.out) / "index.html";
  if (!fs::is_regular_file(index))
    throw std::runtime_error(script + " exited 0 but wrote no " + index.string());
  std::cout << "report: " << index.string() << std::endl;
}

}  // namespace

void register_report(CLI::App& app) {
  auto args = std::make_shared<ReportArgs>();
  CLI::App* cmd = app.add_subcommand(
      "report", "Analyse runs (as xmoe analyze, into DIR/analysis) and draw every figure into "
                "DIR/index.html with scripts/report/make_report.py (docs/analysis.md)");
  cmd->add_option("runs", args->runs, "Run directories (written by xmoe pretrain)")->required();
  cmd->add_option("--out", args->out, "Report folder (index.html, figures, analysis/)")->required();
  cmd->add_option("--window", args->window,
                  "Steps per consistency window (default: 10 x the runs' log.every)")
      ->check(kPositive);
  cmd->add_option("--token-map-points", args->token_map_points,
                  "Probe tokens per token map, the first N (default 2000; 0 = no maps)")
      ->check(kNonNegative);
  cmd->add_option("--tsne-points", args->tsne_points,
                  "Points per t-SNE map (default: the script's, 2000; 0 = PCA only)")
      ->check(kNonNegative);
  cmd->callback([args] { run_report(*args); });
}

}  // namespace xmoe::cli
