#include "xmoe/analysis/run_analysis.h"

#include "xmoe/analysis/routing_consistency.h"
#include "xmoe/analysis/token_map.h"
#include "xmoe/io/safetensors.h"
#include "xmoe/io/strict_json.h"
#include "xmoe/train/checkpoint.h"
#include "xmoe/train/lr_schedule.h"
#include "xmoe/train/pretrain_config.h"
#include "xmoe/train/routing_probe.h"
#include "xmoe/train/saved_model.h"
#include "xmoe/util/atomic_file.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <numeric>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>

namespace xmoe::analysis {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Everything about one run that the cross-run part needs besides its RunResult.
struct LoadedRun {
  RunResult result;
  ProbeTokens probe;
  std::vector<at::Tensor> last_experts;  // per MoE layer: [N] top-1 expert at the last checkpoint
  int64_t log_every = 1;
  uint64_t init_seed = 0;
  nlohmann::json identity;  // run_identity of the checkpoints' config
};

class Warnings {
 public:
  Warnings(std::vector<std::string>* out, bool print) : out_(out), print_(print) {}
  void add(const std::string& message) {
    out_->push_back(message);
    if (print_) std::cerr << "xmoe analyze: warning: " << message << "\n";
  }

 private:
  std::vector<std::string>* out_;
  bool print_;
};

std::string unique(const std::string& value, std::set<std::string>* taken) {
  std::string candidate = value;
  for (int n = 2; taken->count(candidate) != 0; ++n) candidate = value + "-" + std::to_string(n);
  taken->insert(candidate);
  return candidate;
}

// Like the report's slugify: runs of characters outside [A-Za-z0-9._-] become "_", leading and
// trailing "." and "_" go, and nothing left is "run".
std::string file_name_of(const std::string& name) {
  std::string out;
  bool in_run = false;
  for (char c : name) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (ok) {
      out += c;
      in_run = false;
    } else if (!in_run) {
      out += '_';
      in_run = true;
    }
  }
  const auto first = out.find_first_not_of("._");
  if (first == std::string::npos) return "run";
  return out.substr(first, out.find_last_not_of("._") - first + 1);
}

// "name" of <run>/config.json, else `fallback` (the name saved in the checkpoint).
std::string run_name(const std::string& dir, const std::string& fallback, Warnings& warn) {
  const fs::path path = fs::path(dir) / "config.json";
  std::ifstream in(path);
  if (!in) return fallback;
  const json config = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (config.is_object() && config.contains("name") && config["name"].is_string() &&
      !config["name"].get<std::string>().empty())
    return config["name"].get<std::string>();
  warn.add(path.string() + ": not a config with a \"name\"; the run is named '" + fallback +
           "' after its checkpoints");
  return fallback;
}

