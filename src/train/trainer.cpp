#include "xmoe/train/trainer.h"

#include "xmoe/data/corpus_files.h"
#include "xmoe/data/mlm_dataset.h"
#include "xmoe/data/tokenizer.h"
#include "xmoe/io/strict_json.h"
#include "xmoe/model/encoder.h"
#include "xmoe/routing/router.h"
#include "xmoe/train/checkpoint.h"
#include "xmoe/train/evaluate.h"
#include "xmoe/train/fused_adamw.h"
#include "xmoe/train/gradient_sync.h"
#include "xmoe/train/lr_schedule.h"
#include "xmoe/train/metrics_log.h"
#include "xmoe/train/progress.h"
#include "xmoe/train/routing_probe.h"
#include "xmoe/train/sharded_state.h"
#include "xmoe/train/training_state.h"
#include "xmoe/util/atomic_file.h"

#include "metric_values.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/optim/adamw.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <memory>
#include <set>
#include <sstream>

namespace xmoe {

EncoderOptions encoder_options(const PretrainConfig& config, int64_t vocab_size,
                               std::shared_ptr<dist::Communicator> expert_group) {
  const ModelConfig& m = config.model;
  EncoderOptions o(vocab_size, m.d_model, m.n_layers, m.n_heads, m.d_ff);
  o.max_len(config.data.max_len)
      .dropout(m.dropout)
      .attention_dropout(m.attention_dropout)
      .pre_norm(m.pre_norm)
      .moe_layers(m.moe_layers)
      .pad_id(Tokenizer::kPadId)
      .seed(m.init_seed);
  if (config.moe) {
    MoELayerOptions moe(*config.moe);
    moe.seed(m.init_seed);
    if (expert_group && expert_group->size() > 1) moe.expert_group(std::move(expert_group));
    o.moe(moe);
  }
  return o;
}

uint64_t rank_seed(uint64_t seed, int rank) {
  return rank == 0 ? seed : seed ^ (0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(rank));
}

MlmDatasetOptions dataset_options(const PretrainConfig& config, const std::string& split) {
  const DataConfig& d = config.data;
  MlmDatasetOptions o(d.corpus, split);
  o.languages(d.languages)
      .max_len(d.max_len)
      .packing(parse_line_packing(d.packing))
      .max_tokens(d.batch_tokens)
      .alpha(d.alpha)
      .mask_prob(d.mask_prob);
  if (split == "train") return o.seed(config.train.seed).shuffle(true);
  // Evaluation masks do not depend on the run's seed: runs that differ only in seed are
  // measured on the same masked positions.
  return o.seed(kEvalMaskSeed).shuffle(false);
}

void seed_run_randomness(MoEEncoder& model, uint64_t seed) {
  at::Generator torch_rng = at::detail::getDefaultCPUGenerator();
  torch_rng.set_current_seed(seed);
  for (size_t i = 0; i < model->layers().size(); ++i)
    if (model->layers()[i]->is_moe())
      model->layers()[i]->moe()->router().reseed(seed * 1000003ULL + 7919ULL * i);
}

std::unique_ptr<torch::optim::AdamW> make_optimizer(const std::vector<at::Tensor>& parameters,
                                                    const TrainConfig& t) {
  std::vector<at::Tensor> decay, no_decay;
  for (const auto& p : parameters)
    if (p.requires_grad()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  auto adamw = [&](double weight_decay) {
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(t.lr).betas({t.beta1, t.beta2}).eps(t.eps).weight_decay(weight_decay));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, adamw(t.weight_decay));
  groups.emplace_back(no_decay, adamw(0.0));
  return std::make_unique<torch::optim::AdamW>(groups, torch::optim::AdamWOptions(t.lr));
}

void clear_gradients(torch::nn::Module& model) {
  for (auto& p : model.parameters()) p.mutable_grad().reset();
}

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace train_detail;  // Clock, seconds_since, finite_or_null, expert_counts_json

struct Accumulated {  // training statistics since the last "train" line
  double loss = 0, mlm = 0, aux = 0;
  int64_t steps = 0, tokens = 0;
  double seconds = 0;
  std::vector<at::Tensor> expert_counts;  // per MoE layer, [E] int64
};

class Trainer {
 public:
  Trainer(const PretrainConfig& config, const TrainerOptions& options)
      : config_(config),
        options_(options),
        group_(options.group ? options.group
                             : dist::Communicator::create(0, 1, dist::Rendezvous{})) {
    make_data_paths_absolute(config_);  // as config.json and the checkpoints save them
    if (!lead()) options_.progress = false;  // rank 0 speaks for the run
  }

