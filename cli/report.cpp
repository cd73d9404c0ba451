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
#include <utility>
#include <vector>

#include <unistd.h>

namespace xmoe::cli {

namespace {

struct ReportArgs {
  std::vector<std::string> runs;
  std::string out;
  int64_t window = 0;
  int64_t token_map_points = 2000;
  int64_t tsne_points = -1;  // -1: the script's default
};

// A folder that is removed, with what is in it, when the report fails before it is published.
class Staging {
 public:
  explicit Staging(std::filesystem::path path) : path_(std::move(path)) {
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~Staging() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

void run_report(const ReportArgs& a) {
  namespace fs = std::filesystem;
  const std::string script = find_script("report/make_report.py");  // fail before the analysis
  // The report is built in a staging folder inside --out and moved into place only when it is
  // complete: a failed report leaves an earlier one in --out as it was.
  const fs::path out(a.out);
  Staging staging(out / (".report.tmp." + std::to_string(::getpid())));
  const std::string analysis_dir = (staging.path() / "analysis").string();
  analysis::RunAnalysisOptions options;
  options.window_steps = a.window;
  options.token_map_points = a.token_map_points;
  const analysis::RunAnalysis result = analysis::analyze_runs(a.runs, options);
  analysis::write_run_analysis(result, analysis_dir);

  std::vector<std::string> args = {"python3", script,       "--out", staging.path().string(),
                                   "--analysis", analysis_dir, "--quiet"};
  if (a.tsne_points >= 0) {
    args.push_back("--tsne-points");
    args.push_back(std::to_string(a.tsne_points));
  }
  args.insert(args.end(), a.runs.begin(), a.runs.end());
  const int status = run_process(args);
  if (status != 0)
    throw std::runtime_error(script + " failed (exit status " + std::to_string(status) +
                             "; its message is above): " + a.out + " is as it was");
  if (!fs::is_regular_file(staging.path() / "index.html"))
    throw std::runtime_error(script + " exited 0 but wrote no index.html; " + a.out +
                             " is as it was");
  // Publish: every file and folder of the new report replaces the one of the same name.
  for (const fs::directory_entry& entry : fs::directory_iterator(staging.path())) {
    const fs::path target = out / entry.path().filename();
    fs::remove_all(target);
    fs::rename(entry.path(), target);
  }
  std::cout << "analysis: " << (out / "analysis" / "analysis.json").string() << "\n"
            << "report: " << (out / "index.html").string() << std::endl;
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
