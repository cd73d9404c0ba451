// xmoe eval: masked-LM perplexity of a checkpoint on a corpus split, overall and per language.
//   xmoe eval --checkpoint RUN_DIR|FILE [--split valid|test] [--corpus DIR] [--max-batches N]
//             [--json]
#include "commands.h"
#include "validators.h"

#include "xmoe/data/tokenizer.h"
#include "xmoe/train/evaluate.h"
#include "xmoe/train/saved_model.h"
#include "xmoe/train/trainer.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <iostream>
#include <stdexcept>
#include <string>

namespace xmoe::cli {

namespace {

struct EvalArgs {
  std::string checkpoint, split = "valid", corpus;
  int64_t max_batches = 0;
  bool json = false;
};

void run_eval(const EvalArgs& a) {
  SavedModel saved = load_saved_model(a.checkpoint);
  PretrainConfig config = saved.config;
  if (!a.corpus.empty()) config.data.corpus = a.corpus;
  if (saved.tokenizer_from_config)
    std::cerr << "xmoe eval: warning: no tokenizer.model in the checkpoint's run directory; using "
              << saved.tokenizer
              << " from its config (it must be the model the run trained with)\n";
  const Tokenizer tokenizer = Tokenizer::load(saved.tokenizer);
  const MlmDataset data(tokenizer, dataset_options(config, a.split));
  MlmEvaluation e;
  try {
    e = evaluate_mlm(saved.model, data, a.max_batches);
  } catch (const std::exception& error) {  // a diverged model: name the checkpoint
    throw std::runtime_error(saved.checkpoint + ": " + error.what());
  }

  if (a.json) {
    nlohmann::json languages = nlohmann::json::object();
    for (const auto& l : e.languages)
      languages[l.language] = {{"loss", l.loss}, {"ppl", std::exp(l.loss)}, {"tokens", l.tokens}};
    std::cout << nlohmann::json{{"checkpoint", saved.checkpoint}, {"step", saved.step},
                                {"split", a.split}, {"loss", e.loss}, {"ppl", std::exp(e.loss)},
                                {"tokens", e.tokens}, {"languages", languages}}
                     .dump()
              << "\n";
    return;
  }
  std::printf("%s (step %lld), split %s\n", saved.checkpoint.c_str(),
              static_cast<long long>(saved.step), a.split.c_str());
  std::printf("%-10s %12s %10s %12s\n", "language", "predicted", "loss", "perplexity");
  for (const auto& l : e.languages) {
    if (l.tokens == 0) {  // no text of this language in the split: nothing to measure
      std::printf("%-10s %12d %10s %12s\n", l.language.c_str(), 0, "-", "-");
      continue;
    }
    std::printf("%-10s %12lld %10.4f %12.2f\n", l.language.c_str(), static_cast<long long>(l.tokens),
                l.loss, std::exp(l.loss));
  }
  std::printf("%-10s %12lld %10.4f %12.2f\n", "all", static_cast<long long>(e.tokens), e.loss,
              std::exp(e.loss));
}

}  // namespace

void register_eval(CLI::App& app) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand(
      "eval", "Masked-LM loss and perplexity of a checkpoint, overall and per language");
  cmd->add_option("--checkpoint", args->checkpoint,
                  "Checkpoint file, or a run directory (its newest checkpoint)")
      ->required();
  cmd->add_option("--split", args->split, "Corpus split (default: valid)")
      ->check(CLI::IsMember({"train", "valid", "test"}));
  cmd->add_option("--corpus", args->corpus, "Corpus root (default: the one in the run's config)");
  cmd->add_option("--max-batches", args->max_batches, "Batches per language, 0 = all (default)")
      ->check(kNonNegative);
  cmd->add_flag("--json", args->json, "One JSON line instead of a table");
  cmd->callback([args] { run_eval(*args); });
}

}  // namespace xmoe::cli