std::string format_list(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

LoadedRun analyze_run(const std::string& dir, const RunAnalysisOptions& options, Warnings& warn) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw std::runtime_error(dir + ": no such run directory");
  const std::string checkpoint_dir = (fs::path(dir) / "checkpoints").string();
  const auto checkpoints = list_checkpoints(checkpoint_dir);
  if (checkpoints.empty())
    throw std::runtime_error(dir + ": no checkpoints in " + checkpoint_dir +
                             " (not a run directory, or the run has not written one yet)");
  const std::string probe_path = (fs::path(dir) / "probe_tokens.safetensors").string();
  if (!fs::is_regular_file(probe_path, ec))
    throw std::runtime_error(dir + ": missing " + probe_path +
                             " (the probe tokens every checkpoint is measured on; written by "
                             "xmoe pretrain)");

  LoadedRun run;
  run.probe = load_probe_tokens(probe_path);
  run.result.dir = dir;
  std::vector<ProbeRouting> previous;
  int64_t previous_step = 0;
  std::string saved_name;
  std::string first_path;
  for (const auto& [step, path] : checkpoints) {
    SavedModel saved = load_saved_model(path);
    // Checkpoints of another run copied into this one would be analysed as one run's history.
    const json identity = run_identity(saved.config.to_json());
    if (first_path.empty()) {
      first_path = path;
      run.identity = identity;
    } else if (const std::string diff = first_json_difference(run.identity, identity);
               !diff.empty()) {
      throw std::runtime_error(path + ": its config differs from " + first_path + "'s at '" + diff +
                               "': the checkpoints of " + dir + " are not of one run");
    }
    const TrainConfig& t = saved.config.train;
    CheckpointAnalysis c;
    c.step = saved.step;
    c.path = path;
    c.lr = learning_rate_at(std::max<int64_t>(saved.step - 1, 0), t.lr, t.warmup_steps, t.steps,
                            t.final_lr_ratio);
    std::vector<ProbeRouting> routing = route_probe(saved.model, run.probe);
    const bool comparable =
        previous.size() == routing.size() &&
        std::equal(previous.begin(), previous.end(), routing.begin(),
                   [](const ProbeRouting& a, const ProbeRouting& b) {
                     return a.layer == b.layer && a.expert.sizes() == b.expert.sizes();
                   });
    if (!previous.empty() && !comparable)
      warn.add(path + ": the MoE layers differ from the previous checkpoint's: no RF");
    for (size_t i = 0; i < routing.size(); ++i) {
      const ProbeRouting* before = comparable ? &previous[i] : nullptr;
      const ProbeLayerMetrics m = probe_layer_metrics(routing[i], before);
      LayerAnalysis l;
      l.layer = m.layer;
      l.load = m.load;
      l.load_cv = m.load_cv;
      l.load_max_over_mean = m.load_max_over_mean;
      l.load_entropy = m.load_entropy;
      l.dropped_fraction = m.dropped_fraction;
      l.rc_router = m.rc_router;
      l.rc_hidden = m.rc_hidden;
      if (before != nullptr) {
        l.rf = m.rf;
        l.rf_step_gap = saved.step - previous_step;
      }
      c.layers.push_back(std::move(l));
    }
    run.result.checkpoints.push_back(std::move(c));
    run.log_every = saved.config.log.every;
    run.init_seed = saved.config.model.init_seed;
    saved_name = saved.config.name;
    previous = std::move(routing);
    previous_step = saved.step;
  }
  run.result.name = run_name(dir, saved_name, warn);

  // The last checkpoint's routing: layout, token maps, token agreement.
  for (const ProbeRouting& r : previous) {
    run.result.moe_layers.push_back(r.layer);
    run.result.n_expert.push_back(r.counts.size(0));
    run.last_experts.push_back(r.expert);
  }
  if (options.token_map_points > 0) {
    const at::Tensor language = run.probe.token_language();
    for (const ProbeRouting& r : previous) {
      const int64_t n = std::min<int64_t>(options.token_map_points, r.expert.size(0));
      if (n < 2) {
        warn.add(dir + ": layer " + std::to_string(r.layer) + ": fewer than 2 probe tokens, no token map");
        continue;
      }
      TokenMap map;
      map.layer = r.layer;
      map.h = r.hidden.narrow(0, 0, n).contiguous();
      map.router_input = r.router_input.narrow(0, 0, n).contiguous();
      map.expert = r.expert.narrow(0, 0, n).to(at::kLong).contiguous();
      map.language = language.narrow(0, 0, n).to(at::kLong).contiguous();
      try {
        map.pca = pca_2d(map.h).contiguous();
      } catch (const std::invalid_argument& e) {
        warn.add(dir + ": layer " + std::to_string(r.layer) + ": no token map (" + e.what() + ")");
        continue;
      }
      run.result.token_maps.push_back(std::move(map));
    }
  }
  return run;
}

// ---- windowed expert loads from metrics.jsonl ---------------------------------------------

// step → per MoE layer, the [E] expert_counts of that step's "train" line (a later line for the
// same step, from a resumed run, replaces the earlier one).
std::map<int64_t, std::vector<std::vector<double>>> read_expert_counts(
    const std::string& run_dir, const std::vector<int64_t>& n_expert) {
  const std::string path = (fs::path(run_dir) / "metrics.jsonl").string();
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open metrics.jsonl (needed for the "
                                           "inter-run consistency)");
  std::map<int64_t, std::vector<std::vector<double>>> out;
  std::string text;
  for (int64_t number = 1; std::getline(in, text); ++number) {
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(number);
    const json line = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (line.is_discarded() || !line.is_object())
      throw FileFormatError(where + ": malformed metrics line (not a JSON object)");
    if (!line.contains("kind") || !line["kind"].is_string() || !line.contains("step") ||
        !line["step"].is_number())
      throw FileFormatError(where + ": malformed metrics line (no string \"kind\" or numeric \"step\")");
    if (line["kind"] != "train") continue;
    const json* counts = line.contains("expert_counts") ? &line["expert_counts"] : nullptr;
    if (counts == nullptr || !counts->is_array() || counts->size() != n_expert.size())
      throw FileFormatError(where + ": \"expert_counts\" must be a list of " +
                            std::to_string(n_expert.size()) + " lists (one per MoE layer)");
    std::vector<std::vector<double>> layers;
    for (size_t i = 0; i < n_expert.size(); ++i) {
      const json& c = (*counts)[i];
      if (!c.is_array() || static_cast<int64_t>(c.size()) != n_expert[i])
        throw FileFormatError(where + ": \"expert_counts\"[" + std::to_string(i) + "] must list " +
                              std::to_string(n_expert[i]) + " counts");
      std::vector<double> v;
      for (const json& x : c) {
        if (!x.is_number() || !(x.get<double>() >= 0))
          throw FileFormatError(where + ": \"expert_counts\"[" + std::to_string(i) +
                                "] holds a value that is not a non-negative number");
        v.push_back(x.get<double>());
      }
      layers.push_back(std::move(v));
    }
    out[line["step"].get<int64_t>()] = std::move(layers);
  }
  return out;
}

