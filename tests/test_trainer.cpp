// Pre-training end to end on a tiny generated corpus: an interrupted and resumed run equals an
// uninterrupted one bit for bit, Ctrl-C (the stop flag) checkpoints, checkpoint writes are
// atomic, corrupt or mismatched checkpoints are reported clearly, and evaluation of a saved
// model reproduces the trainer's validation loss.
#include "xmoe/data/tokenizer_trainer.h"
#include "xmoe/train/checkpoint.h"
#include "xmoe/train/evaluate.h"
#include "xmoe/train/lr_schedule.h"
#include "xmoe/train/saved_model.h"
#include "xmoe/train/trainer.h"
#include "xmoe/train/training_state.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <torch/nn/modules/linear.h>

#include "test_data_util.h"
#include "test_ranks.h"
#include "test_util.h"

namespace {

using namespace xmoe;
using xmoe_test::Contains;
using xmoe_test::TempDir;
namespace fs = std::filesystem;

class TrainerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::make_unique<TempDir>("xmoe_trainer");
    xmoe_test::write_corpus(dir_->file("corpus"), "train", {{"de", 150}, {"en", 300}, {"ru", 60}, {"zh", 30}}, 2);
    xmoe_test::write_corpus(dir_->file("corpus"), "valid", {{"de", 20}, {"en", 20}, {"ru", 10}, {"zh", 10}}, 3);
    train_tokenizer_from_corpus(dir_->file("corpus"), "train", dir_->file("tok/spm"),
                                xmoe_test::tiny_tokenizer_options());
  }
  static void TearDownTestSuite() { dir_.reset(); }

  // A tiny SMoE with noisy top-k routing (router noise) and dropout (the global generator):
  // every random stream a resume has to restore.
  static PretrainConfig config(const std::vector<std::string>& overrides = {}) {
    const std::string text = R"({
      "name": "tiny",
      "data": {"corpus": ")" + dir_->file("corpus") + R"(", "tokenizer": ")" +
                             dir_->file("tok/spm.model") + R"(", "max_len": 24, "batch_tokens": 96},
      "model": {"d_model": 16, "n_layers": 2, "n_heads": 2, "d_ff": 32, "moe_layers": [1]},
      "moe": {"n_expert": 4, "top_k": 2, "router": "noisy_topk"},
      "train": {"steps": 8, "lr": 3e-3, "warmup_steps": 2, "seed": 5},
      "log": {"every": 1},
      "eval": {"every": 3, "max_batches": 2, "probe_tokens": 200},
      "checkpoint": {"every": 100, "keep": 2}
    })";
    return parse_pretrain_config(text, "test config", overrides);
  }

  static TrainResult train(const PretrainConfig& c, const std::string& run, bool resume = false,
                           int64_t max_steps = -1, const std::atomic<bool>* stop = nullptr) {
    TrainerOptions o;
    o.run_dir = run;
    o.resume = resume;
    o.progress = false;
    o.max_steps_this_run = max_steps;
    o.stop = stop;
    return pretrain(c, o);
  }

  // metrics.jsonl without the wall-clock fields.
  static std::vector<nlohmann::json> metrics(const std::string& run) {
    std::vector<nlohmann::json> lines;
    std::istringstream in(xmoe_test::read_file(run + "/metrics.jsonl"));
    for (std::string line; std::getline(in, line);) {
      nlohmann::json j = nlohmann::json::parse(line);
      for (const char* k : {"tokens_per_s", "elapsed_s", "analysis_ms"}) j.erase(k);
      lines.push_back(j);
    }
    return lines;
  }

  // Trains `c` into `run` (resuming when asked) with a checkpoint after every step, expecting it
  // to diverge; checks the error and the checkpoints it leaves and returns the failed step.
  static int64_t check_diverged_run(const PretrainConfig& c, const std::string& run, bool resume) {
    const std::string dir = run + "/checkpoints";
    std::string message;
    try {
      train(c, run, resume);
    } catch (const std::runtime_error& e) {
      message = e.what();
    }
    if (message.rfind("step ", 0) != 0) {
      ADD_FAILURE() << "expected a diverged run, got: '" << message << "'";
      return -1;
    }
    EXPECT_TRUE(Contains(message, "train.lr")) << message;
    EXPECT_TRUE(Contains(message, "non-finite") || Contains(message, "not finite")) << message;
    const int64_t failed = std::stoll(message.substr(5));
    EXPECT_GE(failed, 2) << message;
    // The checkpoint of the step before leads straight to the failure: it is set aside.
    const std::string aside = checkpoint_path(dir, failed - 1) + ".diverged";
    EXPECT_TRUE(std::filesystem::exists(aside)) << aside;
    EXPECT_TRUE(Contains(message, "set aside as " + aside)) << message;
    const auto kept = list_checkpoints(dir);
    EXPECT_TRUE(Contains(message, kept.empty() ? "start again (" + dir
                                               : "(step " + std::to_string(kept.back().first) +
                                                     "): xmoe pretrain --resume --out " + run))
        << message;
    for (const auto& [step, path] : kept) {
      EXPECT_LT(step, failed - 1);
      for (const auto& [tensor, t] : read_checkpoint(path).tensors) {
        if (t.is_floating_point()) {
          EXPECT_TRUE(at::isfinite(t).all().item<bool>()) << path << " " << tensor;
        }
      }
    }
    return failed;
  }

  static std::unique_ptr<TempDir> dir_;
};
std::unique_ptr<TempDir> TrainerTest::dir_;

