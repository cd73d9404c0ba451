// Fine-tuning on the help-topic task: labels from corpus keys, the task files and their errors,
// classification scores against hand-computed values, and end to end on a generated parallel
// corpus: a pre-trained tiny X-MoE encoder learns the task, frozen routing keeps every router and
// expert parameter bit-identical, a seed reproduces a run, and bad inputs are refused.
#include "xmoe/analysis/run_analysis.h"
#include "xmoe/data/tokenizer_trainer.h"
#include "xmoe/data/topic_task.h"
#include "xmoe/io/safetensors.h"
#include "xmoe/train/checkpoint.h"
#include "xmoe/train/finetune.h"
#include "xmoe/train/saved_model.h"
#include "xmoe/train/trainer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <map>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "test_data_util.h"
#include "test_util.h"

namespace {

using namespace xmoe;
using xmoe_test::Contains;
using xmoe_test::TempDir;

TEST(HelpTopic, LabelsComeFromTheModuleFolderOfTheKey) {
  EXPECT_EQ(help_topic_classes(), (std::vector<std::string>{"calc", "writer", "basic", "impress",
                                                            "draw", "base", "math", "chart"}));
  EXPECT_EQ(help_topic_label("libreoffice:text/scalc/01/04060101.html#par_id3150084"), 0);
  EXPECT_EQ(help_topic_label("libreoffice:text/swriter/guide/x.html#hd_id1"), 1);
  EXPECT_EQ(help_topic_label("libreoffice:text/sbasic/shared/03/lib.html#p"), 2);
  EXPECT_EQ(help_topic_label("libreoffice:text/schart/main0000.html#p"), 7);
  EXPECT_EQ(help_topic_label("libreoffice:text/shared/optionen/01020000.html#p"), -1);
  EXPECT_EQ(help_topic_label("libreoffice:text/scalc"), -1);  // no page below the folder
  EXPECT_EQ(help_topic_label("libreoffice:text/scalcx/a.html#p"), -1);
  EXPECT_EQ(help_topic_label("manpages:man1/ls.1#3"), -1);
  EXPECT_EQ(help_topic_label("fortunes:0123456789abcdef#0"), -1);
  EXPECT_EQ(help_topic_label(""), -1);
}

// labels {0, 0, 1, 2}, predictions {0, 1, 1, 1}: accuracy 2/4; F1 per class: class 0 (tp 1,
// fn 1) 2/3, class 1 (tp 1, fp 2) 1/2, class 2 (fn 1) 0; class 3 neither predicted nor present.
TEST(HelpTopic, ScoresMatchHandComputedValues) {
  double accuracy = 0, f1 = 0;
  classification_scores({0, 0, 1, 2}, {0, 1, 1, 1}, 4, &accuracy, &f1);
  EXPECT_DOUBLE_EQ(accuracy, 0.5);
  EXPECT_NEAR(f1, (2.0 / 3.0 + 0.5 + 0.0) / 3.0, 1e-12);
  classification_scores({3, 3}, {3, 3}, 4, &accuracy, &f1);
  EXPECT_DOUBLE_EQ(accuracy, 1.0);
  EXPECT_DOUBLE_EQ(f1, 1.0);
  classification_scores({}, {}, 4, &accuracy, &f1);
  EXPECT_TRUE(std::isnan(accuracy) && std::isnan(f1));
  EXPECT_THROW(classification_scores({0}, {4}, 4, &accuracy, &f1), std::invalid_argument);
  EXPECT_THROW(classification_scores({0, 1}, {0}, 4, &accuracy, &f1), std::invalid_argument);
}

// ---- a generated parallel corpus with keys ------------------------------------------------

// Words of each class, and filler words every class uses.
const std::map<std::string, std::vector<std::vector<std::string>>>& class_words() {
  static const std::map<std::string, std::vector<std::vector<std::string>>> words = {
      {"en", {{"cell", "sheet", "formula", "sum", "column", "row", "value", "number"},
              {"page", "text", "paragraph", "font", "style", "letter", "word", "margin"},
              {"the", "a", "and", "with", "of", "help", "window", "menu"}}},
      {"de", {{"Zelle", "Tabelle", "Formel", "Summe", "Spalte", "Zeile", "Wert", "Zahl"},
              {"Seite", "Text", "Absatz", "Schrift", "Stil", "Brief", "Wort", "Rand"},
              {"der", "die", "und", "mit", "von", "Hilfe", "Fenster", "Menü"}}},
  };
  return words;
}

// Line i of a split: class i % 3 (0 calc, 1 writer, 2 a shared page of no class), the same
// page key in every language; word choices from a fixed generator.
void write_labelled_corpus(const std::string& dir, const std::string& split, int64_t n,
                           uint64_t seed) {
  std::filesystem::create_directories(dir + "/" + split);
  const char* folders[] = {"scalc", "swriter", "shared"};
  for (const auto& [lang, words] : class_words()) {
    uint64_t state = seed;
    auto next = [&state] {
      state = state * 6364136223846793005ULL + 1442695040888963407ULL;
      return state >> 33;
    };
    std::string text, keys;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t c = i % 3;
      std::string line;
      for (int w = 0; w < 6; ++w) {
        const auto& pool = words[w % 2 == 0 ? c : 2];
        line += (w ? " " : "") + pool[next() % pool.size()];
      }
      text += line + ".\n";
      keys += std::string("libreoffice:text/") + folders[c] + "/" + split + std::to_string(i / 6) +
              ".html#par_" + std::to_string(i) + "\n";
    }
    xmoe_test::write_file(dir + "/" + split + "/" + lang + ".txt", text);
    xmoe_test::write_file(dir + "/" + split + "/" + lang + ".keys", keys);
  }
}

class FinetuneTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::make_unique<TempDir>("xmoe_finetune");
    write_labelled_corpus(corpus(), "train", 300, 1);
    write_labelled_corpus(corpus(), "valid", 60, 2);
    write_labelled_corpus(corpus(), "test", 60, 3);
    // A language with keys but no help text (fortunes only): nothing to score.
    for (const char* split : {"valid", "test"}) {
      xmoe_test::write_file(corpus() + "/" + split + "/fr.txt", "Qui vivra verra, dit-on.\n");
      xmoe_test::write_file(corpus() + "/" + split + "/fr.keys", "fortunes:0123456789abcdef#0\n");
    }
    // 48 words in all: SentencePiece allows at most ~100 pieces here.
    train_tokenizer_from_corpus(corpus(), "train", dir_->file("tok/spm"),
                                xmoe_test::tiny_tokenizer_options().vocab_size(90));
    const std::string config = R"({
      "name": "tiny",
      "data": {"corpus": ")" + corpus() + R"(", "tokenizer": ")" + dir_->file("tok/spm.model") +
                               R"(", "max_len": 24, "batch_tokens": 192},
      "model": {"d_model": 16, "n_layers": 2, "n_heads": 2, "d_ff": 32, "moe_layers": [1]},
      "moe": {"n_expert": 4, "top_k": 1, "router": "xmoe", "d_e": 8},
      "train": {"steps": 10, "lr": 3e-3, "warmup_steps": 2, "seed": 5},
      "log": {"every": 5},
      "eval": {"every": 100, "max_batches": 1, "probe_tokens": 100},
      "checkpoint": {"every": 100, "keep": 1}
    })";
    TrainerOptions o;
    o.run_dir = pretrained();
    o.progress = false;
    ASSERT_TRUE(pretrain(parse_pretrain_config(config, "test config"), o).finished);
  }
  static void TearDownTestSuite() { dir_.reset(); }

  static std::string corpus() { return dir_->file("corpus"); }
  static std::string pretrained() { return dir_->file("pre"); }

  static FinetuneOptions options(const std::string& out) {
    FinetuneOptions o;
    o.checkpoint = pretrained();
    o.out = dir_->file(out);
    o.steps = 60;
    o.batch_size = 16;
    o.lr = 3e-3;
    o.eval_every = 30;
    o.progress = false;
    return o;
  }

  // metrics.jsonl without its wall-clock field.
  static std::vector<nlohmann::json> metrics(const std::string& out) {
    std::vector<nlohmann::json> lines;
    std::istringstream in(xmoe_test::read_file(out + "/metrics.jsonl"));
    for (std::string line; std::getline(in, line);) {
      nlohmann::json j = nlohmann::json::parse(line);
      j.erase("tokens_per_s");
      lines.push_back(j);
    }
    return lines;
  }

  static inline std::unique_ptr<TempDir> dir_;
};