c10::optional<Consistency> compute_consistency(const std::vector<LoadedRun>& all,
                                               const RunAnalysisOptions& options, Warnings& warn) {
  std::vector<const LoadedRun*> runs;
  std::vector<std::string> dense;
  for (const LoadedRun& r : all) {
    if (r.result.moe_layers.empty())
      dense.push_back(r.result.name);
    else
      runs.push_back(&r);
  }
  if (runs.size() < 2) {
    if (all.size() >= 2)
      warn.add("fewer than 2 runs with MoE layers: no inter-run consistency");
    return c10::nullopt;
  }
  for (const std::string& d : dense)
    warn.add("run " + d + " is dense (no MoE layer): left out of the inter-run consistency");
  const RunResult& first = runs[0]->result;
  for (const LoadedRun* r : runs) {
    if (r->result.moe_layers != first.moe_layers || r->result.n_expert != first.n_expert) {
      warn.add("runs " + first.name + " and " + r->result.name +
               " have different MoE layer layouts (layers " + format_list(first.moe_layers) +
               " with " + format_list(first.n_expert) + " experts, layers " +
               format_list(r->result.moe_layers) + " with " + format_list(r->result.n_expert) +
               " experts): no inter-run consistency");
      return c10::nullopt;
    }
  }
  // Consistency compares runs that differ only in their seeds; anything else is a warning.
  const auto without_seeds = [](json identity) {
    identity["train"].erase("seed");
    identity["model"].erase("init_seed");
    return identity;
  };
  for (const LoadedRun* r : runs) {
    const std::vector<std::string> diff =
        json_differences(without_seeds(runs[0]->identity), without_seeds(r->identity));
    if (diff.empty()) continue;
    std::string keys;
    for (const std::string& key : diff) keys += (keys.empty() ? "'" : ", '") + key + "'";
    warn.add("runs " + first.name + " and " + r->result.name + " differ at " + keys +
             ", not only in their seeds: their consistency compares different models");
  }
  for (const LoadedRun* r : runs) {
    if (r->init_seed != runs[0]->init_seed) {
      warn.add("runs " + first.name + " and " + r->result.name + " start from different weights "
               "(model.init_seed " + std::to_string(runs[0]->init_seed) + " and " +
               std::to_string(r->init_seed) + "): their expert ids need not correspond");
      break;
    }
  }

  Consistency out;
  int64_t m = options.window_steps;
  if (m <= 0) {
    int64_t every = 1;
    for (const LoadedRun* r : runs) every = std::lcm(every, std::max<int64_t>(1, r->log_every));
    m = 10 * every;
  }
  out.window_steps = m;
  for (const LoadedRun* r : runs) out.runs.push_back(r->result.name);

  const size_t n_layers = first.moe_layers.size();
  std::vector<std::map<int64_t, std::vector<std::vector<double>>>> counts;
  int64_t n_windows = -1;
  for (const LoadedRun* r : runs) {
    counts.push_back(read_expert_counts(r->result.dir, first.n_expert));
    const int64_t last = counts.back().empty() ? 0 : counts.back().rbegin()->first;
    const int64_t complete = last / m;
    n_windows = n_windows < 0 ? complete : std::min(n_windows, complete);
  }
  if (n_windows == 0)
    warn.add("no window of " + std::to_string(m) + " steps was completed by every run: no "
             "consistency windows (lower the window)");
  for (size_t l = 0; l < n_layers; ++l) {
    const int64_t e = first.n_expert[l];
    std::vector<at::Tensor> loads;
    for (const auto& per_step : counts) {
      at::Tensor load = at::zeros({n_windows, e}, at::kDouble);
      auto acc = load.accessor<double, 2>();
      for (const auto& [step, layers] : per_step) {
        if (step <= 0) continue;
        const int64_t w = (step - 1) / m;
        if (w >= n_windows) continue;
        for (int64_t i = 0; i < e; ++i) acc[w][i] += layers[l][static_cast<size_t>(i)];
      }
      loads.push_back(load);
    }
    LayerConsistency lc;
    lc.layer = first.moe_layers[l];
    lc.mean = NAN;
    if (n_windows > 0) {
      const std::vector<double> values = interrun_consistency(loads);
      for (int64_t w = 0; w < n_windows; ++w)
        lc.windows.push_back({w * m + 1, (w + 1) * m, values[static_cast<size_t>(w)]});
      lc.mean = std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(values.size());
    }
    out.layers.push_back(std::move(lc));
  }

  // Token agreement at the last checkpoints, only on the very same probe tokens.
  bool same_probe = true;
  for (const LoadedRun* r : runs) {
    const ProbeTokens& a = runs[0]->probe;
    const ProbeTokens& b = r->probe;
    if (a.input_ids.sizes() != b.input_ids.sizes() || !a.input_ids.equal(b.input_ids) ||
        !a.mask.equal(b.mask)) {
      warn.add("runs " + first.name + " and " + r->result.name + " have different probe tokens "
               "(probe_tokens.safetensors): no token agreement");
      same_probe = false;
      break;
    }
  }
  if (same_probe) {
    for (size_t l = 0; l < n_layers; ++l)
      for (size_t a = 0; a < runs.size(); ++a)
        for (size_t b = a + 1; b < runs.size(); ++b)
          out.token_agreement.push_back(
              {first.moe_layers[l], runs[a]->result.name, runs[b]->result.name,
               token_agreement(runs[a]->last_experts[l], runs[b]->last_experts[l])});
  }
  return out;
}