// The trainer learns: on the fixture corpus (a few hundred short sentences) the validation loss
// after 150 steps is clearly below its value at step 10 (measured: 5.26 → 4.96). (8 steps, as in the resume test below,
// are too few to see learning through the noise of 96-token batches.)
TEST_F(TrainerTest, ValidationLossFalls) {
  TempDir runs("xmoe_runs");
  const TrainResult r = train(config({"train.steps=150", "train.warmup_steps=10", "eval.every=10",
                                      "log.every=50"}),
                              runs.file("learn"));
  EXPECT_TRUE(r.finished);
  std::vector<double> valid;
  for (const auto& line : metrics(runs.file("learn"))) {
    if (line.contains("valid_loss")) valid.push_back(line.at("valid_loss").get<double>());
  }
  ASSERT_EQ(valid.size(), 15u);
  EXPECT_LT(valid.back(), valid.front() - 0.15);
}

TEST_F(TrainerTest, ResumedRunEqualsUninterruptedRunBitForBit) {
  TempDir runs("xmoe_runs");
  const TrainResult whole = train(config(), runs.file("whole"));
  EXPECT_TRUE(whole.finished);
  EXPECT_EQ(whole.step, 8);

  const TrainResult first = train(config(), runs.file("split"), false, /*max_steps=*/4);
  EXPECT_FALSE(first.finished);
  EXPECT_EQ(first.step, 4);
  EXPECT_EQ(list_checkpoints(runs.file("split/checkpoints")).back().first, 4);
  const TrainResult second = train(config(), runs.file("split"), /*resume=*/true);
  EXPECT_TRUE(second.finished);
  EXPECT_EQ(second.step, 8);

  const auto a = metrics(runs.file("whole")), b = metrics(runs.file("split"));
  ASSERT_EQ(a.size(), b.size());
  ASSERT_EQ(a.size(), 8u + 3u);  // 8 train lines, valid at 3, 6, 8
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "line " << i;

  const Checkpoint ca = read_checkpoint(whole.checkpoint), cb = read_checkpoint(second.checkpoint);
  for (const auto& [name, t] : ca.tensors) {
    if (name.rfind("model.", 0) == 0 || name.rfind("optim.", 0) == 0) {
      EXPECT_TRUE(t.equal(cb.tensors.at(name))) << name;
    }
  }
  EXPECT_EQ(a.back().at("moe").size(), 1u);
  EXPECT_EQ(a.back().at("moe")[0].at("load").size(), 4u);
}

TEST_F(TrainerTest, StopFlagCheckpointsAfterTheCurrentStep) {
  TempDir runs("xmoe_runs");
  std::atomic<bool> stop{true};
  const TrainResult r = train(config(), runs.file("run"), false, -1, &stop);
  EXPECT_FALSE(r.finished);
  EXPECT_EQ(r.step, 1);
  EXPECT_EQ(read_checkpoint(r.checkpoint).step, 1);
}