TEST_F(FinetuneTest, TaskFilesAreReadWithTheirLabels) {
  const Tokenizer tokenizer = Tokenizer::load(dir_->file("tok/spm.model"));
  const TopicSplit s = load_topic_split(corpus(), "test", "de", tokenizer, 24);
  EXPECT_EQ(s.lines, 60);
  ASSERT_EQ(s.examples.size(), 40u);  // every third line is a shared page
  for (size_t i = 0; i < s.examples.size(); ++i) {
    EXPECT_EQ(s.examples[i].label, static_cast<int64_t>(i % 2));  // calc, writer, calc, …
    EXPECT_EQ(s.examples[i].ids.front(), Tokenizer::kClsId);
    EXPECT_EQ(s.examples[i].ids.back(), Tokenizer::kSepId);
    EXPECT_LE(s.examples[i].ids.size(), 24u);
  }
  const TopicSplit cut = load_topic_split(corpus(), "test", "de", tokenizer, 4);
  for (const TopicExample& e : cut.examples) {
    ASSERT_EQ(e.ids.size(), 4u);  // [CLS] two pieces [SEP]
    EXPECT_EQ(e.ids.back(), Tokenizer::kSepId);
  }
  EXPECT_EQ(list_topic_languages(corpus(), "test"),
            (std::vector<std::string>{"de", "en", "fr"}));

  // Evaluation batches: every example once, by non-decreasing length, at most 7 per batch.
  const std::vector<std::vector<int64_t>> batches = batches_by_length(s.examples, 7);
  EXPECT_EQ(batches.size(), 6u);  // ceil(40 / 7)
  std::vector<int64_t> seen;
  for (const auto& batch : batches) {
    EXPECT_LE(batch.size(), 7u);
    seen.insert(seen.end(), batch.begin(), batch.end());
  }
  for (size_t i = 1; i < seen.size(); ++i)
    EXPECT_LE(s.examples[seen[i - 1]].ids.size(), s.examples[seen[i]].ids.size());
  std::sort(seen.begin(), seen.end());
  std::vector<int64_t> all(s.examples.size());
  std::iota(all.begin(), all.end(), 0);
  EXPECT_EQ(seen, all);

  const TopicBatch b = make_topic_batch(s.examples, {1, 0});
  const int64_t longest = static_cast<int64_t>(std::max(s.examples[0].ids.size(),
                                                        s.examples[1].ids.size()));
  EXPECT_EQ(b.ids.sizes(), (std::vector<int64_t>{2, longest}));
  EXPECT_EQ(b.labels[0].item<int64_t>(), 1);
  EXPECT_EQ(b.tokens, static_cast<int64_t>(s.examples[0].ids.size() + s.examples[1].ids.size()));
  EXPECT_EQ(b.ids.ne(Tokenizer::kPadId).sum().item<int64_t>(), b.tokens);
}

TEST_F(FinetuneTest, MissingOrMismatchedKeysAreNamed) {
  const Tokenizer tokenizer = Tokenizer::load(dir_->file("tok/spm.model"));
  TempDir other("xmoe_finetune_keys");
  write_labelled_corpus(other.path(), "test", 6, 1);
  std::filesystem::remove(other.file("test/de.keys"));
  try {
    load_topic_split(other.path(), "test", "de", tokenizer, 24);
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_TRUE(Contains(e.what(), other.file("test/de.keys") + ": no keys file"));
    EXPECT_TRUE(Contains(e.what(), "xmoe corpus build --keys"));
  }
  EXPECT_EQ(list_topic_languages(other.path(), "test"), std::vector<std::string>{"en"});
  xmoe_test::write_file(other.file("test/en.keys"), "libreoffice:text/scalc/a.html#p\n");
  try {
    load_topic_split(other.path(), "test", "en", tokenizer, 24);
    FAIL() << "no error";
  } catch (const FileFormatError& e) {
    EXPECT_TRUE(Contains(e.what(), other.file("test/en.keys") + ": 1 keys for 6 lines"));
  }
}

