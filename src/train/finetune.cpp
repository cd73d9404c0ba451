#include "xmoe/train/finetune.h"

#include "xmoe/data/tokenizer.h"
#include "xmoe/kernels/cross_entropy.h"
#include "xmoe/routing/router.h"
#include "xmoe/train/checkpoint.h"
#include "xmoe/train/fused_adamw.h"
#include "xmoe/train/lr_schedule.h"
#include "xmoe/train/metrics_log.h"
#include "xmoe/train/progress.h"
#include "xmoe/train/saved_model.h"
#include "xmoe/train/trainer.h"
#include "xmoe/train/training_state.h"
#include "xmoe/util/atomic_file.h"

#include "metric_values.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>

namespace xmoe {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace train_detail;  // Clock, seconds_since, finite_or_null, expert_counts_json

/// The sentence vector of every row, hidden [B, L, d] → [B, d]: the [CLS] state, or the mean of
/// the states of the real (non-padding) tokens.
at::Tensor pool(const EncoderOutput& out, const at::Tensor& ids, Pooling pooling) {
  if (pooling == Pooling::kCls) return out.hidden.select(1, 0);
  const at::Tensor real = ids.ne(Tokenizer::kPadId).unsqueeze(2).to(out.hidden.scalar_type());
  return (out.hidden * real).sum(1) / real.sum(1);
}

json scores_json(const std::vector<TopicScores>& scores) {
  json j = json::object();
  for (const TopicScores& s : scores)
    j[s.language] = {{"examples", s.examples}, {"loss", finite_or_null(s.loss)},
                     {"accuracy", s.accuracy}, {"macro_f1", s.macro_f1}};
  return j;
}

double mean_accuracy(const std::vector<TopicScores>& scores, const std::string& except) {
  double sum = 0;
  int64_t n = 0;
  for (const TopicScores& s : scores)
    if (s.language != except && s.examples > 0) sum += s.accuracy, ++n;
  return n > 0 ? sum / static_cast<double>(n) : std::numeric_limits<double>::quiet_NaN();
}

class Finetuner {
 public:
  explicit Finetuner(FinetuneOptions options) : o_(std::move(options)) {}
  FinetuneResult run();

 private:
  void load();
  void train_step();
  /// Writes a "train" line and updates the progress line.
  void log_train(ProgressLine& progress);
  /// Scores every language's valid split and writes a "valid" line.
  std::vector<TopicScores> validate();
  /// Scores of `split`; with `top1`, also its tokens' top-1 experts per MoE layer.
  TopicScores evaluate(const TopicSplit& split, std::vector<at::Tensor>* top1 = nullptr);
  std::string save();