TEST_F(TrainerTest, RefusesToOverwriteARunOrResumeWithAnotherConfig) {
  TempDir runs("xmoe_runs");
  train(config({"train.steps=2", "train.warmup_steps=1"}), runs.file("run"));
  try {
    train(config(), runs.file("run"));
    ADD_FAILURE() << "overwrote a run";
  } catch (const std::runtime_error& e) {
    EXPECT_TRUE(Contains(e.what(), "already holds a run with checkpoints: pass --resume"));
  }
  try {
    train(config({"train.seed=6"}), runs.file("run"), true);
    ADD_FAILURE() << "resumed with another seed";
  } catch (const std::runtime_error& e) {
    EXPECT_TRUE(Contains(e.what(), "the config differs from the checkpoint's at 'train.seed'"));
  }
  try {
    train(config({"model.d_ff=48"}), runs.file("run"), true);
    ADD_FAILURE() << "resumed with another model";
  } catch (const std::runtime_error& e) {
    EXPECT_TRUE(Contains(e.what(), "the config differs from the checkpoint's at 'model.d_ff'"));
  }
  try {
    train(config(), runs.file("nothing"), true);
    ADD_FAILURE() << "resumed from nothing";
  } catch (const std::runtime_error& e) {
    EXPECT_TRUE(Contains(e.what(), "no checkpoint to resume from"));
  }
  // More steps may be added on resume.
  EXPECT_EQ(train(config({"train.steps=3", "train.warmup_steps=1"}), runs.file("run"), true).step, 3);
  // The config is compared before any data is read: the difference is named even when the
  // given config's corpus does not exist, and a finished run needs no data at all.
  const std::string gone = "data.corpus=\"/nonexistent/corpus\"";
  EXPECT_TRUE(Contains(xmoe_test::error_message<std::runtime_error>([&] {
                         train(config({"model.d_ff=48", gone}), runs.file("run"), true);
                       }),
                       "the config differs from the checkpoint's at 'model.d_ff'"));
  EXPECT_EQ(
      train(config({"train.steps=3", "train.warmup_steps=1", gone}), runs.file("run"), true).step,
      3);
}

TEST_F(TrainerTest, CorruptCheckpointIsReportedWithItsPath) {
  TempDir runs("xmoe_runs");
  const TrainResult r = train(config({"train.steps=2", "train.warmup_steps=1"}), runs.file("run"));
  const std::string bytes = xmoe_test::read_file(r.checkpoint);
  xmoe_test::write_file(r.checkpoint, bytes.substr(0, bytes.size() / 2));  // torn file
  try {
    train(config({"train.steps=4", "train.warmup_steps=1"}), runs.file("run"), true);
    ADD_FAILURE() << "resumed from a truncated checkpoint";
  } catch (const FileFormatError& e) {
    EXPECT_TRUE(Contains(e.what(), r.checkpoint));
  }
  xmoe_test::write_file(r.checkpoint, "not a checkpoint at all");
  EXPECT_THROW(read_checkpoint(r.checkpoint), FileFormatError);
  EXPECT_THROW(load_saved_model(runs.file("run")), FileFormatError);
  // A valid safetensors file that is not a checkpoint.
  save_safetensors(r.checkpoint, {{"x", at::zeros({2})}});
  try {
    read_checkpoint(r.checkpoint);
    ADD_FAILURE();
  } catch (const FileFormatError& e) {
    EXPECT_TRUE(Contains(e.what(), "not an xmoe checkpoint"));
  }
}

// A checkpoint whose contents are wrong in ways the file format cannot see: every load names the
// file and tensor, and a refused resume leaves the run directory exactly as it was (config.json
// is not rewritten with the refused overrides, metrics and tokenizer copy untouched).
TEST_F(TrainerTest, RefusedResumeNamesTheTensorAndLeavesTheRunAsItWas) {
  TempDir runs("xmoe_runs");
  const std::string run = runs.file("run");
  const TrainResult r = train(config({"train.steps=3", "train.warmup_steps=1"}), run);
  const Checkpoint good = read_checkpoint(r.checkpoint);
  const auto snapshot = [&] {
    std::vector<std::string> files;
    for (const char* name : {"config.json", "metrics.jsonl", "tokenizer.model", "probe_tokens.safetensors"})
      files.push_back(xmoe_test::read_file(run + "/" + name));
    return files;
  };
  const auto before = snapshot();
  const auto expect_refused = [&](const TensorMap& tensors, const std::string& expected) {
    save_safetensors(r.checkpoint, tensors, good.metadata);
    const std::string message = xmoe_test::error_message<FileFormatError>([&] {
      train(config({"train.steps=5", "train.warmup_steps=1", "checkpoint.keep=1"}), run, true);
    });
    EXPECT_TRUE(Contains(message, r.checkpoint + ": " + expected));
    EXPECT_EQ(snapshot(), before);
  };
  std::string weight;
  for (const auto& item : good.tensors)
    if (weight.empty() && item.first.rfind("model.", 0) == 0 &&
        good.tensors.count("optim." + item.first.substr(6) + ".exp_avg_sq"))
      weight = item.first;  // a trained parameter: it has AdamW moments too
  ASSERT_FALSE(weight.empty());
  for (const std::string& name : {weight, "optim." + weight.substr(6) + ".exp_avg_sq"}) {
    SCOPED_TRACE(name);
    TensorMap bad = good.tensors;
    bad[name] = bad.at(name).clone();
    bad[name].view(-1)[0] = std::nan("");
    expect_refused(bad, "tensor '" + name + "' holds non-finite values (NaN or inf)");
    if (name == weight) {
      EXPECT_TRUE(Contains(xmoe_test::error_message<FileFormatError>([&] { load_saved_model(run); }),
                           "tensor '" + name + "' holds non-finite values"));
    }
  }
  TensorMap bad_probe = good.tensors;
  bad_probe["probe.expert.1"] = at::full({bad_probe.at("probe.expert.1").size(0)}, 4, at::kLong);
  expect_refused(bad_probe, "tensor 'probe.expert.1' must be [");
  TensorMap bad_counter = good.tensors;
  bad_counter["train.tokens"] = at::zeros({2}, at::kLong);
  expect_refused(bad_counter, "tensor 'train.tokens' must be one int64");

  save_safetensors(r.checkpoint, good.tensors, good.metadata);
  EXPECT_EQ(train(config({"train.steps=4", "train.warmup_steps=1"}), run, true).step, 4);
}