TEST_F(FinetuneTest, LearnsTheTaskWithFrozenRoutingLeftBitIdentical) {
  const FinetuneResult r = finetune(options("frozen"));
  ASSERT_EQ(r.test.size(), 2u);
  EXPECT_EQ(r.test[0].language, "en");  // the trained language first
  EXPECT_EQ(r.test[0].examples, 40);
  EXPECT_GE(r.test[0].accuracy, 0.9) << r.to_json().dump();
  EXPECT_GT(r.test[0].macro_f1, 0.85);
  EXPECT_DOUBLE_EQ(r.zero_shot_test_accuracy, r.test[1].accuracy);

  // Every router and expert tensor as pre-trained; the rest of the encoder has moved.
  const Checkpoint before = read_checkpoint(resolve_checkpoint(pretrained()));
  const Checkpoint after = read_checkpoint(r.checkpoint);
  int64_t moe_tensors = 0, moved = 0;
  for (const auto& [name, t] : before.tensors) {
    if (name.rfind("model.", 0) != 0) continue;
    ASSERT_EQ(after.tensors.count(name), 1u) << name;
    if (name.find(".moe.") != std::string::npos) {
      ++moe_tensors;
      EXPECT_TRUE(at::equal(t, after.tensors.at(name))) << name;
    } else if (!at::equal(t, after.tensors.at(name))) {
      ++moved;
    }
  }
  EXPECT_GE(moe_tensors, 6);  // projection, expert embeddings, temperature, w1, b1, w2, b2
  EXPECT_GT(moved, 10);
  EXPECT_EQ(after.tensors.count("head.out.weight"), 1u);
  EXPECT_EQ(after.tensors.at("head.out.weight").sizes(), (std::vector<int64_t>{8, 16}));
  // The fine-tuned directory is a model the pre-training tools read, with its own tokenizer.
  const SavedModel saved = load_saved_model(dir_->file("frozen"));
  EXPECT_EQ(saved.step, 60);
  EXPECT_EQ(saved.tokenizer, dir_->file("frozen/tokenizer.model"));
  EXPECT_FALSE(saved.tokenizer_from_config);

  const std::vector<nlohmann::json> lines = metrics(dir_->file("frozen"));
  ASSERT_FALSE(lines.empty());
  const nlohmann::json& last = lines.back();
  EXPECT_EQ(last["kind"], "valid");
  EXPECT_EQ(last["step"], 60);
  // One MoE layer. Frozen routing keeps the router's weights, not its decisions: the hidden
  // states it scores have moved, so some tokens changed expert, but not every one.
  ASSERT_EQ(last["routing_changed"].size(), 1u);
  const double changed = last["routing_changed"][0].get<double>();
  EXPECT_GT(changed, 0.0);
  EXPECT_LT(changed, 1.0);
  const nlohmann::json results =
      nlohmann::json::parse(xmoe_test::read_file(dir_->file("frozen/results.json")));
  EXPECT_EQ(results["test"]["en"]["accuracy"], r.test[0].accuracy);
  EXPECT_EQ(results["freeze_routing"], true);

  // fr, found by its keys file, has no help-topic paragraph and is left out; named, it stays.
  EXPECT_EQ(results["test"].size(), 2u);
  FinetuneOptions named = options("named");
  named.steps = 1;
  named.languages = {"fr", "de"};
  const FinetuneResult n = finetune(named);
  ASSERT_EQ(n.test.size(), 3u);
  EXPECT_EQ(n.test[1].language, "fr");
  EXPECT_EQ(n.test[1].examples, 0);
  EXPECT_DOUBLE_EQ(n.zero_shot_test_accuracy, n.test[2].accuracy);  // de only

  // Mean pooling learns it as well.
  FinetuneOptions mean = options("mean");
  mean.pooling = Pooling::kMean;
  EXPECT_GE(finetune(mean).test[0].accuracy, 0.9);

  // The same output directory again: refused, the model left in place.
  try {
    finetune(options("frozen"));
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_TRUE(Contains(e.what(), dir_->file("frozen") + " already holds a model"));
  }
  EXPECT_TRUE(std::filesystem::exists(r.checkpoint));
  // So does the pre-training run's own directory, its checkpoints untouched.
  FinetuneOptions into_source = options("frozen");
  into_source.out = pretrained();
  const auto before_files = list_checkpoints(pretrained() + "/checkpoints");
  EXPECT_THROW(finetune(into_source), std::runtime_error);
  EXPECT_EQ(list_checkpoints(pretrained() + "/checkpoints"), before_files);
}