  FinetuneOptions o_;
  SavedModel saved_;
  std::unique_ptr<Tokenizer> tokenizer_;
  ClassificationHead head_{nullptr};
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  std::unique_ptr<MetricsLog> metrics_;
  TopicSplit train_;
  std::vector<TopicSplit> valid_, test_;
  std::vector<std::string> languages_;
  // Top-1 experts of the trained language's validation tokens (valid_.front()) before training.
  std::vector<at::Tensor> initial_routing_;
  std::vector<int64_t> order_;
  size_t cursor_ = 0;
  std::mt19937_64 shuffle_rng_;
  int64_t step_ = 0, warmup_ = 0, tokens_ = 0;
  double lr_ = 0, grad_norm_ = 0;
  // Since the last train line.
  double loss_sum_ = 0, task_sum_ = 0, aux_sum_ = 0, seconds_ = 0;
  int64_t logged_steps_ = 0, logged_tokens_ = 0, correct_ = 0, seen_ = 0;
  std::vector<at::Tensor> expert_counts_;  // per MoE layer, [E] int64
};

void Finetuner::load() {
  saved_ = load_saved_model(o_.checkpoint, [&](PretrainConfig& c) {
    if (c.moe && o_.aux_coef)
      c.moe->balance_coef(*o_.aux_coef).importance_coef(*o_.aux_coef).load_coef(*o_.aux_coef);
  });
  if (o_.corpus.empty()) o_.corpus = saved_.config.data.corpus;
  const int64_t model_len = saved_.model->options().max_len();
  if (o_.max_len == 0) o_.max_len = model_len;
  if (o_.max_len > model_len)
    throw std::invalid_argument("max_len " + std::to_string(o_.max_len) + " exceeds the model's " +
                                std::to_string(model_len) + " positions (" + saved_.checkpoint +
                                ")");
  if (saved_.tokenizer_from_config && o_.progress)
    std::cerr << "xmoe finetune: warning: no tokenizer.model beside " << saved_.checkpoint
              << "; using " << saved_.tokenizer << " from its config\n";
  tokenizer_ = std::make_unique<Tokenizer>(Tokenizer::load(saved_.tokenizer));

  train_ = load_topic_split(o_.corpus, "train", o_.train_language, *tokenizer_, o_.max_len);
  if (train_.examples.empty())
    throw std::runtime_error(corpus_keys_file(o_.corpus, "train", o_.train_language) +
                             ": no paragraph of a help-topic class (" +
                             std::to_string(train_.lines) + " lines); the task needs the "
                             "libreoffice source in the corpus");
  // The trained language first, then the others in the order given (or by name).
  languages_ = {o_.train_language};
  for (const std::string& l :
       o_.languages.empty() ? list_topic_languages(o_.corpus, "test") : o_.languages)
    if (std::find(languages_.begin(), languages_.end(), l) == languages_.end())
      languages_.push_back(l);
  std::vector<std::string> kept, unlabelled;
  for (const std::string& l : languages_) {
    TopicSplit test = load_topic_split(o_.corpus, "test", l, *tokenizer_, o_.max_len);
    // A language found by its keys file but without help text (fortunes only) has nothing to
    // score; one asked for by name is kept, and shows as such.
    if (test.examples.empty() && o_.languages.empty() && l != o_.train_language) {
      unlabelled.push_back(l);
      continue;
    }
    kept.push_back(l);
    valid_.push_back(load_topic_split(o_.corpus, "valid", l, *tokenizer_, o_.max_len));
    test_.push_back(std::move(test));
  }
  languages_ = std::move(kept);
  if (o_.progress) {
    std::cerr << "xmoe finetune: " << saved_.checkpoint << " (step " << saved_.step << "), "
              << train_.examples.size() << " " << o_.train_language << " training paragraphs of "
              << help_topic_classes().size() << " classes; evaluating";
    for (size_t i = 0; i < languages_.size(); ++i)
      std::cerr << " " << languages_[i] << " (" << test_[i].examples.size() << ")";
    if (!unlabelled.empty()) {
      std::cerr << "; no help-topic test paragraphs in";
      for (const std::string& l : unlabelled) std::cerr << " " << l;
    }
    std::cerr << "\n";
  }

  MoEEncoder& model = saved_.model;
  // After the seeding: torch::nn::Linear's constructor draws its default initialisation from the
  // global generator (then overwritten from the head's seed), and those draws are part of a run.
  seed_run_randomness(model, o_.seed);
  head_ = ClassificationHead(model->options().d_model(),
                             static_cast<int64_t>(help_topic_classes().size()),
                             saved_.config.model.dropout, o_.seed);
  // The pre-trained routing of the trained language's validation tokens (evaluation mode draws
  // nothing; the untrained head's scores are not used).
  evaluate(valid_.front(), &initial_routing_);
  model->freeze_routing(o_.freeze_routing);
  model->train();
  head_->train();
  std::vector<at::Tensor> parameters = model->parameters();
  for (const at::Tensor& p : head_->parameters()) parameters.push_back(p);
  TrainConfig t = saved_.config.train;
  t.lr = o_.lr;
  t.weight_decay = o_.weight_decay;
  optimizer_ = make_optimizer(parameters, t);
  warmup_ = static_cast<int64_t>(std::llround(o_.warmup_ratio * static_cast<double>(o_.steps)));
  shuffle_rng_.seed(o_.seed);
  order_.resize(train_.examples.size());
}

void Finetuner::train_step() {
  const auto t0 = Clock::now();
  if (cursor_ == 0) {  // a new pass over the training paragraphs
    std::iota(order_.begin(), order_.end(), 0);
    std::shuffle(order_.begin(), order_.end(), shuffle_rng_);
  }
  const size_t n = std::min<size_t>(o_.batch_size, order_.size() - cursor_);
  const std::vector<int64_t> rows(order_.begin() + cursor_, order_.begin() + cursor_ + n);
  cursor_ = cursor_ + n == order_.size() ? 0 : cursor_ + n;
  const TopicBatch batch = make_topic_batch(train_.examples, rows);

  const int64_t next = step_ + 1;
  auto fail = [&](const std::string& what) {
    return std::runtime_error("fine-tuning step " + std::to_string(next) + ": " + what +
                              "; lower --lr or raise --warmup-ratio");
  };
  EncoderOutput out;
  try {
    out = saved_.model->encode(batch.ids);
  } catch (const NonFiniteRoutingError& e) {
    throw fail(e.what());
  }
  const at::Tensor logits = head_->forward(pool(out, batch.ids, o_.pooling));
  if (expert_counts_.empty()) expert_counts_.resize(out.moe.size());
  for (size_t i = 0; i < out.moe.size(); ++i) {
    const at::Tensor& n = out.moe[i].routing.stats.tokens_per_expert;
    expert_counts_[i] = expert_counts_[i].defined() ? expert_counts_[i] + n : n.clone();
  }
  const at::Tensor task = kernels::cross_entropy(logits, batch.labels);
  const at::Tensor loss = task + out.aux_loss;
  const double task_value = task.item<double>(), aux_value = out.aux_loss.item<double>();
  if (!std::isfinite(task_value) || !std::isfinite(aux_value))
    throw fail("the loss is not finite (task " + std::to_string(task_value) + ", aux " +
               std::to_string(aux_value) + ")");
  loss.backward();
  lr_ = learning_rate_at(step_, o_.lr, warmup_, o_.steps, 0.0);
  for (auto& group : optimizer_->param_groups())
    static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr_);
  const double max_norm = o_.clip_norm > 0 ? o_.clip_norm : std::numeric_limits<double>::infinity();
  grad_norm_ = clipped_adamw_step(*optimizer_, max_norm);
  if (!std::isfinite(grad_norm_)) throw fail("the gradient norm is not finite");
  clear_gradients(*saved_.model);
  clear_gradients(*head_);