// Resume trains with the tokenizer the checkpoints were trained with, the run's copy, even when
// data.tokenizer has since been replaced.
TEST_F(TrainerTest, ResumeUsesTheRunsOwnTokenizerCopy) {
  TempDir runs("xmoe_runs");
  const std::string tokenizer = runs.file("spm.model");
  fs::copy_file(dir_->file("tok/spm.model"), tokenizer);
  const std::string data = "data.tokenizer=\"" + tokenizer + "\"";
  train(config({"train.steps=2", "train.warmup_steps=1", data}), runs.file("run"));
  const std::string copy = xmoe_test::read_file(runs.file("run/tokenizer.model"));
  xmoe_test::write_file(tokenizer, "retrained since");
  EXPECT_EQ(train(config({"train.steps=3", "train.warmup_steps=1", data}), runs.file("run"), true).step, 3);
  EXPECT_EQ(xmoe_test::read_file(runs.file("run/tokenizer.model")), copy);
}

// The saved config names the data by absolute path; a moved corpus may be named anew on resume
// (the checkpoint's data state checks it holds the same lines), a changed one is refused.
TEST_F(TrainerTest, ResumeFollowsAMovedCorpusAndRefusesAChangedOne) {
  TempDir runs("xmoe_runs");
  fs::copy(dir_->file("corpus"), runs.file("corpus"), fs::copy_options::recursive);
  train(config({"train.steps=2", "train.warmup_steps=1", "data.corpus=\"" + runs.file("corpus") + "\""}),
        runs.file("run"));
  const auto saved = nlohmann::json::parse(xmoe_test::read_file(runs.file("run/config.json")));
  EXPECT_EQ(saved.at("data").at("corpus"), runs.file("corpus"));
  fs::rename(runs.file("corpus"), runs.file("moved"));
  const std::string moved = "data.corpus=\"" + runs.file("moved") + "\"";
  EXPECT_EQ(train(config({"train.steps=3", "train.warmup_steps=1", moved}), runs.file("run"), true).step, 3);
  std::ofstream(runs.file("moved/train/en.txt"), std::ios::app) << "one more line of training text\n";
  EXPECT_TRUE(Contains(xmoe_test::error_message<FileFormatError>([&] {
                         train(config({"train.steps=4", "train.warmup_steps=1", moved}), runs.file("run"), true);
                       }),
                       "the training data changed since this checkpoint"));
}

// A fresh run into a directory that a failed run left a metrics file in starts a new one.
TEST_F(TrainerTest, FreshRunStartsANewMetricsFile) {
  TempDir runs("xmoe_runs");
  fs::create_directories(runs.file("run"));
  xmoe_test::write_file(runs.file("run/metrics.jsonl"), "{\"kind\": \"train\", \"step\": 1, \"loss\": 9}\n");
  train(config({"train.steps=2", "train.warmup_steps=1"}), runs.file("run"));
  const auto lines = metrics(runs.file("run"));
  ASSERT_EQ(lines.size(), 3u);  // the train lines of steps 1 and 2, the valid line of step 2
  EXPECT_NE(lines[0].at("loss"), 9);
}