TEST_F(FinetuneTest, UnfrozenRoutingTrainsTheRouterAndAuxCoefZeroDropsTheAuxLoss) {
  FinetuneOptions o = options("unfrozen");
  o.steps = 6;
  o.freeze_routing = false;
  o.aux_coef = 0.0;
  const FinetuneResult r = finetune(o);
  const Checkpoint before = read_checkpoint(resolve_checkpoint(pretrained()));
  const Checkpoint after = read_checkpoint(r.checkpoint);
  const std::string embeddings = "model.layers.1.moe.router.expert_embed";
  ASSERT_EQ(before.tensors.count(embeddings), 1u);
  EXPECT_FALSE(at::equal(before.tensors.at(embeddings), after.tensors.at(embeddings)));
  for (const nlohmann::json& line : metrics(o.out)) {
    if (line["kind"] == "train") {
      EXPECT_EQ(line["aux_loss"].get<double>(), 0.0) << line;
    }
  }

  FinetuneOptions with_aux = options("with-aux");
  with_aux.steps = 6;
  finetune(with_aux);
  for (const nlohmann::json& line : metrics(with_aux.out)) {
    if (line["kind"] == "train") {
      EXPECT_GT(line["aux_loss"].get<double>(), 0.0) << line;
    }
  }
}

TEST_F(FinetuneTest, ASeedReproducesTheRun) {
  FinetuneOptions a = options("seed-a"), b = options("seed-b"), c = options("seed-c");
  for (FinetuneOptions* o : {&a, &b, &c}) o->steps = 12, o->log_every = 3, o->eval_every = 6;
  c.seed = 2;
  finetune(a);
  finetune(b);
  finetune(c);
  EXPECT_EQ(metrics(a.out), metrics(b.out));
  EXPECT_NE(metrics(a.out), metrics(c.out));
  for (const nlohmann::json& line : metrics(a.out))
    if (line["kind"] == "train") {
      ASSERT_EQ(line["expert_counts"].size(), 1u);  // one MoE layer of 4 experts
      EXPECT_EQ(line["expert_counts"][0].size(), 4u);
    }

  // Fine-tuning runs from one checkpoint are runs `xmoe analyze` compares (the paper's Figure 3b
  // setting): the same seed routes identically, another seed is measured on the same tokens.
  EXPECT_EQ(xmoe_test::read_file(a.out + "/probe_tokens.safetensors"),
            xmoe_test::read_file(pretrained() + "/probe_tokens.safetensors"));
  analysis::RunAnalysisOptions ao;
  ao.window_steps = 6;
  ao.print_warnings = false;
  const analysis::RunAnalysis same = analysis::analyze_runs({a.out, b.out}, ao);
  ASSERT_TRUE(same.consistency.has_value());
  ASSERT_EQ(same.consistency->layers.size(), 1u);
  EXPECT_EQ(same.consistency->layers[0].windows.size(), 2u);  // steps 1-6 and 7-12
  EXPECT_DOUBLE_EQ(same.consistency->layers[0].mean, 1.0);
  ASSERT_EQ(same.consistency->token_agreement.size(), 1u);
  EXPECT_DOUBLE_EQ(same.consistency->token_agreement[0].agreement, 1.0);
  EXPECT_EQ(same.runs[0].name, "tiny-finetune-en-seed1");
  const analysis::RunAnalysis other = analysis::analyze_runs({a.out, c.out}, ao);
  ASSERT_TRUE(other.consistency.has_value());
  EXPECT_LT(other.consistency->layers[0].mean, 1.0);
  EXPECT_EQ(other.runs[1].name, "tiny-finetune-en-seed2");
}

TEST_F(FinetuneTest, BadOptionsAndInputsAreRefusedBeforeAnythingIsWritten) {
  auto error_of = [](const FinetuneOptions& o) -> std::string {
    try {
      finetune(o);
    } catch (const std::exception& e) {
      return e.what();
    }
    return "no error";
  };
  FinetuneOptions o = options("bad");
  o.steps = 0;
  EXPECT_TRUE(Contains(error_of(o), "steps must be > 0"));
  o = options("bad");
  o.train_language = "fr";
  EXPECT_TRUE(Contains(error_of(o), corpus() + "/train/fr.txt: no such corpus file"));
  o = options("bad");
  o.max_len = 25;
  EXPECT_TRUE(Contains(error_of(o), "max_len 25 exceeds the model's 24 positions"));
  o = options("bad");
  o.checkpoint = dir_->file("nowhere");
  EXPECT_TRUE(Contains(error_of(o), dir_->file("nowhere") + ": no such checkpoint"));
  EXPECT_FALSE(std::filesystem::exists(dir_->file("bad")));
}

}  // namespace