  step_ = next;
  tokens_ += batch.tokens;
  loss_sum_ += task_value + aux_value;
  task_sum_ += task_value;
  aux_sum_ += aux_value;
  correct_ += logits.argmax(1).eq(batch.labels).sum().item<int64_t>();
  seen_ += static_cast<int64_t>(n);
  logged_tokens_ += batch.tokens;
  ++logged_steps_;
  seconds_ += seconds_since(t0);
}

void Finetuner::log_train(ProgressLine& progress) {
  const auto steps = static_cast<double>(logged_steps_);
  const double loss = loss_sum_ / steps;
  const double tokens_per_s = seconds_ > 0 ? logged_tokens_ / seconds_ : 0.0;
  if (o_.progress) {
    std::ostringstream text;
    text.precision(4);
    text << "loss " << loss;
    progress.update(step_, tokens_per_s, text.str());
  }
  metrics_->write({{"kind", "train"},
                   {"step", step_},
                   {"loss", loss},
                   {"task_loss", task_sum_ / steps},
                   {"aux_loss", aux_sum_ / steps},
                   {"train_accuracy", static_cast<double>(correct_) / static_cast<double>(seen_)},
                   {"lr", lr_},
                   {"grad_norm", grad_norm_},
                   {"tokens", tokens_},
                   {"tokens_per_s", tokens_per_s},
                   {"expert_counts", expert_counts_json(expert_counts_)}});
  loss_sum_ = task_sum_ = aux_sum_ = seconds_ = 0;
  logged_steps_ = logged_tokens_ = correct_ = seen_ = 0;
  expert_counts_.clear();
}