// ---- output ---------------------------------------------------------------------------------

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += (c == '"') ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::string csv_number(double v) { return std::isfinite(v) ? json(v).dump() : std::string(); }

}  // namespace

RunAnalysis analyze_runs(const std::vector<std::string>& run_dirs, const RunAnalysisOptions& options) {
  if (run_dirs.empty()) throw std::invalid_argument("xmoe::analysis::analyze_runs: no run directory given");
  if (options.window_steps < 0)
    throw std::invalid_argument("xmoe::analysis::analyze_runs: window_steps must be >= 0 (0 = default), got " +
                                std::to_string(options.window_steps));
  if (options.token_map_points < 0)
    throw std::invalid_argument("xmoe::analysis::analyze_runs: token_map_points must be >= 0, got " +
                                std::to_string(options.token_map_points));
  RunAnalysis out;
  Warnings warn(&out.warnings, options.print_warnings);
  std::vector<LoadedRun> runs;
  std::set<std::string> names, file_names;
  for (size_t i = 0; i < run_dirs.size(); ++i)
    for (size_t j = 0; j < i; ++j) {
      std::error_code ec;
      if (fs::equivalent(run_dirs[i], run_dirs[j], ec))
        throw std::invalid_argument(run_dirs[i] + ": the same run directory as " + run_dirs[j] +
                                    " (given twice)");
    }
  for (const std::string& dir : run_dirs) {
    runs.push_back(analyze_run(dir, options, warn));
    RunResult& r = runs.back().result;
    r.name = unique(r.name, &names);
    r.file_name = unique(file_name_of(r.name), &file_names);
  }
  out.consistency = compute_consistency(runs, options, warn);
  for (LoadedRun& r : runs) out.runs.push_back(std::move(r.result));
  return out;
}