  TrainResult run();

 private:
  /// The tokenizer the run trains with: data.tokenizer, except on resume when data.tokenizer is
  /// missing or no longer the model the run started with: then the run's own copy.
  std::string tokenizer_path(bool resume) const;
  /// Writes config.json, the tokenizer copy and a fresh or trimmed metrics.jsonl. Runs after
  /// every check on the inputs passed, so a refused start or resume leaves the run as it was.
  void prepare_run_dir(const Checkpoint* resume_from);
  void build(const std::string& tokenizer);
  void load_probe(bool resume, const std::string& probe_path);
  void restore(const Checkpoint& checkpoint);
  void train_step(Accumulated& acc);
  void log_train(Accumulated& acc);
  double validate();
  std::string save_checkpoint();
  /// The error of a step that diverged: what went non-finite, and how to go on. Sets aside the
  /// checkpoint of the step before, from which a resumed run would fail again.
  std::runtime_error diverged(int64_t step, const std::string& what);
  std::string router_rng(int64_t layer) const { return "rng.router." + std::to_string(layer); }
  /// Rank 0 writes the run directory and the metrics; every rank computes.
  bool lead() const { return group_->rank() == 0; }
  /// Whether any rank was asked to stop.
  bool any_rank_stops(bool stop);

  PretrainConfig config_;
  TrainerOptions options_;
  std::shared_ptr<dist::Communicator> group_;
  std::set<std::string> sharded_;  // expert parameters split over the ranks
  std::string checkpoint_dir_;
  std::string tokenizer_path_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<MlmDataset> train_data_, valid_data_;
  ProbeTokens probe_;
  MoEEncoder model_{nullptr};
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  std::unique_ptr<MetricsLog> metrics_;
  int64_t step_ = 0;
  int64_t tokens_seen_ = 0;
  double last_lr_ = 0.0, last_grad_norm_ = 0.0;
  // The probe routing at the previous validation, for the routing-fluctuation ratio.
  std::vector<at::Tensor> previous_experts_;
  int64_t previous_valid_step_ = -1;
  bool probe_reselected_ = false;  // a resumed run whose probe_tokens.safetensors was missing
  Clock::time_point start_ = Clock::now();
};

bool same_contents(const std::string& a, const std::string& b) {
  std::ifstream fa(a, std::ios::binary), fb(b, std::ios::binary);
  if (!fa || !fb) return false;
  return std::equal(std::istreambuf_iterator<char>(fa), std::istreambuf_iterator<char>(),
                    std::istreambuf_iterator<char>(fb), std::istreambuf_iterator<char>());
}

std::string Trainer::tokenizer_path(bool resume) const {
  const std::string copy = (fs::path(options_.run_dir) / "tokenizer.model").string();
  std::error_code ec;
  // data.tokenizer while it is the same model (its token cache is shared with other runs).
  if (!resume || !fs::is_regular_file(copy, ec) || same_contents(copy, config_.data.tokenizer))
    return config_.data.tokenizer;
  if (options_.progress)
    std::cerr << "xmoe pretrain: " << config_.data.tokenizer << " is missing or has changed "
              << "since the run started; resuming with the run's own copy, " << copy << "\n";
  return copy;
}

void Trainer::prepare_run_dir(const Checkpoint* resume_from) {
  if (!lead()) return;
  const std::string& dir = options_.run_dir;
  fs::create_directories(checkpoint_dir_);
  write_file_atomically((fs::path(dir) / "config.json").string(),
                        [&](std::ostream& out) { out << config_.to_json() << '\n'; });
  const fs::path tokenizer_copy = fs::path(dir) / "tokenizer.model";
  std::error_code ec;
  if ((resume_from == nullptr || !fs::is_regular_file(tokenizer_copy, ec)) &&
      fs::weakly_canonical(tokenizer_path_) != fs::weakly_canonical(tokenizer_copy)) {
    copy_file_atomically(tokenizer_path_, tokenizer_copy.string());
  }
  metrics_ = std::make_unique<MetricsLog>((fs::path(dir) / "metrics.jsonl").string(),
                                          resume_from ? resume_from->step : -1);
}

void Trainer::build(const std::string& tokenizer) {
  tokenizer_path_ = tokenizer;
  tokenizer_ = std::make_unique<Tokenizer>(Tokenizer::load(tokenizer));
  // Each rank draws its own batches.
  MlmDatasetOptions train_options = dataset_options(config_, "train");
  train_options.seed(rank_seed(config_.train.seed, group_->rank()));
  train_data_ = std::make_unique<MlmDataset>(*tokenizer_, train_options);
  // A language without training text would never be sampled, yet count in every per-language
  // metric as if it were trained: refuse it, naming the file.
  for (int64_t l = 0; l < train_data_->n_languages(); ++l)
    if (train_data_->line_counts()[l] == 0)
      throw std::runtime_error(
          corpus_file(config_.data.corpus, "train", train_data_->languages()[l]) +
          ": no training text in language '" + train_data_->languages()[l] +
          "'; rebuild the corpus with a source that has it, or list the other languages in "
          "data.languages");
  if (config_.data.languages.empty()) {  // all languages: those with a training file
    const std::vector<std::string>& trained = train_data_->languages();
    for (const std::string& l : list_corpus_languages(config_.data.corpus, "valid"))
      if (std::find(trained.begin(), trained.end(), l) == trained.end())
        std::cerr << "xmoe pretrain: warning: " << corpus_file(config_.data.corpus, "valid", l)
                  << " has no training file " << corpus_file(config_.data.corpus, "train", l)
                  << ": language '" << l << "' is neither trained nor validated\n";
  }
  // "All languages" becomes the explicit list, so the saved config names the languages that
  // probe and metrics indices refer to, and validation uses the same list in the same order.
  config_.data.languages = train_data_->languages();
  valid_data_ = std::make_unique<MlmDataset>(*tokenizer_, dataset_options(config_, "valid"));

  model_ = MoEEncoder(encoder_options(config_, tokenizer_->vocab_size(),
                                      options_.split_experts ? group_ : nullptr));
  sharded_ = sharded_parameter_names(*model_);
  // Initialisation depends on model.init_seed only; every run-time random stream on train.seed,
  // so runs that differ only in train.seed start from the same weights.
  seed_run_randomness(model_, rank_seed(config_.train.seed, group_->rank()));
  optimizer_ = make_optimizer(model_->parameters(), config_.train);
}

void Trainer::restore(const Checkpoint& whole) {
  Checkpoint c;  // this rank's part: its expert shards, generators and data position
  c.path = whole.path;
  c.step = whole.step;
  c.tensors = local_training_state(whole.tensors, sharded_, *group_, whole.path);
  load_module_state(*model_, c.tensors, c.path);
  load_adamw_state(*optimizer_, *model_, c.tensors, c.path);
  at::Generator torch_rng = at::detail::getDefaultCPUGenerator();
  load_generator_state(torch_rng, c.tensors, "rng.torch", c.path);
  for (size_t i = 0; i < model_->layers().size(); ++i)
    if (model_->layers()[i]->is_moe())
      load_generator_state(model_->layers()[i]->moe()->router().generator(), c.tensors,
                           router_rng(static_cast<int64_t>(i)), c.path);
  try {
    train_data_->load_state_dict(c.tensors);
  } catch (const std::invalid_argument& e) {
    throw FileFormatError(c.path + ": the training data changed since this checkpoint: " + e.what());
  }
  step_ = c.step;
  tokens_seen_ = require_int64_scalar(c.tensors, "train.tokens", c.path);
  previous_valid_step_ = require_int64_scalar(c.tensors, "probe.step", c.path);
  previous_experts_.clear();
  if (probe_reselected_) previous_valid_step_ = -1;  // its routing was of other tokens
  const int64_t n_probe = probe_.mask.defined() ? probe_.mask.sum().item<int64_t>() : 0;
  for (size_t i = 0; previous_valid_step_ >= 0 && i < model_->layers().size(); ++i) {
    if (!model_->layers()[i]->is_moe()) continue;
    const std::string name = "probe.expert." + std::to_string(i);
    const at::Tensor& e = require_tensor(c.tensors, name, c.path);
    const int64_t n_experts = model_->layers()[i]->moe()->options().n_expert();
    if (e.dim() != 1 || e.size(0) != n_probe || e.scalar_type() != at::kLong ||
        (n_probe > 0 && (e.min().item<int64_t>() < 0 || e.max().item<int64_t>() >= n_experts)))
      throw FileFormatError(c.path + ": tensor '" + name + "' must be [" + std::to_string(n_probe) +
                            "] int64 expert ids in 0.." + std::to_string(n_experts - 1) +
                            " (one per probe token), got " + c10::str(e.scalar_type()) +
                            c10::str(e.sizes()));
    previous_experts_.push_back(e);
  }
}

void Trainer::load_probe(bool resume, const std::string& probe_path) {
  probe_reselected_ = false;
  if (resume && fs::exists(probe_path)) {
    probe_ = load_probe_tokens(probe_path);
    const int64_t vocab = tokenizer_->vocab_size(), languages = train_data_->n_languages();
    const at::Tensor& ids = probe_.input_ids;
    if (ids.numel() > 0 &&
        (ids.min().item<int64_t>() < 0 || ids.max().item<int64_t>() >= vocab ||
         ids.size(1) > config_.data.max_len || probe_.language.min().item<int64_t>() < 0 ||
         probe_.language.max().item<int64_t>() >= languages))
      throw FileFormatError(probe_path + ": the probe tokens do not fit this run (token ids in " +
                            "0.." + std::to_string(vocab - 1) + ", at most data.max_len = " +
                            std::to_string(config_.data.max_len) + " per row, languages in 0.." +
                            std::to_string(languages - 1) + ")");
    return;
  }
  probe_ = select_probe_tokens(*valid_data_, config_.eval.probe_tokens);
  probe_reselected_ = resume;
}

std::string Trainer::save_checkpoint() {
  TensorMap t = module_state(*model_);
  t.merge(adamw_state(*optimizer_, *model_));
  t["rng.torch"] = generator_state(at::detail::getDefaultCPUGenerator());
  for (size_t i = 0; i < model_->layers().size(); ++i)
    if (model_->layers()[i]->is_moe())
      t[router_rng(static_cast<int64_t>(i))] = generator_state(model_->layers()[i]->moe()->router().generator());
  t.merge(train_data_->state_dict());
  t["train.tokens"] = at::full({1}, tokens_seen_, at::kLong);
  t["probe.step"] = at::full({1}, previous_valid_step_, at::kLong);
  size_t moe_index = 0;
  for (size_t i = 0; i < model_->layers().size(); ++i)
    if (model_->layers()[i]->is_moe() && moe_index < previous_experts_.size())
      t["probe.expert." + std::to_string(i)] = previous_experts_[moe_index++];
  t = gather_training_state(t, sharded_, *group_);
  std::string path = checkpoint_path(checkpoint_dir_, step_);
  if (lead())
    path = write_checkpoint(checkpoint_dir_, step_, t, {{"config", config_.to_json()}},
                            config_.checkpoint.keep);
  group_->barrier();  // written before any rank goes on (or returns its path)
  return path;
}

bool Trainer::any_rank_stops(bool stop) {
  if (group_->size() == 1) return stop;
  std::vector<at::Tensor> flag{at::full({1}, stop ? 1 : 0, at::kLong)};
  group_->all_reduce_sum(flag);
  return flag[0].item<int64_t>() > 0;
}

std::runtime_error Trainer::diverged(int64_t step, const std::string& what) {
  std::string msg =
      "step " + std::to_string(step) + ": " + what + "; no checkpoint was written for it. ";
  auto kept = list_checkpoints(checkpoint_dir_);
  if (lead() && !kept.empty() && kept.back().first == step - 1) {
    // Step `step` starts from the weights of step - 1 and replays the same batch and dropout on
    // resume, so it would fail from that checkpoint again at any learning rate. Renamed (not
    // deleted), it no longer counts as a checkpoint and --resume takes the one before.
    const std::string bad = kept.back().second, aside = bad + ".diverged";
    std::error_code ec;
    fs::rename(bad, aside, ec);
    if (ec) {
      msg += "The checkpoint of step " + std::to_string(step - 1) + " (" + bad + ") gives the same "
             "values on resume; remove it (renaming failed: " + ec.message() + "). ";
    } else {
      msg += "The checkpoint of step " + std::to_string(step - 1) + ", which leads straight to it, "
             "is set aside as " + aside + ". ";
    }
    kept.pop_back();
  }
  msg += "Lower train.lr or raise train.warmup_steps, and ";
  if (kept.empty()) {
    msg += "start again (" + checkpoint_dir_ + " holds no usable checkpoint)";
  } else {  // the schedule keys may change on resume (kScheduleKeys)
    msg += "resume from the last checkpoint in " + checkpoint_dir_ + " (step " +
           std::to_string(kept.back().first) + "): xmoe pretrain --resume --out " +
           options_.run_dir + " --set train.lr=...";
  }
  return std::runtime_error(msg);
}

void Trainer::train_step(Accumulated& acc) {
  const auto t0 = Clock::now();
  const TrainConfig& t = config_.train;
  const int64_t next = step_ + 1;
  double mlm_sum = 0, aux_sum = 0;
  int64_t tokens = 0;                        // real tokens of this step
  std::vector<at::Tensor> counts;            // per MoE layer, [E] int64 slots of this step
  for (int64_t a = 0; a < t.accumulate; ++a) {
    MlmBatch batch = train_data_->next_batch();
    MlmOutput out;
    try {
      out = model_->mlm(batch.input_ids, batch.labels);
    } catch (const NonFiniteRoutingError& e) {  // a diverged model shows here first with MoE layers
      throw diverged(next, e.what());
    }
    at::Tensor loss = out.loss + out.encoder.aux_loss;
    (t.accumulate > 1 ? loss / static_cast<double>(t.accumulate) : loss).backward();
    mlm_sum += out.loss.item<double>();
    aux_sum += out.encoder.aux_loss.item<double>();
    tokens += batch.mask.sum().item<int64_t>();
    if (counts.empty()) counts.resize(out.encoder.moe.size());
    for (size_t i = 0; i < out.encoder.moe.size(); ++i) {
      const at::Tensor& n = out.encoder.moe[i].routing.stats.tokens_per_expert;
      counts[i] = counts[i].defined() ? counts[i] + n : n.clone();
    }
  }
  if (group_->size() > 1) {
    synchronize_gradients(*model_, *group_);
    // The logged losses are the means over the ranks, the tokens and expert loads their sums.
    std::vector<at::Tensor> totals{at::tensor({mlm_sum, aux_sum}, at::kDouble),
                                   at::full({1}, tokens, at::kLong)};
    totals.insert(totals.end(), counts.begin(), counts.end());
    group_->all_reduce_sum(totals);
    const double ranks = static_cast<double>(group_->size());
    mlm_sum = totals[0][0].item<double>() / ranks;
    aux_sum = totals[0][1].item<double>() / ranks;
    tokens = totals[1].item<int64_t>();
    std::copy(totals.begin() + 2, totals.end(), counts.begin());
  }
  tokens_seen_ += tokens;
  acc.tokens += tokens;
  if (acc.expert_counts.empty()) acc.expert_counts.resize(counts.size());
  for (size_t i = 0; i < counts.size(); ++i)
    acc.expert_counts[i] =
        acc.expert_counts[i].defined() ? acc.expert_counts[i] + counts[i] : counts[i];
  const double mlm = mlm_sum / t.accumulate, aux = aux_sum / t.accumulate;
  if (!std::isfinite(mlm) || !std::isfinite(aux)) {
    std::ostringstream msg;
    msg << "the training loss is not finite (mlm " << mlm << ", aux " << aux << ")";
    throw diverged(next, msg.str());
  }
  const double max_norm = t.clip_norm > 0 ? t.clip_norm : std::numeric_limits<double>::infinity();
  last_lr_ = learning_rate_at(step_, t.lr, t.warmup_steps, t.steps, t.final_lr_ratio);
  for (auto& group : optimizer_->param_groups())
    static_cast<torch::optim::AdamWOptions&>(group.options()).lr(last_lr_);
  GradientNorm norm;  // the model is split over the ranks: its norm too
  if (group_->size() > 1)
    norm = [this](const std::vector<at::Tensor>& g) {
      return total_gradient_norm(*model_, g, *group_);
    };
  last_grad_norm_ = clipped_adamw_step(*optimizer_, max_norm, norm);  // no update when not finite
  if (!std::isfinite(last_grad_norm_)) throw diverged(next, "the gradient norm is not finite");
  clear_gradients(*model_);
  step_ = next;
  acc.loss += mlm + aux;
  acc.mlm += mlm;
  acc.aux += aux;
  acc.steps += 1;
  acc.seconds += seconds_since(t0);
}

void Trainer::log_train(Accumulated& acc) {
  const double n = static_cast<double>(acc.steps);
  if (metrics_)
    metrics_->write({{"kind", "train"},
                     {"step", step_},
                     {"loss", acc.loss / n},
                     {"mlm_loss", acc.mlm / n},
                     {"aux_loss", acc.aux / n},
                     {"lr", last_lr_},
                     {"grad_norm", last_grad_norm_},
                     {"tokens", tokens_seen_},
                     {"tokens_per_s", acc.seconds > 0 ? acc.tokens / acc.seconds : 0.0},
                     {"elapsed_s", seconds_since(start_)},
                     {"expert_counts", expert_counts_json(acc.expert_counts)}});
  acc = Accumulated{};
}

double Trainer::validate() {
  const MlmEvaluation eval =
      evaluate_mlm(model_, *valid_data_, config_.eval.max_batches, group_.get());
  json languages = json::object();
  for (const LanguageLoss& l : eval.languages)
    languages[l.language] = {{"loss", finite_or_null(l.loss)},
                             {"ppl", finite_or_null(std::exp(l.loss))},
                             {"tokens", l.tokens}};

  const auto t0 = Clock::now();
  json moe = json::array();
  std::vector<at::Tensor> experts;
  if (probe_.input_ids.defined() && probe_.input_ids.size(0) > 0) {
    const std::vector<ProbeRouting> routing = route_probe(model_, probe_);
    for (size_t i = 0; i < routing.size(); ++i) {
      ProbeRouting previous;
      const bool has_previous = i < previous_experts_.size();
      if (has_previous) previous.expert = previous_experts_[i];
      const ProbeLayerMetrics m = probe_layer_metrics(routing[i], has_previous ? &previous : nullptr);
      moe.push_back({{"layer", m.layer},
                     {"load", m.load},
                     {"load_cv", finite_or_null(m.load_cv)},
                     {"load_max_over_mean", finite_or_null(m.load_max_over_mean)},
                     {"load_entropy", finite_or_null(m.load_entropy)},
                     {"dropped_fraction", m.dropped_fraction},
                     {"rc_router", finite_or_null(m.rc_router)},
                     {"rc_hidden", finite_or_null(m.rc_hidden)},
                     {"rf", m.rf ? finite_or_null(*m.rf) : json(nullptr)},
                     {"rf_step_gap", has_previous ? json(step_ - previous_valid_step_) : json(nullptr)}});
      experts.push_back(routing[i].expert);
    }
  }
  const double analysis_ms = seconds_since(t0) * 1e3;
  previous_experts_ = std::move(experts);
  previous_valid_step_ = step_;

  if (metrics_)
    metrics_->write({{"kind", "valid"},
                     {"step", step_},
                     {"valid_loss", finite_or_null(eval.loss)},
                     {"valid_ppl", finite_or_null(std::exp(eval.loss))},
                     {"lr", last_lr_},
                     {"languages", languages},
                     {"moe", moe},
                     {"analysis_ms", analysis_ms}});
  if (options_.progress) {
    std::ostringstream line;
    line.precision(4);
    line << "step " << step_ << ": valid loss " << eval.loss << ", ppl " << std::exp(eval.loss);
    for (const LanguageLoss& l : eval.languages) {
      line << " | " << l.language << " ";
      if (l.tokens > 0) {
        line << std::exp(l.loss);
      } else {
        line << "-";  // no validation text in this language
      }
    }
    std::cerr << line.str() << "\n";
  }
  return eval.loss;
}

TrainResult Trainer::run() {
  checkpoint_dir_ = (fs::path(options_.run_dir) / "checkpoints").string();
  std::unique_ptr<Checkpoint> resume_from;
  if (options_.resume) {
    const auto all = list_checkpoints(checkpoint_dir_);
    if (all.empty())
      throw std::runtime_error(options_.run_dir + ": --resume: no checkpoint to resume from in " +
                               checkpoint_dir_);
    resume_from = std::make_unique<Checkpoint>(read_checkpoint(all.back().second));
  } else if (!list_checkpoints(checkpoint_dir_).empty()) {
    throw std::runtime_error(options_.run_dir + " already holds a run with checkpoints: pass "
                             "--resume to continue it, or choose another output directory");
  }
  std::string saved_config;
  if (resume_from) {
    const auto saved = resume_from->metadata.find("config");
    if (saved == resume_from->metadata.end())
      throw FileFormatError(resume_from->path + ": the checkpoint has no 'config' metadata");
    // Parsed first so that a damaged config names the checkpoint, then compared — before any
    // data is read, so that resuming with another config names the difference first. "All
    // languages" (an empty list) stands for the list the run resolved; the data state checks it.
    const PretrainConfig saved_parsed =
        parse_pretrain_config(saved->second, resume_from->path + " (config metadata)");
    saved_config = saved_parsed.to_json();
    PretrainConfig compared = config_;
    if (compared.data.languages.empty()) compared.data.languages = saved_parsed.data.languages;
    const std::string diff =
        first_json_difference(run_identity(saved_config), run_identity(compared.to_json()));
    if (!diff.empty()) {
      std::string schedule;
      for (const char* key : kScheduleKeys) schedule += std::string(", train.") + key;
      throw std::runtime_error(resume_from->path + ": --resume: the config differs from the "
                               "checkpoint's at '" + diff + "' (only train.steps" + schedule +
                               ", the data paths and the log, eval and checkpoint settings may "
                               "change on resume)");
    }
    if (resume_from->step >= config_.train.steps) {
      // A finished run resumed (as scripts/demo.sh does on a re-run), or train.steps set below
      // the run's step: nothing to train, and the run directory stays exactly as it is. A
      // train.steps below the run's step is a request that is not carried out: said even quietly.
      if (options_.progress || resume_from->step > config_.train.steps)
        std::cerr << "xmoe pretrain: " << options_.run_dir << " is at step " << resume_from->step
                  << " and train.steps is " << config_.train.steps
                  << ": nothing to train (raise train.steps to continue)\n";
      TrainResult done;
      done.finished = true;
      done.step = resume_from->step;
      done.valid_loss = NAN;  // none ran in this process
      done.checkpoint = resume_from->path;
      return done;
    }
  }
  build(tokenizer_path(options_.resume));
  if (resume_from) {
    const json before = json::parse(saved_config).at("train");
    const json now = json::parse(config_.to_json()).at("train");
    for (const char* key : kScheduleKeys) {  // a deliberate change: say so, it ends bit-identity
      if (options_.progress && before.value(key, json()) != now.value(key, json()))
        std::cerr << "xmoe pretrain: resuming with train." << key << " = " << now.value(key, json())
                  << " (the checkpoint's run had " << before.value(key, json()) << ")\n";
    }
  }
  const std::string probe_path = (fs::path(options_.run_dir) / "probe_tokens.safetensors").string();
  load_probe(resume_from != nullptr, probe_path);
  if (resume_from) restore(*resume_from);
  // Everything is checked: only now does the run directory change.
  prepare_run_dir(resume_from.get());
  if (lead() && (!resume_from || probe_reselected_)) save_probe_tokens(probe_path, probe_);
  model_->train();

  TrainResult result;
  result.valid_loss = NAN;
  const TrainConfig& t = config_.train;
  if (options_.progress) {
    const int64_t n_params = whole_model_parameters(*model_, group_->size());
    std::cerr << "xmoe pretrain: " << config_.name << ", " << n_params << " parameters, "
              << train_data_->n_languages() << " languages, "
              << (group_->size() == 1 ? std::string()
                  : std::to_string(group_->size()) + " ranks (batch per rank; experts " +
                        (sharded_.empty() ? "replicated" : "split over the ranks") + "), ")
              << (resume_from ? "resuming at step " + std::to_string(step_) : std::string("from scratch"))
              << ", " << t.steps << " steps -> " << options_.run_dir << "\n";
  }
  ProgressLine progress(t.steps, step_);
  Accumulated acc;
  int64_t last_checkpoint_step = resume_from ? step_ : -1;
  int64_t steps_this_run = 0;
  bool stopped = false;
  while (step_ < t.steps) {
    train_step(acc);
    ++steps_this_run;
    if (step_ % config_.log.every == 0 || step_ == t.steps) {
      if (options_.progress) {
        std::ostringstream text;
        text.precision(4);
        text << "loss " << acc.loss / acc.steps;
        progress.update(step_, acc.tokens / std::max(acc.seconds, 1e-9), text.str());
      }
      log_train(acc);
    }
    if (step_ % config_.eval.every == 0 || step_ == t.steps) {
      if (options_.progress) progress.finish();
      result.valid_loss = validate();
    }
    const bool stop = any_rank_stops(
        (options_.stop != nullptr && options_.stop->load()) ||
        (options_.max_steps_this_run >= 0 && steps_this_run >= options_.max_steps_this_run));
    if (step_ % config_.checkpoint.every == 0 || step_ == t.steps || stop) {
      result.checkpoint = save_checkpoint();
      last_checkpoint_step = step_;
    }
    if (stop && step_ < t.steps) {
      stopped = true;
      break;
    }
  }
  if (options_.progress) progress.finish();
  if (last_checkpoint_step != step_) result.checkpoint = save_checkpoint();
  result.finished = !stopped;
  result.step = step_;
  return result;
}

}  // namespace

TrainResult pretrain(const PretrainConfig& config, const TrainerOptions& options) {
  Trainer trainer(config, options);
  return trainer.run();
}

}  // namespace xmoe