TopicScores Finetuner::evaluate(const TopicSplit& split, std::vector<at::Tensor>* top1) {
  // One batch size for every call: the routing of the same split then comes in the same order.
  return evaluate_topic(saved_.model, head_, split, o_.pooling,
                        std::max<int64_t>(o_.batch_size, 64), top1);
}

std::vector<TopicScores> Finetuner::validate() {
  // Share of the trained language's validation tokens whose top-1 expert is no longer the
  // pre-trained model's, per MoE layer: routed in the same pass that scores them.
  std::vector<at::Tensor> now;
  std::vector<TopicScores> scores;
  for (const TopicSplit& split : valid_)
    scores.push_back(evaluate(split, &split == &valid_.front() ? &now : nullptr));
  json changed = json::array();
  for (size_t i = 0; i < now.size(); ++i)
    changed.push_back(now[i].numel() == 0 ? json(nullptr)
                                          : json(now[i].ne(initial_routing_[i])
                                                     .to(at::kDouble).mean().item<double>()));
  const double mean = mean_accuracy(scores, "");
  metrics_->write({{"kind", "valid"},
                   {"step", step_},
                   {"valid_accuracy", finite_or_null(mean)},
                   {"valid_zero_shot_accuracy",
                    finite_or_null(mean_accuracy(scores, o_.train_language))},
                   {"languages", scores_json(scores)},
                   {"routing_changed", changed}});
  if (!o_.progress) return scores;
  std::ostringstream line;
  line.precision(3);
  line << "step " << step_ << ": valid accuracy " << mean;
  for (const TopicScores& s : scores) line << " | " << s.language << " " << s.accuracy;
  std::cerr << line.str() << "\n";
  return scores;
}

std::string Finetuner::save() {
  TensorMap t = module_state(*saved_.model);
  for (const auto& item : head_->named_parameters())
    t["head." + item.key()] = item.value().detach();
  return write_checkpoint((fs::path(o_.out) / "checkpoints").string(), step_, t,
                          {{"config", saved_.config.to_json()},
                           {"finetune", o_.to_json().dump()}},
                          1);
}

FinetuneResult Finetuner::run() {
  o_.validate();
  // Never write into a directory that holds checkpoints — an earlier fine-tuning, or the
  // pre-training run itself: keeping only the newest would delete one of the two models.
  if (!list_checkpoints((fs::path(o_.out) / "checkpoints").string()).empty())
    throw std::runtime_error(o_.out + " already holds a model (" + o_.out +
                             "/checkpoints: a fine-tuning or pre-training run); choose another "
                             "output directory");
  load();  // every input is checked before the output directory is touched
  fs::create_directories(o_.out);
  write_file_atomically((fs::path(o_.out) / "config.json").string(), [&](std::ostream& out) {
    json j = o_.to_json();
    j["name"] = saved_.config.name + "-finetune-" + o_.train_language + "-seed" +
                std::to_string(o_.seed);
    j["source_step"] = saved_.step;
    j["languages"] = languages_;
    out << j.dump(2) << '\n';
  });
  // The tokenizer beside the checkpoint, as in a pre-training run: the directory is a model.
  const fs::path tokenizer_copy = fs::path(o_.out) / "tokenizer.model";
  std::error_code ec;
  if (!fs::equivalent(saved_.tokenizer, tokenizer_copy, ec))
    copy_file_atomically(saved_.tokenizer, tokenizer_copy.string());
  // The pre-training run's probe tokens, so `xmoe analyze` measures fine-tuned models on the
  // tokens their pre-training was measured on (RC, loads, token agreement between seeds).
  const fs::path probe =
      fs::path(saved_.checkpoint).parent_path().parent_path() / "probe_tokens.safetensors";
  if (fs::is_regular_file(probe, ec))
    copy_file_atomically(probe.string(), (fs::path(o_.out) / "probe_tokens.safetensors").string());
  metrics_ = std::make_unique<MetricsLog>((fs::path(o_.out) / "metrics.jsonl").string());

  ProgressLine progress(o_.steps, 0);
  const auto start = Clock::now();
  while (step_ < o_.steps) {
    train_step();
    if (step_ % o_.log_every == 0 || step_ == o_.steps) log_train(progress);
    if (o_.eval_every > 0 && step_ % o_.eval_every == 0 && step_ < o_.steps) {
      if (o_.progress) progress.finish();
      validate();
    }
  }
  if (o_.progress) progress.finish();

  FinetuneResult r;
  r.valid = validate();
  r.source = saved_.checkpoint;
  r.steps = step_;
  r.train_language = o_.train_language;
  r.freeze_routing = o_.freeze_routing;
  for (const TopicSplit& split : test_) r.test.push_back(evaluate(split));
  r.zero_shot_test_accuracy = mean_accuracy(r.test, o_.train_language);
  r.checkpoint = save();
  r.elapsed_s = seconds_since(start);
  write_file_atomically((fs::path(o_.out) / "results.json").string(),
                        [&](std::ostream& out) { out << r.to_json().dump(2) << '\n'; });
  return r;
}

}  // namespace

