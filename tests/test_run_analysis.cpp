// The analysis of run directories (analysis/run_analysis.h, `xmoe analyze`, `xmoe report`) on
// tiny runs trained here: per-checkpoint metrics in order with RF against the previous
// checkpoint, windowed inter-run consistency and token agreement (exactly 1 for two identical
// runs), dense runs, runs that cannot be compared, the written files read back, the errors, and
// the report of the real binary with every image it links.
#include "xmoe/analysis/run_analysis.h"
#include "xmoe/analysis/token_map.h"
#include "xmoe/data/tokenizer_trainer.h"
#include "xmoe/io/safetensors.h"
#include "xmoe/train/checkpoint.h"
#include "xmoe/train/lr_schedule.h"
#include "xmoe/train/routing_probe.h"
#include "xmoe/train/trainer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "test_data_util.h"
#include "test_util.h"

#ifndef XMOE_CLI_PATH
#error "XMOE_CLI_PATH must name the xmoe binary (see CMakeLists.txt)"
#endif

namespace {

using namespace xmoe;
using namespace xmoe::analysis;
using nlohmann::json;
using xmoe_test::Contains;
using xmoe_test::TempDir;
namespace fs = std::filesystem;

class RunAnalysisTest : public ::testing::Test {
 protected:
  // The corpus and tokenizer of six tiny runs (run() trains each, ~0.4 s, when first asked for):
  // two X-MoE runs from the same initial weights with different training seeds (a, b), a
  // bit-identical repeat of a (a_again), a dense run, a run with another MoE layout and one with
  // sigmoid gates.
  // 20 steps, checkpoints every 5 steps, the last 3 kept (10, 15, 20).
  static void SetUpTestSuite() {
    dir_ = std::make_unique<TempDir>("xmoe_run_analysis");
    xmoe_test::write_corpus(dir_->file("corpus"), "train", {{"de", 150}, {"en", 300}, {"ru", 60}, {"zh", 30}}, 2);
    xmoe_test::write_corpus(dir_->file("corpus"), "valid", {{"de", 20}, {"en", 20}, {"ru", 10}, {"zh", 10}}, 3);
    train_tokenizer_from_corpus(dir_->file("corpus"), "train", dir_->file("tok/spm"),
                                xmoe_test::tiny_tokenizer_options());
  }
  static void TearDownTestSuite() { dir_.reset(); }

  // The run directory of `name`, trained on first use (ctest runs every test in its own process).
  static std::string run(const std::string& name) {
    static const std::map<std::string, std::vector<std::string>> overrides = {
        {"a", {"name=smoe-a", "train.seed=5"}},
        {"b", {"name=smoe-b", "train.seed=6"}},
        {"a_again", {"name=smoe-a", "train.seed=5"}},
        {"dense", {"name=dense", "model.moe_layers=[]", "moe=null"}},
        {"sigmoid", {"name=smoe-sigmoid", "moe.gate=sigmoid"}},
        {"other", {"name=other", "model.moe_layers=[1]", "moe.n_expert=2", "train.steps=10"}}};
    const std::string dir = dir_->file("runs/" + name);
    if (!fs::exists(dir)) train(config(overrides.at(name)), dir);
    return dir;
  }

  static PretrainConfig config(const std::vector<std::string>& overrides) {
    const std::string text = R"({
      "name": "tiny",
      "data": {"corpus": ")" + dir_->file("corpus") + R"(", "tokenizer": ")" +
                             dir_->file("tok/spm.model") + R"(", "max_len": 24, "batch_tokens": 96},
      "model": {"d_model": 16, "n_layers": 2, "n_heads": 2, "d_ff": 32, "moe_layers": [0, 1]},
      "moe": {"n_expert": 4, "top_k": 1, "router": "xmoe", "d_e": 8},
      "train": {"steps": 20, "lr": 3e-3, "warmup_steps": 4, "seed": 5},
      "log": {"every": 1},
      "eval": {"every": 10, "max_batches": 1, "probe_tokens": 200},
      "checkpoint": {"every": 5, "keep": 3}
    })";
    return parse_pretrain_config(text, "test config", overrides);
  }

  static void train(const PretrainConfig& c, const std::string& run_dir) {
    TrainerOptions o;
    o.run_dir = run_dir;
    o.progress = false;
    pretrain(c, o);
  }

  static RunAnalysisOptions quiet(int64_t token_map_points = 2000, int64_t window = 0) {
    RunAnalysisOptions o;
    o.print_warnings = false;
    o.token_map_points = token_map_points;
    o.window_steps = window;
    return o;
  }

  static bool any_warning_has(const RunAnalysis& a, const std::string& needle) {
    for (const std::string& w : a.warnings)
      if (w.find(needle) != std::string::npos) return true;
    return false;
  }

  static std::unique_ptr<TempDir> dir_;
};
std::unique_ptr<TempDir> RunAnalysisTest::dir_;