// A language listed for training that has no training text is refused before the run starts.
TEST_F(TrainerTest, LanguageWithoutTrainingTextIsRefused) {
  TempDir runs("xmoe_runs");
  fs::copy(dir_->file("corpus"), runs.file("corpus"), fs::copy_options::recursive);
  xmoe_test::write_file(runs.file("corpus/train/uk.txt"), "");
  const std::string message = xmoe_test::error_message<std::runtime_error>([&] {
    train(config({"data.corpus=\"" + runs.file("corpus") + "\"", "data.languages=[\"de\",\"uk\"]"}),
          runs.file("run"));
  });
  EXPECT_TRUE(Contains(message, runs.file("corpus/train/uk.txt") + ": no training text in language 'uk'"));
  EXPECT_FALSE(fs::exists(runs.file("run/config.json")));

  // All languages (data.languages empty) are those with a training file; a language with only
  // validation text is warned about.
  fs::remove(runs.file("corpus/train/uk.txt"));
  fs::remove(runs.file("corpus/train/zh.txt"));
  ::testing::internal::CaptureStderr();
  train(config({"data.corpus=\"" + runs.file("corpus") + "\"", "train.steps=1",
                "train.warmup_steps=0"}),
        runs.file("run"));
  const std::string warning = ::testing::internal::GetCapturedStderr();
  EXPECT_TRUE(Contains(warning, runs.file("corpus/valid/zh.txt") + " has no training file"));
}

// A checkpoint renamed to another step's name would resume at one step and then be overwritten
// as another: reading it says so.
TEST_F(TrainerTest, RenamedCheckpointIsRefused) {
  TempDir runs("xmoe_runs");
  const TrainResult r = train(config({"train.steps=2", "train.warmup_steps=1"}), runs.file("run"));
  const std::string renamed = checkpoint_path(runs.file("run/checkpoints"), 9);
  fs::rename(r.checkpoint, renamed);
  EXPECT_TRUE(Contains(xmoe_test::error_message<FileFormatError>([&] { read_checkpoint(renamed); }),
                       renamed + ": the file name says step 9, its metadata says step 2"));
  EXPECT_THROW(train(config({"train.steps=12", "train.warmup_steps=1"}), runs.file("run"), true),
               FileFormatError);
}

TEST_F(TrainerTest, InterruptedCheckpointWriteLeavesThePreviousOneLoadable) {
  TempDir runs("xmoe_runs");
  const TrainResult r = train(config({"train.steps=2", "train.warmup_steps=1"}), runs.file("run"));
  const std::string dir = runs.file("run/checkpoints");
  // A crash mid-write leaves a temporary file behind; it is never taken for a checkpoint.
  xmoe_test::write_file(dir + "/step-000009.safetensors.tmp.4242", "half a file");
  // A write that fails part-way (an unsupported dtype is found while writing).
  EXPECT_THROW(write_checkpoint(dir, 9, {{"a", at::zeros({3})}, {"b", at::zeros({2}, at::kInt)}}, {}, 2),
               std::invalid_argument);
  const auto all = list_checkpoints(dir);
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].second, r.checkpoint);
  EXPECT_EQ(train(config({"train.steps=3", "train.warmup_steps=1"}), runs.file("run"), true).step, 3);
}

TEST_F(TrainerTest, CheckpointsKeepTheNewestK) {
  TempDir runs("xmoe_runs");
  train(config({"train.steps=5", "train.warmup_steps=1", "checkpoint.every=1", "checkpoint.keep=2"}),
        runs.file("run"));
  const auto all = list_checkpoints(runs.file("run/checkpoints"));
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].first, 4);
  EXPECT_EQ(all[1].first, 5);
}

// Resuming a finished run (scripts/demo.sh does on a re-run), or with train.steps below the run's
// step, trains nothing and leaves the run directory as it was.
TEST_F(TrainerTest, ResumingWithNothingToTrainLeavesTheRunAsItWas) {
  TempDir runs("xmoe_runs");
  const TrainResult first =
      train(config({"train.steps=4", "train.warmup_steps=1"}), runs.file("run"));
  ASSERT_TRUE(first.finished);
  const auto snapshot = [&] {
    std::vector<std::string> files;
    for (const char* name : {"config.json", "metrics.jsonl"})
      files.push_back(xmoe_test::read_file(runs.file(std::string("run/") + name)));
    for (const auto& [step, path] : list_checkpoints(runs.file("run/checkpoints"))) {
      files.push_back(path);
      files.push_back(xmoe_test::read_file(path));
    }
    return files;
  };
  const auto before = snapshot();
  for (const char* steps : {"train.steps=4", "train.steps=2"}) {
    SCOPED_TRACE(steps);
    ::testing::internal::CaptureStderr();
    const TrainResult again =
        train(config({steps, "train.warmup_steps=1"}), runs.file("run"), /*resume=*/true);
    const std::string said = ::testing::internal::GetCapturedStderr();
    // Quiet (progress off): a finished run says nothing; train.steps below the run's step is
    // a request not carried out, and is said.
    const bool below = std::string(steps) == "train.steps=2";
    EXPECT_EQ(said.find("is at step 4 and train.steps is 2: nothing to train") != std::string::npos,
              below)
        << said;
    EXPECT_TRUE(again.finished);
    EXPECT_EQ(again.step, 4);
    EXPECT_EQ(again.checkpoint, first.checkpoint);
    EXPECT_EQ(snapshot(), before);
  }
}