void FinetuneOptions::validate() const {
  auto fail = [](const std::string& what) { throw std::invalid_argument(what); };
  if (checkpoint.empty()) fail("checkpoint: give a pre-training checkpoint or run directory");
  if (out.empty()) fail("out: give an output directory");
  if (train_language.empty()) fail("train_language must not be empty");
  if (steps <= 0) fail("steps must be > 0, got " + std::to_string(steps));
  if (batch_size <= 0) fail("batch_size must be > 0, got " + std::to_string(batch_size));
  if (!(lr > 0 && std::isfinite(lr))) fail("lr must be a finite number > 0");
  if (!(warmup_ratio >= 0 && warmup_ratio <= 1)) fail("warmup_ratio must be in [0, 1]");
  if (!(weight_decay >= 0 && std::isfinite(weight_decay))) fail("weight_decay must be >= 0");
  if (!(clip_norm >= 0 && std::isfinite(clip_norm))) fail("clip_norm must be >= 0");
  if (max_len != 0 && max_len < 3) fail("max_len must be 0 (the model's) or >= 3");
  if (aux_coef && !(*aux_coef >= 0 && std::isfinite(*aux_coef))) fail("aux_coef must be >= 0");
  if (eval_every < 0) fail("eval_every must be >= 0");
  if (log_every <= 0) fail("log_every must be > 0");
}

json FinetuneOptions::to_json() const {
  return {{"checkpoint", checkpoint},
          {"out", out},
          {"corpus", corpus},
          {"train_language", train_language},
          {"languages", languages},
          {"steps", steps},
          {"batch_size", batch_size},
          {"lr", lr},
          {"warmup_ratio", warmup_ratio},
          {"weight_decay", weight_decay},
          {"clip_norm", clip_norm},
          {"max_len", max_len},
          {"freeze_routing", freeze_routing},
          {"pooling", to_string(pooling)},
          {"aux_coef", aux_coef ? json(*aux_coef) : json(nullptr)},
          {"seed", seed},
          {"eval_every", eval_every},
          {"log_every", log_every}};
}

void classification_scores(const std::vector<int64_t>& labels,
                           const std::vector<int64_t>& predicted, int64_t n_classes,
                           double* accuracy, double* macro_f1) {
  if (labels.size() != predicted.size())
    throw std::invalid_argument("classification_scores: " + std::to_string(labels.size()) +
                                " labels for " + std::to_string(predicted.size()) + " predictions");
  std::vector<int64_t> tp(n_classes, 0), fp(n_classes, 0), fn(n_classes, 0);
  int64_t correct = 0;
  for (size_t i = 0; i < labels.size(); ++i) {
    const int64_t y = labels[i], p = predicted[i];
    if (y < 0 || y >= n_classes || p < 0 || p >= n_classes)
      throw std::invalid_argument("classification_scores: a label or prediction outside [0, " +
                                  std::to_string(n_classes) + ")");
    if (y == p) {
      ++correct, ++tp[y];
    } else {
      ++fp[p], ++fn[y];
    }
  }
  double f1_sum = 0;
  int64_t present = 0;
  for (int64_t c = 0; c < n_classes; ++c) {
    if (tp[c] + fp[c] + fn[c] == 0) continue;  // neither a label nor a prediction
    ++present;
    f1_sum += 2.0 * static_cast<double>(tp[c]) / static_cast<double>(2 * tp[c] + fp[c] + fn[c]);
  }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  *accuracy =
      labels.empty() ? nan : static_cast<double>(correct) / static_cast<double>(labels.size());
  *macro_f1 = present == 0 ? nan : f1_sum / static_cast<double>(present);
}