TEST_F(RunAnalysisTest, EveryCheckpointInOrderWithRfAgainstThePreviousOne) {
  const RunAnalysis a = analyze_runs({run("a"), run("b")}, quiet());
  ASSERT_EQ(a.runs.size(), 2u);
  EXPECT_EQ(a.runs[0].name, "smoe-a");
  EXPECT_EQ(a.runs[1].name, "smoe-b");
  EXPECT_EQ(a.runs[0].moe_layers, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(a.runs[0].n_expert, (std::vector<int64_t>{4, 4}));
  const PretrainConfig c = config({});
  for (const RunResult& r : a.runs) {
    ASSERT_EQ(r.checkpoints.size(), 3u) << r.name;
    for (size_t i = 0; i < r.checkpoints.size(); ++i) {
      const CheckpointAnalysis& cp = r.checkpoints[i];
      EXPECT_EQ(cp.step, 10 + 5 * static_cast<int64_t>(i));
      EXPECT_DOUBLE_EQ(cp.lr, learning_rate_at(cp.step - 1, c.train.lr, c.train.warmup_steps,
                                               c.train.steps, c.train.final_lr_ratio));
      ASSERT_EQ(cp.layers.size(), 2u);
      for (size_t l = 0; l < 2; ++l) {
        const LayerAnalysis& layer = cp.layers[l];
        EXPECT_EQ(layer.layer, static_cast<int64_t>(l));
        ASSERT_EQ(layer.load.size(), 4u);
        double sum = 0;
        for (double x : layer.load) sum += x;
        EXPECT_NEAR(sum, 1.0, 1e-12);
        EXPECT_TRUE(std::isfinite(layer.load_cv));
        EXPECT_GE(layer.load_entropy, 0.0);
        EXPECT_LE(layer.load_entropy, std::log(4.0) + 1e-12);
        EXPECT_EQ(layer.dropped_fraction, 0.0);  // dropless
        // RC: finite and positive, or undefined (NaN) when fewer than 2 experts are used.
        for (double rc : {layer.rc_router, layer.rc_hidden})
          EXPECT_TRUE(std::isnan(rc) || (std::isfinite(rc) && rc >= 0)) << rc;
        if (i == 0) {
          EXPECT_FALSE(layer.rf.has_value());
          EXPECT_FALSE(layer.rf_step_gap.has_value());
        } else {
          ASSERT_TRUE(layer.rf.has_value());
          EXPECT_GE(*layer.rf, 0.0);
          EXPECT_LE(*layer.rf, 1.0);
          EXPECT_EQ(layer.rf_step_gap.value_or(-1), 5);
        }
      }
    }
  }
}

TEST_F(RunAnalysisTest, ConsistencyWindowsAndTokenAgreementOfTwoSeeds) {
  const RunAnalysis a = analyze_runs({run("a"), run("b")}, quiet());
  ASSERT_TRUE(a.consistency.has_value());
  const Consistency& c = *a.consistency;
  EXPECT_EQ(c.window_steps, 10);  // 10 × log.every
  ASSERT_EQ(c.layers.size(), 2u);
  for (const LayerConsistency& l : c.layers) {
    ASSERT_EQ(l.windows.size(), 2u);  // steps 1–10 and 11–20
    EXPECT_EQ(l.windows[0].start_step, 1);
    EXPECT_EQ(l.windows[0].end_step, 10);
    EXPECT_EQ(l.windows[1].start_step, 11);
    EXPECT_EQ(l.windows[1].end_step, 20);
    for (const ConsistencyWindow& w : l.windows) {
      EXPECT_GE(w.pearson_mean, -1.0 - 1e-12);
      EXPECT_LE(w.pearson_mean, 1.0 + 1e-12);
    }
    EXPECT_NEAR(l.mean, (l.windows[0].pearson_mean + l.windows[1].pearson_mean) / 2, 1e-15);
  }
  EXPECT_TRUE(a.warnings.empty()) << a.warnings[0];  // runs that differ only in their seeds
  ASSERT_EQ(c.token_agreement.size(), 2u);  // one pair × two layers
  for (const TokenAgreement& t : c.token_agreement) {
    EXPECT_EQ(t.run_a, "smoe-a");
    EXPECT_EQ(t.run_b, "smoe-b");
    EXPECT_GE(t.agreement, 0.0);
    EXPECT_LE(t.agreement, 1.0);
  }

  // A window of 7 steps: two complete windows (1–7, 8–14); 15–21 is not complete.
  const RunAnalysis w7 = analyze_runs({run("a"), run("b")}, quiet(0, 7));
  ASSERT_TRUE(w7.consistency.has_value());
  EXPECT_EQ(w7.consistency->window_steps, 7);
  EXPECT_EQ(w7.consistency->layers[0].windows.size(), 2u);
  EXPECT_EQ(w7.consistency->layers[0].windows[1].end_step, 14);
  // A window longer than the runs: no window, a warning, still token agreement.
  const RunAnalysis w50 = analyze_runs({run("a"), run("b")}, quiet(0, 50));
  ASSERT_TRUE(w50.consistency.has_value());
  EXPECT_TRUE(w50.consistency->layers[0].windows.empty());
  EXPECT_TRUE(std::isnan(w50.consistency->layers[0].mean));
  EXPECT_EQ(w50.consistency->token_agreement.size(), 2u);
  EXPECT_TRUE(any_warning_has(w50, "no window of 50 steps"));
}

TEST_F(RunAnalysisTest, IdenticalRunsAreExactlyConsistent) {
  const RunAnalysis a = analyze_runs({run("a"), run("a_again")}, quiet(0));
  EXPECT_EQ(a.runs[0].name, "smoe-a");
  EXPECT_EQ(a.runs[1].name, "smoe-a-2");  // the same config name twice
  ASSERT_TRUE(a.consistency.has_value());
  for (const LayerConsistency& l : a.consistency->layers) {
    ASSERT_EQ(l.windows.size(), 2u);
    for (const ConsistencyWindow& w : l.windows) EXPECT_EQ(w.pearson_mean, 1.0);
    EXPECT_EQ(l.mean, 1.0);
  }
  ASSERT_EQ(a.consistency->token_agreement.size(), 2u);
  for (const TokenAgreement& t : a.consistency->token_agreement) EXPECT_EQ(t.agreement, 1.0);
  // Same checkpoints, same routing: RF is the same in both.
  for (size_t i = 1; i < 3; ++i)
    EXPECT_EQ(*a.runs[0].checkpoints[i].layers[0].rf, *a.runs[1].checkpoints[i].layers[0].rf);
}

TEST_F(RunAnalysisTest, DenseRunsAreListedWithoutLayersAndLeftOutOfConsistency) {
  const RunAnalysis a = analyze_runs({run("a"), run("dense"), run("b")}, quiet(20));
  ASSERT_EQ(a.runs.size(), 3u);
  const RunResult& dense = a.runs[1];
  EXPECT_EQ(dense.name, "dense");
  EXPECT_TRUE(dense.moe_layers.empty());
  EXPECT_TRUE(dense.token_maps.empty());
  ASSERT_EQ(dense.checkpoints.size(), 3u);
  for (const CheckpointAnalysis& c : dense.checkpoints) EXPECT_TRUE(c.layers.empty());
  ASSERT_TRUE(a.consistency.has_value());
  EXPECT_EQ(a.consistency->runs, (std::vector<std::string>{"smoe-a", "smoe-b"}));
  EXPECT_TRUE(any_warning_has(a, "dense"));

  // Only one MoE run: no consistency.
  const RunAnalysis one = analyze_runs({run("dense"), run("a")}, quiet(0));
  EXPECT_FALSE(one.consistency.has_value());
  const RunAnalysis alone = analyze_runs({run("dense")}, quiet(0));
  EXPECT_FALSE(alone.consistency.has_value());
  EXPECT_TRUE(alone.warnings.empty());
}

TEST_F(RunAnalysisTest, DifferentLayoutsOrProbeTokensSkipWithAWarning) {
  const RunAnalysis layouts = analyze_runs({run("a"), run("other")}, quiet(0));
  EXPECT_FALSE(layouts.consistency.has_value());
  EXPECT_TRUE(any_warning_has(layouts, "different MoE layer layouts"));
  ASSERT_EQ(layouts.runs[1].checkpoints.size(), 2u);  // steps 5 and 10
  EXPECT_EQ(layouts.runs[1].moe_layers, (std::vector<int64_t>{1}));

  // b with one probe sequence less: consistency from metrics.jsonl, no token agreement.
  TempDir tmp("xmoe_run_analysis_probe");
  const std::string copy = tmp.file("b");
  fs::copy(run("b"), copy, fs::copy_options::recursive);
  ProbeTokens probe = load_probe_tokens(copy + "/probe_tokens.safetensors");
  const int64_t rows = probe.input_ids.size(0) - 1;
  probe.input_ids = probe.input_ids.narrow(0, 0, rows).contiguous();
  probe.mask = probe.mask.narrow(0, 0, rows).contiguous();
  probe.language = probe.language.narrow(0, 0, rows).contiguous();
  save_probe_tokens(copy + "/probe_tokens.safetensors", probe);
  const RunAnalysis probes = analyze_runs({run("a"), copy}, quiet(0));
  ASSERT_TRUE(probes.consistency.has_value());
  EXPECT_EQ(probes.consistency->layers[0].windows.size(), 2u);
  EXPECT_TRUE(probes.consistency->token_agreement.empty());
  EXPECT_TRUE(any_warning_has(probes, "different probe tokens"));

  // The same layout but another gate: compared, with a warning naming the difference.
  const RunAnalysis gates = analyze_runs({run("a"), run("sigmoid")}, quiet(0));
  EXPECT_TRUE(gates.consistency.has_value());
  // Every differing key is named (the gate; its resolved temperature_init follows it).
  EXPECT_TRUE(any_warning_has(gates, "runs smoe-a and smoe-sigmoid differ at 'moe.gate', "
                                     "'moe.temperature_init', not only in their seeds"));
}

TEST_F(RunAnalysisTest, WrittenFilesReadBack) {
  const RunAnalysis a =
      analyze_runs({run("a"), run("b"), run("dense")}, quiet(/*token_map_points=*/50));
  TempDir out("xmoe_run_analysis_out");
  const std::string dir = out.file("analysis");
  fs::create_directories(dir);
  xmoe_test::write_file(dir + "/token_map-stale-layer7.safetensors", "from an earlier analysis");
  write_run_analysis(a, dir);
  EXPECT_FALSE(fs::exists(dir + "/token_map-stale-layer7.safetensors"));

  const json j = json::parse(xmoe_test::read_file(dir + "/analysis.json"));
  ASSERT_EQ(j.at("runs").size(), 3u);
  EXPECT_EQ(j["runs"][0].at("name"), "smoe-a");
  EXPECT_EQ(j["runs"][0].at("dir"), run("a"));
  const json& first = j["runs"][0].at("checkpoints")[0];
  EXPECT_EQ(first.at("step"), 10);
  EXPECT_TRUE(first.at("lr").is_number());
  const json& layer = first.at("layers")[0];
  for (const char* key : {"layer", "rc_router", "rc_hidden", "load", "load_cv", "load_max_over_mean",
                          "load_entropy", "dropped_fraction", "rf", "rf_step_gap"})
    EXPECT_TRUE(layer.contains(key)) << key;
  EXPECT_TRUE(layer.at("rf").is_null());
  EXPECT_TRUE(layer.at("rf_step_gap").is_null());
  EXPECT_EQ(j["runs"][0]["checkpoints"][1]["layers"][0].at("rf_step_gap"), 5);
  EXPECT_EQ(j["runs"][2].at("checkpoints")[0].at("layers").size(), 0u);  // dense
  const json& c = j.at("consistency");
  EXPECT_EQ(c.at("window_steps"), 10);
  ASSERT_EQ(c.at("layers").size(), 2u);
  EXPECT_EQ(c["layers"][0].at("windows").size(), 2u);
  EXPECT_EQ(c["layers"][0]["windows"][0].at("end_step"), 10);
  EXPECT_EQ(c.at("token_agreement")[0].at("runs"), json({"smoe-a", "smoe-b"}));

  // CSV: header + 2 runs × 3 checkpoints × 2 layers (the dense run has no rows).
  std::istringstream csv(xmoe_test::read_file(dir + "/analysis.csv"));
  std::vector<std::string> lines;
  for (std::string line; std::getline(csv, line);) lines.push_back(line);
  ASSERT_EQ(lines.size(), 1u + 12u);
  EXPECT_EQ(lines[0], "run,step,lr,layer,rc_router,rc_hidden,load_cv,load_max_over_mean,"
                      "load_entropy,dropped_fraction,rf");
  EXPECT_EQ(lines[1].substr(0, 10), "smoe-a,10,");
  EXPECT_EQ(lines[1].back(), ',');  // no RF at the first checkpoint
  EXPECT_EQ(std::count(lines[3].begin(), lines[3].end(), ','), 10);

  // Token maps: the first 50 probe tokens at step 20, per run and MoE layer.
  const ProbeTokens probe = load_probe_tokens(run("a") + "/probe_tokens.safetensors");
  ASSERT_GE(probe.mask.sum().item<int64_t>(), 50);
  for (const std::string name : {"smoe-a", "smoe-b"}) {
    for (int layer = 0; layer < 2; ++layer) {
      const std::string path = dir + "/token_map-" + name + "-layer" + std::to_string(layer) + ".safetensors";
      std::map<std::string, std::string> meta;
      const TensorMap t = load_safetensors(path, &meta);
      EXPECT_EQ(t.at("h").sizes(), (std::vector<int64_t>{50, 16})) << path;
      EXPECT_EQ(t.at("router_input").sizes(), (std::vector<int64_t>{50, 8})) << path;  // z, d_e = 8
      EXPECT_EQ(t.at("expert").sizes(), (std::vector<int64_t>{50}));
      EXPECT_EQ(t.at("expert").scalar_type(), at::kLong);
      EXPECT_TRUE(t.at("expert").ge(0).all().item<bool>() && t.at("expert").lt(4).all().item<bool>());
      EXPECT_TRUE(t.at("language").equal(probe.token_language().narrow(0, 0, 50)));
      EXPECT_EQ(t.at("pca").sizes(), (std::vector<int64_t>{50, 2}));
      EXPECT_EQ(t.at("pca").scalar_type(), at::kDouble);
      EXPECT_TRUE(t.at("pca").allclose(pca_2d(t.at("h")), 0, 1e-12));
      EXPECT_EQ(meta["step"], "20");
    }
  }
  EXPECT_FALSE(fs::exists(dir + "/token_map-dense-layer0.safetensors"));
  int maps = 0;
  for (const auto& e : fs::directory_iterator(dir)) maps += e.path().filename().string().rfind("token_map-", 0) == 0;
  EXPECT_EQ(maps, 4);
}

TEST_F(RunAnalysisTest, ErrorsNameTheRunOrFile) {
  auto expect_error = [](const std::vector<std::string>& runs, const std::string& needle) {
    try {
      analyze_runs(runs, quiet(0));
      ADD_FAILURE() << "no error; expected one naming " << needle;
    } catch (const std::runtime_error& e) {
      EXPECT_TRUE(Contains(e.what(), needle));
    }
  };
  TempDir tmp("xmoe_run_analysis_err");
  expect_error({tmp.file("nowhere")}, tmp.file("nowhere") + ": no such run directory");
  fs::create_directories(tmp.file("empty/checkpoints"));
  expect_error({run("a"), tmp.file("empty")}, tmp.file("empty") + ": no checkpoints");

  fs::copy(run("a"), tmp.file("noprobe"), fs::copy_options::recursive);
  fs::remove(tmp.file("noprobe/probe_tokens.safetensors"));
  expect_error({tmp.file("noprobe")}, "probe_tokens.safetensors");

  fs::copy(run("b"), tmp.file("badmetrics"), fs::copy_options::recursive);
  std::string metrics = xmoe_test::read_file(tmp.file("badmetrics/metrics.jsonl"));
  xmoe_test::write_file(tmp.file("badmetrics/metrics.jsonl"), "{\"kind\": \"train\", \"step\": 1}\n" + metrics);
  expect_error({run("a"), tmp.file("badmetrics")}, tmp.file("badmetrics/metrics.jsonl") + ":1:");
  xmoe_test::write_file(tmp.file("badmetrics/metrics.jsonl"), metrics + "not json\n");
  expect_error({run("a"), tmp.file("badmetrics")}, "metrics.jsonl:" + std::to_string(std::count(
                                                       metrics.begin(), metrics.end(), '\n') + 1) + ":");
  // Alone, a run's metrics.jsonl is not read.
  EXPECT_NO_THROW(analyze_runs({tmp.file("badmetrics")}, quiet(0)));

  // A checkpoint of another run among this run's: not one run's history.
  fs::copy(run("a"), tmp.file("mixed"), fs::copy_options::recursive);
  const std::string foreign = checkpoint_path(tmp.file("mixed/checkpoints"), 5);
  fs::copy_file(checkpoint_path(run("other") + "/checkpoints", 5), foreign);
  expect_error({tmp.file("mixed")}, "its config differs from " + foreign + "'s at 'model.moe_layers'");
  // The same run twice is refused, not compared with itself.
  EXPECT_TRUE(Contains(xmoe_test::error_message<std::invalid_argument>(
                           [&] { analyze_runs({run("a"), run("a") + "/"}, quiet(0)); }),
                       "(given twice)"));
  // A damaged config.json: the run is named after its checkpoints, with a warning.
  fs::copy(run("a"), tmp.file("badconfig"), fs::copy_options::recursive);
  xmoe_test::write_file(tmp.file("badconfig/config.json"), "{");
  const RunAnalysis named = analyze_runs({tmp.file("badconfig")}, quiet(0));
  EXPECT_EQ(named.runs[0].name, "smoe-a");
  EXPECT_TRUE(any_warning_has(named, "config.json: not a config with a \"name\""));

  EXPECT_THROW(analyze_runs({}, quiet()), std::invalid_argument);
  EXPECT_THROW(analyze_runs({run("a")}, quiet(-1)), std::invalid_argument);
}

// ---- the binary -------------------------------------------------------------------------------

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += (c == '\'') ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

struct Cli {
  int code = -1;
  std::string out, err;
};

Cli run_cli(const TempDir& dir, const std::string& args) {
  const std::string out = dir.file(".cli.out"), err = dir.file(".cli.err");
  const int status = std::system((quote(XMOE_CLI_PATH) + " --threads 1 " + args + " >" + quote(out) +
                                  " 2>" + quote(err)).c_str());
  Cli r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
  r.out = xmoe_test::read_file(out);
  r.err = xmoe_test::read_file(err);
  return r;
}

bool report_python_available() {
  for (const char* python : {"/usr/bin/python3", "python3"}) {
    const std::string cmd = std::string(python) + " -c 'import numpy, matplotlib' >/dev/null 2>&1";
    if (std::system(cmd.c_str()) == 0) return true;
  }
  return false;
}

TEST_F(RunAnalysisTest, CliAnalyzeWritesBesideTheRunAndFailsClearly) {
  TempDir tmp("xmoe_cli_analyze");
  fs::copy(run("a"), tmp.file("a"), fs::copy_options::recursive);
  const Cli ok = run_cli(tmp, "analyze " + quote(tmp.file("a")) + " --token-map-points 30");
  ASSERT_EQ(ok.code, 0) << ok.out << ok.err;
  EXPECT_TRUE(Contains(ok.out, "RC router"));
  EXPECT_TRUE(Contains(ok.out, tmp.file("a/analysis")));
  EXPECT_TRUE(fs::exists(tmp.file("a/analysis/analysis.json")));
  EXPECT_TRUE(fs::exists(tmp.file("a/analysis/analysis.csv")));
  EXPECT_EQ(load_safetensors(tmp.file("a/analysis/token_map-smoe-a-layer1.safetensors")).at("h").size(0), 30);

  const Cli missing = run_cli(tmp, "analyze " + quote(tmp.file("nowhere")));
  EXPECT_EQ(missing.code, 1);
  EXPECT_TRUE(Contains(missing.err, tmp.file("nowhere") + ": no such run directory"));
  const Cli no_out = run_cli(tmp, "report " + quote(tmp.file("a")));
  EXPECT_NE(no_out.code, 0);
  EXPECT_TRUE(Contains(no_out.err, "--out"));
}

TEST_F(RunAnalysisTest, CliReportLinksOnlyImagesThatExist) {
  if (!report_python_available()) GTEST_SKIP() << "python3 with numpy and matplotlib is missing";
  TempDir tmp("xmoe_cli_report");
  const std::string out = tmp.file("report");
  const Cli r = run_cli(tmp, "report " + quote(run("a")) + " " + quote(run("b")) + " " +
                                 quote(run("dense")) + " --out " + quote(out) +
                                 " --token-map-points 100 --tsne-points 0");  // t-SNE: seconds, tested by the script's own suite
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_TRUE(Contains(r.out, out + "/index.html"));
  EXPECT_TRUE(fs::exists(out + "/analysis/analysis.json"));
  const std::string html = xmoe_test::read_file(out + "/index.html");
  ASSERT_FALSE(html.empty());
  const std::regex ref(R"re((src|href)="([^"#][^"]*)")re");
  std::set<std::string> images;
  for (auto it = std::sregex_iterator(html.begin(), html.end(), ref); it != std::sregex_iterator(); ++it) {
    const std::string target = (*it)[2];
    EXPECT_EQ(target.find("://"), std::string::npos) << target;
    EXPECT_TRUE(fs::is_regular_file(out + "/" + target) && fs::file_size(out + "/" + target) > 0) << target;
    if ((*it)[1] == "src") images.insert(target);
  }
  for (const char* stem : {"train_loss", "rc_checkpoints", "rf_checkpoints", "consistency",
                           "token_map-smoe-a-layer0", "token_map-smoe-b-layer1"})
    EXPECT_EQ(images.count(std::string(stem) + ".png"), 1u) << stem;

  // The script fails (a run without metrics.jsonl): non-zero exit naming the script.
  fs::copy(run("a"), tmp.file("nometrics"), fs::copy_options::recursive);
  fs::remove(tmp.file("nometrics/metrics.jsonl"));
  const Cli bad = run_cli(tmp, "report " + quote(tmp.file("nometrics")) + " --out " + quote(tmp.file("r2")));
  EXPECT_EQ(bad.code, 1);
  EXPECT_TRUE(Contains(bad.err, "make_report.py failed"));
  // Into the folder of the good report: that report stays exactly as it was, no staging left.
  const auto files_in_out = [&] {
    std::map<std::string, std::string> files;  // path -> bytes
    for (const auto& e : fs::recursive_directory_iterator(out))
      if (e.is_regular_file()) files[e.path().string()] = xmoe_test::read_file(e.path().string());
    return files;
  };
  const std::map<std::string, std::string> before = files_in_out();
  const Cli over = run_cli(tmp, "report " + quote(tmp.file("nometrics")) + " --out " + quote(out));
  EXPECT_EQ(over.code, 1);
  EXPECT_TRUE(Contains(over.err, out + " is as it was"));
  const std::map<std::string, std::string> after = files_in_out();
  EXPECT_EQ(after.size(), before.size());
  EXPECT_TRUE(after == before);
}

}  // namespace