std::string run_analysis_json(const RunAnalysis& analysis) {
  // Keys in the order of docs/run-directory.md.
  using ojson = nlohmann::ordered_json;
  auto number_or_null = [](double v) { return std::isfinite(v) ? ojson(v) : ojson(nullptr); };
  ojson runs = ojson::array();
  for (const RunResult& r : analysis.runs) {
    ojson checkpoints = ojson::array();
    for (const CheckpointAnalysis& c : r.checkpoints) {
      ojson layers = ojson::array();
      for (const LayerAnalysis& l : c.layers)
        layers.push_back({{"layer", l.layer},
                          {"rc_router", number_or_null(l.rc_router)},
                          {"rc_hidden", number_or_null(l.rc_hidden)},
                          {"load", l.load},
                          {"load_cv", number_or_null(l.load_cv)},
                          {"load_max_over_mean", number_or_null(l.load_max_over_mean)},
                          {"load_entropy", number_or_null(l.load_entropy)},
                          {"dropped_fraction", number_or_null(l.dropped_fraction)},
                          {"rf", l.rf ? number_or_null(*l.rf) : ojson(nullptr)},
                          {"rf_step_gap", l.rf_step_gap ? ojson(*l.rf_step_gap) : ojson(nullptr)}});
      checkpoints.push_back({{"step", c.step}, {"lr", number_or_null(c.lr)}, {"layers", layers}});
    }
    runs.push_back({{"dir", r.dir}, {"name", r.name}, {"checkpoints", checkpoints}});
  }
  ojson consistency = nullptr;
  if (analysis.consistency) {
    const Consistency& c = *analysis.consistency;
    ojson layers = ojson::array();
    for (const LayerConsistency& l : c.layers) {
      ojson windows = ojson::array();
      for (const ConsistencyWindow& w : l.windows)
        windows.push_back({{"start_step", w.start_step},
                           {"end_step", w.end_step},
                           {"pearson_mean", number_or_null(w.pearson_mean)}});
      layers.push_back({{"layer", l.layer}, {"mean", number_or_null(l.mean)}, {"windows", windows}});
    }
    ojson agreement = ojson::array();
    for (const TokenAgreement& t : c.token_agreement)
      agreement.push_back({{"layer", t.layer},
                           {"runs", {t.run_a, t.run_b}},
                           {"agreement", number_or_null(t.agreement)}});
    consistency = {{"window_steps", c.window_steps}, {"layers", layers}, {"token_agreement", agreement}};
  }
  return ojson{{"runs", runs}, {"consistency", consistency}}.dump(1) + "\n";
}

void write_run_analysis(const RunAnalysis& analysis, const std::string& out_dir) {
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec || !fs::is_directory(out_dir))
    throw std::runtime_error(out_dir + ": cannot create the analysis directory" +
                             (ec ? ": " + ec.message() : std::string()));
  // Token maps of an earlier analysis would be drawn as if they were this one's.
  static const std::regex token_map_file(R"(^token_map-.+-layer\d+\.safetensors$)");
  std::vector<fs::path> stale;
  for (const auto& entry : fs::directory_iterator(out_dir))
    if (entry.is_regular_file() && std::regex_match(entry.path().filename().string(), token_map_file))
      stale.push_back(entry.path());
  for (const fs::path& p : stale) fs::remove(p);

  const std::string text = run_analysis_json(analysis);
  write_file_atomically((fs::path(out_dir) / "analysis.json").string(),
                        [&](std::ostream& out) { out << text; });

  write_file_atomically((fs::path(out_dir) / "analysis.csv").string(), [&](std::ostream& out) {
    out << "run,step,lr,layer,rc_router,rc_hidden,load_cv,load_max_over_mean,load_entropy,"
           "dropped_fraction,rf\n";
    for (const RunResult& r : analysis.runs)
      for (const CheckpointAnalysis& c : r.checkpoints)
        for (const LayerAnalysis& l : c.layers)
          out << csv_field(r.name) << ',' << c.step << ',' << csv_number(c.lr) << ',' << l.layer << ','
              << csv_number(l.rc_router) << ',' << csv_number(l.rc_hidden) << ','
              << csv_number(l.load_cv) << ',' << csv_number(l.load_max_over_mean) << ','
              << csv_number(l.load_entropy) << ',' << csv_number(l.dropped_fraction) << ','
              << (l.rf ? csv_number(*l.rf) : std::string()) << '\n';
  });

  for (const RunResult& r : analysis.runs) {
    for (const TokenMap& m : r.token_maps) {
      const std::string path =
          (fs::path(out_dir) / ("token_map-" + r.file_name + "-layer" + std::to_string(m.layer) +
                                ".safetensors")).string();
      save_safetensors(path, {{"h", m.h},
                              {"router_input", m.router_input},
                              {"expert", m.expert},
                              {"language", m.language},
                              {"pca", m.pca}},
                       {{"run", r.name}, {"layer", std::to_string(m.layer)},
                        {"step", r.checkpoints.empty() ? "" : std::to_string(r.checkpoints.back().step)}});
    }
  }
}

}  // namespace xmoe::analysis
