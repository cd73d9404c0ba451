// xmoe finetune: cross-lingual fine-tuning of a pre-trained encoder on the help-topic task
// (train on one language, evaluate zero-shot on every language; docs/finetuning.md).
//   xmoe finetune --checkpoint RUN_DIR|FILE --out DIR [--corpus DIR] [--train-language en]
//                 [--languages en,de,...] [--steps N] [--batch-size N] [--lr X]
//                 [--no-freeze-routing] [--aux-coef X] [--seed N] [--json] ...
#include "commands.h"
#include "validators.h"

#include "xmoe/train/finetune.h"

#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>

namespace xmoe::cli {

namespace {

struct FinetuneArgs {
  FinetuneOptions options;
  std::string pooling = "cls";
  double aux_coef = -1;  // < 0: not given
  bool quiet = false, json = false;
};

void run_finetune(FinetuneArgs& a) {
  FinetuneOptions& o = a.options;
  if (a.aux_coef >= 0) o.aux_coef = a.aux_coef;
  o.pooling = parse_pooling(a.pooling);
  o.progress = !a.quiet && !a.json;
  const FinetuneResult r = finetune(o);
  if (a.json) {
    std::cout << r.to_json().dump() << "\n";
    return;
  }
  std::printf("fine-tuned %lld steps on %s; model %s\n", static_cast<long long>(r.steps),
              r.train_language.c_str(), r.checkpoint.c_str());
  std::printf("%-10s %9s %10s %10s %10s %10s\n", "language", "examples", "valid acc", "test acc",
              "test F1", "");
  auto cell = [](double v) {  // "-" for a language without paragraphs to score
    char text[32];
    std::snprintf(text, sizeof text, "%10.3f", v);
    return std::isfinite(v) ? std::string(text) : std::string(9, ' ') + "-";
  };
  for (size_t i = 0; i < r.test.size(); ++i) {
    const TopicScores& v = r.valid[i];
    const TopicScores& t = r.test[i];
    std::printf("%-10s %9lld %s %s %s %10s\n", t.language.c_str(),
                static_cast<long long>(t.examples), cell(v.accuracy).c_str(),
                cell(t.accuracy).c_str(), cell(t.macro_f1).c_str(),
                t.language == r.train_language ? "(trained)" : "zero-shot");
  }
  size_t zero_shot = 0;
  for (const TopicScores& t : r.test) zero_shot += t.language != r.train_language && t.examples > 0;
  std::printf("zero-shot test accuracy (mean over %zu languages): %.3f\n", zero_shot,
              r.zero_shot_test_accuracy);
  std::printf("results: %s/results.json\n", o.out.c_str());
}

}  // namespace

void register_finetune(CLI::App& app) {
  auto args = std::make_shared<FinetuneArgs>();
  FinetuneOptions& o = args->options;
  CLI::App* cmd = app.add_subcommand(
      "finetune", "Cross-lingual fine-tuning of a pre-trained encoder on the help-topic task: "
                  "train on one language, test zero-shot on all (docs/finetuning.md)");
  cmd->add_option("--checkpoint", o.checkpoint,
                  "Pre-training checkpoint file, or a run directory (its newest checkpoint)")
      ->required();
  cmd->add_option("--out", o.out, "Output directory (must not hold checkpoints yet)")
      ->required();
  cmd->add_option("--corpus", o.corpus,
                  "Corpus built with --keys (default: the pre-training run's corpus)");
  cmd->add_option("--train-language", o.train_language, "Language to fine-tune on (default: en)")
      ->check(kNonEmpty);
  cmd->add_option("--languages", o.languages,
                  "Languages to evaluate, comma-separated (default: every language with test keys)")
      ->delimiter(',')
      ->check(kNonEmpty);
  // Upper bounds: a typo must not start a run of years or one batch of the whole corpus.
  cmd->add_option("--steps", o.steps, "Optimizer steps (default: 300)")
      ->check(int_in(1, 10000000));
  cmd->add_option("--batch-size", o.batch_size, "Paragraphs per step (default: 32)")
      ->check(int_in(1, 65536));
  cmd->add_option("--lr", o.lr, "Peak learning rate (default: 1e-3)")->check(kPositive);
  cmd->add_option("--warmup-ratio", o.warmup_ratio,
                  "Share of the steps spent warming up (default: 0.1)")
      ->check(number_in(0, 1, "in [0, 1]", "[0, 1]"));
  cmd->add_option("--weight-decay", o.weight_decay, "AdamW weight decay (default: 0.01)")
      ->check(kNonNegative);
  cmd->add_option("--clip-norm", o.clip_norm, "Gradient-norm clipping, 0 = off (default: 1)")
      ->check(kNonNegative);
  cmd->add_option("--max-len", o.max_len,
                  "Ids per paragraph, [CLS] and [SEP] included (default 0: the model's max_len)")
      ->check(int_in(0, 65536));
  cmd->add_option("--pooling", args->pooling,
                  "Sentence vector: the [CLS] state, or the mean of the token states "
                  "(default: cls)")
      ->check(CLI::IsMember({"cls", "mean"}));
  cmd->add_flag("--freeze-routing,!--no-freeze-routing", o.freeze_routing,
                "Keep every router and expert parameter fixed (default: on; SPEC §5)");
  cmd->add_option("--aux-coef", args->aux_coef,
                  "Coefficient of the load-balancing losses (default: the pre-training one)")
      ->check(kNonNegative);
  cmd->add_option("--seed", o.seed, "Seed of the head, data order, dropout (default: 1)");
  cmd->add_option("--eval-every", o.eval_every,
                  "Validate every N steps, 0 = only at the end (default: 100)")
      ->check(int_in(0, 10000000));
  cmd->add_option("--log-every", o.log_every, "Train line every N steps (default: 10)")
      ->check(int_in(1, 10000000));
  cmd->add_flag("--quiet", args->quiet, "No progress or validation lines");
  cmd->add_flag("--json", args->json, "Print the results as one JSON line (implies --quiet)");
  cmd->callback([args] { run_finetune(*args); });
}

}  // namespace xmoe::cli