// The learning-rate schedule may change on resume (how a diverged run goes on): the resumed steps
// follow the new schedule from the checkpoint's step, with the weights and AdamW moments it saved.
TEST_F(TrainerTest, ResumeMayChangeTheLearningRateSchedule) {
  TempDir runs("xmoe_runs");
  const PretrainConfig before =
      config({"train.lr=3e-3", "train.warmup_steps=2", "checkpoint.every=4"});
  const PretrainConfig after = config({"train.lr=1e-3", "train.warmup_steps=3",
                                       "train.clip_norm=0.5", "train.final_lr_ratio=0.1",
                                       "checkpoint.every=4"});
  EXPECT_EQ(train(before, runs.file("run"), false, /*max_steps=*/4).step, 4);
  EXPECT_EQ(train(after, runs.file("run"), /*resume=*/true).step, 8);
  // Another run that switched the schedule at the same step, from a copy of the same checkpoint.
  EXPECT_EQ(train(before, runs.file("twin"), false, 4).step, 4);
  EXPECT_EQ(train(after, runs.file("twin"), true).step, 8);
  const auto lines = metrics(runs.file("run"));
  int checked = 0;
  for (const auto& line : lines) {
    if (line.at("kind") != "train") continue;
    const int64_t step = line.at("step").get<int64_t>();
    const TrainConfig& t = (step <= 4 ? before : after).train;
    EXPECT_DOUBLE_EQ(line.at("lr").get<double>(),
                     learning_rate_at(step - 1, t.lr, t.warmup_steps, t.steps, t.final_lr_ratio))
        << "step " << step;
    ++checked;
  }
  EXPECT_EQ(checked, 8);
  EXPECT_EQ(lines, metrics(runs.file("twin")));  // still deterministic
  const auto saved = nlohmann::json::parse(xmoe_test::read_file(runs.file("run/config.json")));
  EXPECT_EQ(saved.at("train").at("lr"), 1e-3);
}

// A learning rate far too large makes the model blow up within a few steps. The run stops with an
// error naming the step and the fix. The checkpoint of the step before is set aside (resumed, it
// would replay the same batch from the same weights and fail again at any rate), so --resume goes
// on from the one before it, and at a sane rate the run then finishes. With MoE layers a router
// sees the non-finite values first; the dense model (no router) stops on the loss or gradient.
TEST_F(TrainerTest, DivergedRunNamesTheStepAndSetsAsideTheCheckpointThatLedToIt) {
  const std::vector<std::string> blow_up = {"train.lr=1e30", "train.warmup_steps=1",
                                            "train.clip_norm=0"};
  for (const bool dense : {false, true}) {
    SCOPED_TRACE(dense ? "dense" : "MoE");
    std::vector<std::string> sane = {"train.steps=8", "checkpoint.every=1", "checkpoint.keep=20"};
    if (dense) sane.insert(sane.end(), {"model.moe_layers=[]", "moe=null"});
    std::vector<std::string> diverging = sane;
    diverging.insert(diverging.end(), blow_up.begin(), blow_up.end());
    TempDir runs("xmoe_runs");

    check_diverged_run(config(diverging), runs.file("from_scratch"), /*resume=*/false);

    EXPECT_EQ(train(config(sane), runs.file("run"), false, /*max_steps=*/3).step, 3);
    const int64_t failed = check_diverged_run(config(diverging), runs.file("run"), true);
    EXPECT_GE(failed, 5);  // step 4 is the first at 1e30; its weights make step 5 fail
    const TrainResult resumed = train(config(sane), runs.file("run"), true);
    EXPECT_TRUE(resumed.finished);
    EXPECT_EQ(resumed.step, 8);
  }
}

