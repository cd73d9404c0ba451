// Cross-lingual fine-tuning of a pre-trained encoder on the help-topic task (topic_task.h), the
// engine behind `xmoe finetune` (docs/finetuning.md).
//
// The encoder of a pre-training checkpoint gets a linear classification head
// (classification_head.h) on a sentence vector — its final [CLS] state (default) or the mean of
// its final states over the paragraph — and is trained on one language's train paragraphs with
//
//   L = CE(logits, label) + Σ_layers aux_loss        (aux coefficients: the pre-training ones, or
//                                                     aux_coef for every balance-type loss)
//
// AdamW (β and eps of the pre-training run, decoupled weight decay on matrices only), linear
// warmup and decay to 0, gradient clipping. With frozen routing (SPEC §5, the default for MoE
// models) every router and expert parameter keeps its pre-trained value; the aux loss still
// trains what feeds the routers. Then every language is evaluated zero-shot: accuracy and
// macro-F1 on valid and test.
//
// The output directory gets config.json (these options and the source checkpoint),
// tokenizer.model (a copy), metrics.jsonl ("train" and "valid" lines), results.json (the final
// scores) and checkpoints/step-N.safetensors: the encoder under "model." (so `xmoe eval` and
// `load_saved_model` read it as a pre-trained model) and the head under "head.".
#pragma once

#include "xmoe/data/topic_task.h"
#include "xmoe/model/classification_head.h"
#include "xmoe/model/encoder.h"

#include <c10/util/Optional.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace xmoe {

/// The sentence vector the head reads: the final state of the [CLS] position (default, as
/// XLM-R and the paper fine-tune), or the mean of the final states over the paragraph's tokens.
/// On the tiny demo-size models both learn the task; [CLS] scored a little higher
/// (docs/finetuning.md).
enum class Pooling { kCls, kMean };
Pooling parse_pooling(const std::string& name);  // "cls" | "mean"
std::string to_string(Pooling pooling);

struct FinetuneOptions {
  std::string checkpoint;       // pre-training checkpoint file or run directory (its newest)
  std::string out;              // output directory
  std::string corpus;           // "" = the pre-training config's data.corpus
  std::string train_language = "en";
  std::vector<std::string> languages;  // evaluated; empty = every language with test keys
  int64_t steps = 300;
  int64_t batch_size = 32;      // paragraphs per step
  double lr = 1e-3;
  double warmup_ratio = 0.1;    // warmup steps = round(ratio · steps)
  double weight_decay = 0.01;
  double clip_norm = 1.0;       // 0 = no clipping
  int64_t max_len = 0;          // ids per paragraph ([CLS] and [SEP] included); 0 = the model's
  Pooling pooling = Pooling::kCls;
  bool freeze_routing = true;   // no effect on a dense model
  /// Replaces balance_coef, importance_coef and load_coef of every MoE layer (z-loss unchanged);
  /// unset = the pre-training values. The paper sweeps 0, 1e-3, 1e-2, 1e-1.
  c10::optional<double> aux_coef;
  uint64_t seed = 1;            // head initialisation, data order, dropout, router noise
  int64_t eval_every = 100;     // validation every N steps (0 = only at the end)
  int64_t log_every = 10;
  bool progress = true;         // progress line and validation lines on stderr

  /// Throws std::invalid_argument naming the first invalid option.
  void validate() const;
  nlohmann::json to_json() const;
};

struct TopicScores {
  std::string language;
  int64_t examples = 0;
  double loss = 0;       // mean cross-entropy
  double accuracy = 0;
  double macro_f1 = 0;   // mean F1 over the classes in the labels or the predictions
};

/// Scores of `head` on top of `encoder` over `data` (evaluation mode, no gradients; modes are
/// restored). Batches of `batch_size` paragraphs of similar length (batches_by_length). With
/// `top1`, it also receives per MoE layer the top-1 expert of every real token ([T] int64), in
/// an order fixed by `data` and `batch_size`.
TopicScores evaluate_topic(MoEEncoder& encoder, ClassificationHead& head, const TopicSplit& data,
                           Pooling pooling, int64_t batch_size,
                           std::vector<at::Tensor>* top1 = nullptr);

/// Accuracy and macro-F1 of `predicted` against `labels` (equal sizes, labels in [0, n_classes)).
void classification_scores(const std::vector<int64_t>& labels,
                           const std::vector<int64_t>& predicted, int64_t n_classes,
                           double* accuracy, double* macro_f1);

struct FinetuneResult {
  std::string source;                     // the pre-training checkpoint fine-tuned
  int64_t steps = 0;
  std::string train_language;
  bool freeze_routing = true;
  std::vector<TopicScores> valid, test;   // per evaluated language
  double zero_shot_test_accuracy = 0;     // mean over the languages other than train_language
  std::string checkpoint;                 // the fine-tuned model written
  double elapsed_s = 0;

  /// results.json: these fields, the class names, and scores per split and language.
  nlohmann::json to_json() const;
};

/// Fine-tunes and evaluates. Throws std::invalid_argument for bad options, std::runtime_error /
/// xmoe::FileFormatError naming the file for missing or corrupt inputs (a corpus without keys
/// files names the `--keys` rebuild), and std::runtime_error naming the step when the loss or
/// gradient norm is not finite.
FinetuneResult finetune(const FinetuneOptions& options);

}  // namespace xmoe