TopicScores evaluate_topic(MoEEncoder& encoder, ClassificationHead& head, const TopicSplit& data,
                           Pooling pooling, int64_t batch_size, std::vector<at::Tensor>* top1) {
  if (batch_size <= 0) throw std::invalid_argument("evaluate_topic: batch_size must be > 0");
  const bool encoder_training = encoder->is_training(), head_training = head->is_training();
  encoder->eval();
  head->eval();
  at::NoGradGuard no_grad;
  TopicScores s;
  s.language = data.language;
  s.examples = static_cast<int64_t>(data.examples.size());
  std::vector<int64_t> labels, predicted;
  std::vector<std::vector<at::Tensor>> parts;  // per MoE layer, per batch: top-1 experts
  double loss_sum = 0;
  for (const std::vector<int64_t>& rows : batches_by_length(data.examples, batch_size)) {
    const TopicBatch batch = make_topic_batch(data.examples, rows);
    const EncoderOutput out = encoder->encode(batch.ids);
    if (top1 != nullptr) {
      parts.resize(out.moe.size());
      for (size_t i = 0; i < out.moe.size(); ++i)
        parts[i].push_back(out.moe[i].routing.expert_ids.select(1, 0));
    }
    const at::Tensor logits = head->forward(pool(out, batch.ids, pooling));
    loss_sum += kernels::cross_entropy(logits, batch.labels).item<double>() *
                static_cast<double>(rows.size());
    const at::Tensor p = logits.argmax(1).contiguous();
    predicted.insert(predicted.end(), p.data_ptr<int64_t>(), p.data_ptr<int64_t>() + p.numel());
    labels.insert(labels.end(), batch.labels.data_ptr<int64_t>(),
                  batch.labels.data_ptr<int64_t>() + batch.labels.numel());
  }
  encoder->train(encoder_training);
  head->train(head_training);
  if (top1 != nullptr) {
    top1->clear();
    for (const std::vector<at::Tensor>& p : parts) top1->push_back(at::cat(p));
  }
  s.loss = s.examples > 0 ? loss_sum / static_cast<double>(s.examples)
                          : std::numeric_limits<double>::quiet_NaN();
  classification_scores(labels, predicted, head->n_classes(), &s.accuracy, &s.macro_f1);
  return s;
}

json FinetuneResult::to_json() const {
  return {{"source", source},
          {"steps", steps},
          {"train_language", train_language},
          {"freeze_routing", freeze_routing},
          {"classes", help_topic_classes()},
          {"valid", scores_json(valid)},
          {"test", scores_json(test)},
          {"test_zero_shot_accuracy", finite_or_null(zero_shot_test_accuracy)},
          {"checkpoint", checkpoint},
          {"elapsed_s", elapsed_s}};
}

Pooling parse_pooling(const std::string& name) {
  if (name == "mean") return Pooling::kMean;
  if (name == "cls") return Pooling::kCls;
  throw std::invalid_argument("pooling must be \"cls\" or \"mean\", got \"" + name + "\"");
}

std::string to_string(Pooling pooling) { return pooling == Pooling::kMean ? "mean" : "cls"; }

FinetuneResult finetune(const FinetuneOptions& options) { return Finetuner(options).run(); }

}  // namespace xmoe
