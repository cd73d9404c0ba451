// The routing analysis of finished (or running) pre-training runs, the engine behind
// `xmoe analyze` and `xmoe report` (SPEC §7; X-MoE paper §4.5, Figures 2c, 3 and 4). It reads run
// directories (docs/run-directory.md) — checkpoints, probe tokens, metrics.jsonl — and writes the
// analysis/ folder the report draws: analysis.json, analysis.csv and one token map per run and
// MoE layer.
//
// Per run, every kept checkpoint in ascending step order: the model is loaded (saved_model.h),
// the run's probe tokens are routed (routing_probe.h) and every MoE layer gets its expert-load
// statistics, representation collapse of the router input and of the hidden states, and the
// routing-fluctuation ratio against the previous checkpoint (none at the first), with the step
// gap and the learning rate of the last step taken (lr_schedule.h at step − 1).
//
// Across runs (R ≥ 2 runs with MoE layers; dense runs are left out): inter-run consistency per
// MoE layer on windows of m steps — window w covers steps (w·m, (w+1)·m], its load vector
// L^r ∈ R^E sums the `expert_counts` of run r's "train" lines in it, only windows that every run
// completed count — and token agreement per layer and pair of runs at their last checkpoints
// (only when the runs' probe tokens are identical).
//
// This sits on top of train/ (it loads checkpoints), unlike the metric functions of the other
// analysis/ headers.
#pragma once

#include <ATen/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <string>
#include <vector>

namespace xmoe::analysis {

struct RunAnalysisOptions {
  /// m, steps per consistency window; 0 = 10 × the runs' log.every (their least common multiple
  /// when they differ).
  int64_t window_steps = 0;
  /// Token maps hold the first N real probe tokens (row-major over the probe batch); 0 = no maps.
  int64_t token_map_points = 2000;
  /// Also print every warning on stderr ("xmoe analyze: warning: …") as it arises.
  bool print_warnings = true;
};

/// One MoE layer at one checkpoint. Undefined values are NaN (null in JSON, empty in CSV).
struct LayerAnalysis {
  int64_t layer = 0;                 // encoder layer index
  std::vector<double> load;          // [E] share of routed slots, sums to 1
  double load_cv = 0, load_max_over_mean = 0, load_entropy = 0, dropped_fraction = 0;
  double rc_router = 0, rc_hidden = 0;
  c10::optional<double> rf;          // against the previous checkpoint; none at the first
  c10::optional<int64_t> rf_step_gap;
};

struct CheckpointAnalysis {
  int64_t step = 0;
  double lr = 0;                     // learning rate of the last step taken (step − 1)
  std::string path;
  std::vector<LayerAnalysis> layers; // one per MoE layer; empty for a dense run
};

/// The probe tokens in the representation space of one MoE layer at the run's last checkpoint.
struct TokenMap {
  int64_t layer = 0;
  at::Tensor h;             // [N, d] float, hidden states entering the layer
  at::Tensor router_input;  // [N, r] float, what the router scored (h, or z for X-MoE)
  at::Tensor expert;        // [N] int64 top-1 expert
  at::Tensor language;      // [N] int64 index into the run's config data.languages
  at::Tensor pca;           // [N, 2] float64, pca_2d(h) (token_map.h)
};

struct RunResult {
  std::string dir;                   // as given
  std::string name;                  // config "name", "-2", "-3", … appended when taken
  std::string file_name;             // name reduced to [A-Za-z0-9._-] for token map files
  std::vector<int64_t> moe_layers;   // encoder layer indices of the MoE layers (empty: dense)
  std::vector<int64_t> n_expert;     // E of each MoE layer
  std::vector<CheckpointAnalysis> checkpoints;  // ascending step
  std::vector<TokenMap> token_maps;  // one per MoE layer (none for dense runs)
};

struct ConsistencyWindow {
  int64_t start_step = 0, end_step = 0;  // steps w·m + 1 … (w+1)·m
  double pearson_mean = 0;               // mean ρ over pairs of runs
};

struct LayerConsistency {
  int64_t layer = 0;
  double mean = 0;                       // mean over windows; NaN when there is none
  std::vector<ConsistencyWindow> windows;
};

struct TokenAgreement {
  int64_t layer = 0;
  std::string run_a, run_b;              // run names
  double agreement = 0;                  // share of probe tokens with the same top-1 expert
};

struct Consistency {
  int64_t window_steps = 0;
  std::vector<std::string> runs;         // the runs compared (those with MoE layers)
  std::vector<LayerConsistency> layers;
  std::vector<TokenAgreement> token_agreement;  // empty when the probe tokens differ
};

struct RunAnalysis {
  std::vector<RunResult> runs;
  c10::optional<Consistency> consistency;  // none: fewer than 2 MoE runs, or layouts differ
  std::vector<std::string> warnings;       // what was skipped and why
};

/// Analyses the run directories. Throws std::runtime_error / xmoe::FileFormatError naming the
/// run directory or file for: a missing run directory, a run without checkpoints, missing or
/// malformed probe tokens, a corrupt checkpoint, a malformed metrics.jsonl line (when consistency
/// is computed: "PATH:LINE: …"). Not errors (a warning, the part left out): runs whose MoE layer
/// layouts (layer indices, experts per layer) differ — no consistency; runs with different probe
/// tokens — no token agreement; no window of m steps completed by every run — no windows.
RunAnalysis analyze_runs(const std::vector<std::string>& run_dirs,
                         const RunAnalysisOptions& options = {});

/// Writes out_dir/analysis.json, out_dir/analysis.csv and
/// out_dir/token_map-<run file_name>-layer<L>.safetensors (docs/run-directory.md), creating
/// out_dir. Token map files of an earlier analysis in out_dir are removed first, so the folder
/// describes this analysis only. Throws std::runtime_error naming the file that cannot be written.
void write_run_analysis(const RunAnalysis& analysis, const std::string& out_dir);

/// analysis.json as a JSON text (the same content write_run_analysis writes).
std::string run_analysis_json(const RunAnalysis& analysis);

}  // namespace xmoe::analysis