TEST_F(TrainerTest, EvaluationOfTheSavedModelReproducesTheValidationLoss) {
  TempDir runs("xmoe_runs");
  const TrainResult r = train(config({"train.steps=3", "train.warmup_steps=1"}), runs.file("run"));
  SavedModel saved = load_saved_model(runs.file("run"));
  EXPECT_EQ(saved.step, 3);
  EXPECT_EQ(saved.tokenizer, runs.file("run/tokenizer.model"));
  EXPECT_FALSE(saved.tokenizer_from_config);
  const Tokenizer tokenizer = Tokenizer::load(saved.tokenizer);
  const MlmDataset valid(tokenizer, dataset_options(saved.config, "valid"));
  const MlmEvaluation e = evaluate_mlm(saved.model, valid, saved.config.eval.max_batches);
  EXPECT_DOUBLE_EQ(e.loss, r.valid_loss);
  ASSERT_EQ(e.languages.size(), 4u);
  EXPECT_EQ(e.languages[0].language, "de");
  EXPECT_GT(e.languages[0].tokens, 0);
  // Without the run's copy the config's tokenizer is used, and the caller is told so.
  fs::remove(runs.file("run/tokenizer.model"));
  const SavedModel fallback = load_saved_model(runs.file("run"));
  EXPECT_TRUE(fallback.tokenizer_from_config);
  EXPECT_EQ(fallback.tokenizer, dir_->file("tok/spm.model"));
}

// Validation split over W ranks gives every rank the evaluation one process makes of all the
// batches. With the experts split, a rank left without a batch in a language's last round still
// has to run a forward (the others wait for its exchanges): the batch counts per language here
// do not all divide by 2 or 4, so ranks sit out rounds; with replicated experts they just skip.
TEST_F(TrainerTest, EvaluationSplitOverRanksEqualsOneProcess) {
  const PretrainConfig c = config();
  const Tokenizer tokenizer = Tokenizer::load(c.data.tokenizer);
  const MlmDataset valid(tokenizer, dataset_options(c, "valid"));
  MoEEncoder whole(encoder_options(c, tokenizer.vocab_size()));
  const MlmEvaluation expected = evaluate_mlm(whole, valid, /*max_batches=*/0);
  std::vector<int64_t> batches;  // per language
  for (int64_t l = 0; l < valid.n_languages(); ++l) {
    MlmEvalIterator it = valid.eval_iterator(l);
    MlmBatch batch;
    int64_t n = 0;
    while (it.next(&batch)) ++n;
    batches.push_back(n);
  }
  ASSERT_TRUE(std::any_of(batches.begin(), batches.end(), [](int64_t n) { return n % 2 != 0; }))
      << "the fixture no longer leaves a rank without a batch";

  for (const auto& [ranks, split] : std::vector<std::pair<int, bool>>{{2, true}, {4, true}, {3, false}}) {
    std::vector<MlmEvaluation> got(static_cast<size_t>(ranks));
    xmoe_test::run_ranks(ranks, [&](int rank, dist::Communicator& group) {
      MoEEncoder model(encoder_options(c, tokenizer.vocab_size(),
                                       split ? group.shared_from_this() : nullptr));
      got[static_cast<size_t>(rank)] = evaluate_mlm(model, valid, 0, &group);
    });
    for (int r = 0; r < ranks; ++r) {
      const MlmEvaluation& e = got[static_cast<size_t>(r)];
      SCOPED_TRACE(std::to_string(ranks) + " ranks, rank " + std::to_string(r));
      EXPECT_EQ(e.tokens, expected.tokens);
      EXPECT_NEAR(e.loss, expected.loss, 1e-5 * expected.loss);
      ASSERT_EQ(e.languages.size(), expected.languages.size());
      for (size_t l = 0; l < e.languages.size(); ++l) {
        EXPECT_EQ(e.languages[l].tokens, expected.languages[l].tokens);
        EXPECT_NEAR(e.languages[l].loss, expected.languages[l].loss, 1e-5 * expected.loss);
      }
      EXPECT_EQ(e.loss, got[0].loss);  // one all-reduce: the same number on every rank
    }
  }
}

// Two ranks (threads, each its own Gloo group member) train one run with the experts split
// over them. Dropout is off: it draws from the process-wide generator, which threads share
// (separate processes, as `xmoe pretrain --nproc` runs, each have their own).
TEST_F(TrainerTest, ExpertParallelRunResumesBitForBitAndSavesTheWholeModel) {
  TempDir runs("xmoe_runs");
  const PretrainConfig c = config({"model.dropout=0", "model.attention_dropout=0"});
  auto train_ranks = [&](const std::string& run, bool resume, int64_t max_steps) {
    std::vector<TrainResult> results(2);
    xmoe_test::run_ranks(2, [&](int rank, dist::Communicator& group) {
      TrainerOptions o;
      o.run_dir = run;
      o.resume = resume;
      o.progress = false;
      o.max_steps_this_run = max_steps;
      o.group = group.shared_from_this();
      results[rank] = pretrain(c, o);
    });
    EXPECT_EQ(results[0].checkpoint, results[1].checkpoint);
    return results[0];
  };
  const TrainResult whole = train_ranks(runs.file("whole"), false, -1);
  EXPECT_TRUE(whole.finished);
  const TrainResult first = train_ranks(runs.file("split"), false, 4);
  EXPECT_FALSE(first.finished);
  const TrainResult second = train_ranks(runs.file("split"), true, -1);
  EXPECT_TRUE(second.finished);
  const auto a = metrics(runs.file("whole")), b = metrics(runs.file("split"));
  ASSERT_EQ(a.size(), 8u + 3u);  // rank 0 alone writes: 8 train lines, valid at 3, 6, 8
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "line " << i;

  // The checkpoint is the whole model, every expert included, and each rank's own state.
  const Checkpoint saved = read_checkpoint(whole.checkpoint);
  EXPECT_EQ(saved.tensors.at("model.layers.1.moe.experts.0.w1").size(0), 4);
  EXPECT_EQ(saved.tensors.at("optim.layers.1.moe.experts.0.w1.exp_avg").size(0), 4);
  EXPECT_EQ(saved.tensors.at("dist.world_size").item<int64_t>(), 2);
  EXPECT_TRUE(saved.tensors.count("rank1.data.cursor"));
  EXPECT_TRUE(saved.tensors.count("rank1.rng.router.1"));
  // The ranks drew different batches: their data positions differ.
  EXPECT_FALSE(saved.tensors.at("data.cursor").equal(saved.tensors.at("rank1.data.cursor")));

  // One process evaluates it as any checkpoint, to the validation loss the two ranks logged.
  SavedModel model = load_saved_model(whole.checkpoint);
  const Tokenizer tokenizer = Tokenizer::load(model.tokenizer);
  const MlmDataset valid(tokenizer, dataset_options(model.config, "valid"));
  const MlmEvaluation e = evaluate_mlm(model.model, valid, model.config.eval.max_batches);
  EXPECT_NEAR(e.loss, whole.valid_loss, 1e-5 * whole.valid_loss);
  EXPECT_NEAR(e.loss, a.back().at("valid_loss").get<double>(), 1e-5 * e.loss);

  // Resuming on another number of ranks is refused, naming the checkpoint and the ranks.
  try {
    train(config({"model.dropout=0", "model.attention_dropout=0", "train.steps=10"}),
          runs.file("whole"), /*resume=*/true);
    ADD_FAILURE() << "a 2-rank checkpoint resumed on 1 rank";
  } catch (const FileFormatError& error) {
    EXPECT_TRUE(Contains(error.what(), "written by a run on 2 rank(s)")) << error.what();
    EXPECT_TRUE(Contains(error.what(), whole.checkpoint)) << error.what();
  }
}

TEST(TrainingState, ModuleStateRoundTripsAndRejectsMissingOrForeignTensors) {
  torch::nn::Linear a(3, 2), b(3, 2);
  TensorMap state = module_state(*a);
  ASSERT_EQ(state.size(), 2u);  // model.weight, model.bias
  load_module_state(*b, state, "ckpt");
  EXPECT_TRUE(b->weight.equal(a->weight));
  EXPECT_TRUE(b->bias.equal(a->bias));

  // Loading `tensors` must fail with a FileFormatError whose message contains `expected`.
  auto expect_rejected = [&](const TensorMap& tensors, const std::string& expected) {
    try {
      load_module_state(*b, tensors, "ckpt");
      ADD_FAILURE() << "accepted a checkpoint that should fail with: " << expected;
    } catch (const FileFormatError& e) {
      EXPECT_TRUE(Contains(e.what(), expected));
    }
  };
  TensorMap foreign = state;
  foreign["model.extra"] = at::zeros({1});
  expect_rejected(foreign, "ckpt: tensor 'model.extra' does not belong to this model");
  TensorMap missing = state;
  missing.erase("model.bias");
  expect_rejected(missing, "ckpt: missing tensor 'model.bias'");
  TensorMap reshaped = state;
  reshaped["model.weight"] = at::zeros({2, 4});
  EXPECT_THROW(load_module_state(*b, reshaped, "ckpt"), FileFormatError);
}

}  // namespace
