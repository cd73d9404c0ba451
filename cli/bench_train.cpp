// xmoe bench train: masked-LM training speed of the encoder of a pre-training config, with
// synthetic full-length batches (no corpus, no tokenizer), the same step as the trainer
// (src/train/trainer.cpp Trainer::train_step): forward mlm + aux loss, backward, global-norm
// clipping, AdamW with two parameter groups (weight decay on matrices only), gradients set to
// none. Prints one JSON line; bench/train_peer.py is the same model in Python PyTorch and prints the same
// line, bench/compare_train.sh runs both.
//
//   xmoe [--threads N] bench train --config FILE [--set k=v ...] [--steps N] [--warmup N]
//                                  [--batch-seqs B] [--seq-len L] [--vocab V] [--print-config]
//                                  [--profile N]   (N more steps under the profiler: self time
//                                                   per operator on stderr)
//
// Batches: ids uniform in [5, vocab) (no special tokens, no padding), each position labelled
// with probability mask_prob (0.15 by default) and then replaced by the mask id, from a
// generator seeded with --seed. They come from LibTorch's CPU generator (mt19937), so
// train_peer.py draws bit-identical batches; both print "batch_checksum" to show it.
#include "bench_timing.h"
#include "commands.h"
#include "local_ranks.h"
#include "validators.h"

#include "xmoe/data/tokenizer.h"
#include "xmoe/model/encoder.h"
#include "xmoe/train/pretrain_config.h"
#include "xmoe/train/fused_adamw.h"
#include "xmoe/train/gradient_sync.h"
#include "xmoe/train/sharded_state.h"
#include "xmoe/train/trainer.h"
#include "xmoe/util/init.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/optim/adamw.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iomanip>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <stdexcept>
#include <tuple>
#include <vector>

namespace xmoe::cli {

namespace {

// Every step's batch is drawn before the clock starts, so the step count bounds the memory.
constexpr long long kMaxBenchSteps = 10000;

struct BenchTrainArgs {
  std::string config;
  std::vector<std::string> set;
  int64_t steps = 10, warmup = 2, batch_seqs = 0, seq_len = 0, vocab = 8000, profile = 0;
  RankOptions ranks;
  uint64_t seed = 1;
  bool print_config = false;
  bool full_last_layer = false;
};

struct Batch {
  at::Tensor ids, labels;
};

// The same draws, in the same order, as train_peer.py's make_batch.
Batch make_batch(int64_t b, int64_t l, int64_t vocab, double mask_prob, at::Generator& gen) {
  Batch batch;
  at::Tensor ids = at::randint(Tokenizer::kNumSpecial, vocab, {b, l}, gen, at::kLong);
  at::Tensor masked = at::rand({b, l}, gen, at::kFloat).lt(mask_prob);
  masked.select(1, 0).fill_(true);  // at least one prediction per sequence
  batch.labels = at::where(masked, ids, at::full({}, -100, at::kLong));
  batch.ids = ids.masked_fill(masked, Tokenizer::kMaskId);
  return batch;
}

struct OpTime {
  double self_ms = 0;  // per step
  double calls = 0;    // per step
};

// Self time (ms per step) of every operator recorded by LibTorch's CPU profiler: an op's time
// less the time of the ops it called, the same measure as torch.profiler's "Self CPU".
std::map<std::string, OpTime> self_ms(const torch::autograd::profiler::thread_event_lists& lists,
                                      int64_t steps) {
  using torch::autograd::profiler::EventKind;
  using torch::autograd::profiler::LegacyEvent;
  std::map<std::string, OpTime> out;
  for (const auto& list : lists) {
    struct Open {
      const LegacyEvent* push;
      double children_us;
    };
    std::vector<Open> stack;
    for (const LegacyEvent& e : list) {
      if (e.kind() == EventKind::PushRange) {
        stack.push_back({&e, 0.0});
      } else if (e.kind() == EventKind::PopRange && !stack.empty()) {
        const Open open = stack.back();
        stack.pop_back();
        const double total = open.push->cpuElapsedUs(e);
        OpTime& op = out[open.push->name()];
        op.self_ms += (total - open.children_us) / 1000.0 / static_cast<double>(steps);
        op.calls += 1.0 / static_cast<double>(steps);
        if (!stack.empty()) stack.back().children_us += total;
      }
    }
  }
  return out;
}

/// `xmoe bench train` with the same arguments, once per rank.
int launch_ranks(const BenchTrainArgs& a) {
  std::vector<std::string> args{"bench", "train", "--config", a.config};
  for (const std::string& s : a.set) args.insert(args.end(), {"--set", s});
  for (const auto& [flag, value] : std::vector<std::pair<std::string, int64_t>>{
           {"--steps", a.steps}, {"--warmup", a.warmup}, {"--batch-seqs", a.batch_seqs},
           {"--seq-len", a.seq_len}, {"--vocab", a.vocab}})
    args.insert(args.end(), {flag, std::to_string(value)});
  args.insert(args.end(), {"--seed", std::to_string(a.seed)});
  if (a.full_last_layer) args.push_back("--full-last-layer");
  return run_local_ranks(args, a.ranks, "xmoe bench train");
}

int run_bench_train(const BenchTrainArgs& a) {
  const PretrainConfig config = load_pretrain_config(a.config, a.set);
  if (a.print_config) {
    std::cout << config.to_json() << std::endl;
    return 0;
  }
  if (a.ranks.nproc > 1) {
    if (a.profile > 0)
      throw std::invalid_argument("--profile runs in one process only (no --nproc)");
    check_rank_request(a.ranks, config);
    return launch_ranks(a);
  }
  // One rank of several (--nproc): data parallel, experts split; rank 0 reports.
  const std::shared_ptr<dist::Communicator> group = group_from_environment();
  const int rank = group ? group->rank() : 0, ranks = group ? group->size() : 1;
  const int64_t seq_len = a.seq_len > 0 ? a.seq_len : config.data.max_len;
  const int64_t batch_seqs = a.batch_seqs > 0 ? a.batch_seqs
                                              : std::max<int64_t>(1, config.data.batch_tokens / seq_len);
  // The bound of data.batch_tokens (docs/pretraining.md); seq_len is bounded by --seq-len's
  // check and data.max_len's.
  if (batch_seqs * seq_len > (1 << 24))
    throw std::invalid_argument("--batch-seqs × --seq-len = " + std::to_string(batch_seqs) +
                                " × " + std::to_string(seq_len) +
                                ": at most 2^24 tokens per batch");
  if (a.vocab <= Tokenizer::kNumSpecial)
    throw std::invalid_argument("--vocab must be > " + std::to_string(Tokenizer::kNumSpecial));
  EncoderOptions eo = encoder_options(config, a.vocab, a.ranks.split_experts() ? group : nullptr);
  eo.max_len(std::max(eo.max_len(), seq_len)).prune_last_layer(!a.full_last_layer);
  MoEEncoder model(eo);
  model->train();

  // As the trainer: run-time random streams (dropout, router noise) from train.seed.
  seed_run_randomness(model, rank_seed(config.train.seed, rank));
  const int64_t params = whole_model_parameters(*model, ranks);
  const TrainConfig& t = config.train;
  const std::unique_ptr<torch::optim::AdamW> optimizer_ptr = make_optimizer(model->parameters(), t);
  torch::optim::AdamW& optimizer = *optimizer_ptr;
  const double max_norm = t.clip_norm > 0 ? t.clip_norm : std::numeric_limits<double>::infinity();

  // Every batch is drawn before the clock starts.
  at::Generator data_gen = make_generator(rank_seed(a.seed, rank));
  std::vector<Batch> batches;
  const int64_t total_steps = a.warmup + a.steps + a.profile;
  for (int64_t i = 0; i < total_steps; ++i)
    batches.push_back(make_batch(batch_seqs, seq_len, a.vocab, config.data.mask_prob, data_gen));
  const double checksum = batches[0].ids.sum().item<double>() +
                          batches[0].labels.ne(-100).sum().item<double>();

  std::vector<double> times, sync_times;  // sync: the gradient all-reduce of --nproc
  double profiled_ms = 0;
  double loss = 0, aux = 0, grad_norm = 0;
  for (int64_t i = 0; i < total_steps; ++i) {
    // --profile: extra steps after the timed ones, under the profiler (never timed).
    if (a.profile > 0 && i == a.warmup + a.steps)
      torch::autograd::profiler::enableProfilerLegacy(
          torch::profiler::impl::ProfilerConfig(torch::profiler::impl::ProfilerState::CPU));
    const Batch& batch = batches[static_cast<size_t>(i)];
    const double t0 = now_ms();
    MlmOutput out = model->mlm(batch.ids, batch.labels);
    (out.loss + out.encoder.aux_loss).backward();
    loss = out.loss.item<double>();
    aux = out.encoder.aux_loss.item<double>();
    GradientNorm norm;
    if (group) {
      const double s0 = now_ms();
      synchronize_gradients(*model, *group);
      if (i >= a.warmup && i < a.warmup + a.steps) sync_times.push_back(now_ms() - s0);
      norm = [&](const std::vector<at::Tensor>& g) {
        return total_gradient_norm(*model, g, *group);
      };
    }
    grad_norm = clipped_adamw_step(optimizer, max_norm, norm);
    clear_gradients(*model);
    const double t1 = now_ms();
    if (!std::isfinite(loss) || !std::isfinite(grad_norm))
      throw std::runtime_error("step " + std::to_string(i + 1) + ": loss or gradient norm not finite");
    if (i >= a.warmup && i < a.warmup + a.steps) times.push_back(t1 - t0);
    if (i >= a.warmup + a.steps) profiled_ms += (t1 - t0) / static_cast<double>(a.profile);
  }
  nlohmann::json profile = nlohmann::json::array();
  if (a.profile > 0) {
    const auto ops = self_ms(torch::autograd::profiler::disableProfilerLegacy(), a.profile);
    std::vector<std::tuple<double, std::string, double>> sorted;
    double sum = 0;
    for (const auto& item : ops) {
      sorted.emplace_back(item.second.self_ms, item.first, item.second.calls);
      sum += item.second.self_ms;
    }
    std::sort(sorted.rbegin(), sorted.rend());
    std::cerr << "self time per step over " << a.profile << " profiled steps of " << std::fixed
              << std::setprecision(1) << profiled_ms << " ms (ops " << sum << " ms, outside ops "
              << profiled_ms - sum << " ms):\n";
    for (size_t j = 0; j < sorted.size() && j < 30; ++j) {
      const auto& [ms, name, calls] = sorted[j];
      std::cerr << std::setw(10) << ms << " ms " << std::setw(7) << std::setprecision(0) << calls
                << " calls  " << name << std::setprecision(1) << "\n";
      profile.push_back({name, ms});
    }
  }
  const double step_ms = median(times);
  if (rank != 0) return 0;
  // Tokens of one step over all ranks (each rank trains on its own batch).
  const double tokens = static_cast<double>(batch_seqs * seq_len * ranks);
  nlohmann::json out = {
      {"impl", "xmoe"},
      {"config", config.name},
      {"router", config.moe ? config.moe->router() : std::string("dense")},
      {"batch_seqs", batch_seqs},
      {"seq_len", seq_len},
      {"vocab", a.vocab},
      {"tokens", static_cast<int64_t>(tokens)},
      {"steps", a.steps},
      {"warmup", a.warmup},
      {"threads", at::get_num_threads()},
      {"ranks", ranks},
      {"experts", ranks > 1 ? a.ranks.experts : std::string("local")},
      {"step_ms", step_ms},
      {"step_ms_min", *std::min_element(times.begin(), times.end())},
      {"step_ms_max", *std::max_element(times.begin(), times.end())},
      {"tokens_per_s", tokens / (step_ms / 1000.0)},
      {"params", params},
      {"last_layer", a.full_last_layer ? "full" : "labelled positions"},
      {"last_loss", loss},
      {"last_aux_loss", aux},
      {"batch_checksum", checksum},
  };
  if (a.profile > 0) out["profile_self_ms"] = profile;
  if (group) out["gradient_sync_ms"] = median(sync_times);
  std::cout << out.dump() << std::endl;
  return 0;
}

}  // namespace

void register_bench_train(CLI::App& bench) {
  auto args = std::make_shared<BenchTrainArgs>();
  CLI::App* cmd = bench.add_subcommand(
      "train", "Time masked-LM training steps of a config's encoder on synthetic batches (JSON line)");
  cmd->add_option("--config", args->config, "Pre-training config (JSON)")->required();
  cmd->add_option("--set", args->set, "Override a config key, e.g. --set moe.router=dot");
  cmd->add_option("--steps", args->steps, "Timed steps (median reported)")
      ->capture_default_str()
      ->check(int_in(1, kMaxBenchSteps));
  cmd->add_option("--warmup", args->warmup, "Untimed steps first")
      ->capture_default_str()
      ->check(int_in(0, kMaxBenchSteps));
  cmd->add_option("--batch-seqs", args->batch_seqs,
                  "Sequences per batch (0 = data.batch_tokens / seq_len)")
      ->capture_default_str()
      ->check(int_in(0, 1 << 24));
  cmd->add_option("--seq-len", args->seq_len, "Sequence length (0 = data.max_len)")
      ->capture_default_str()
      ->check(int_in(0, 1 << 16));
  cmd->add_option("--vocab", args->vocab, "Vocabulary size (no tokenizer is read)")->capture_default_str()->check(kPositive);
  cmd->add_option("--seed", args->seed, "Seed of the synthetic batches")->capture_default_str();
  cmd->add_option("--profile", args->profile,
                  "Profile this many extra steps: self time per op on stderr")
      ->capture_default_str()
      ->check(int_in(0, kMaxBenchSteps));
  cmd->add_flag("--full-last-layer", args->full_last_layer,
                "Run the last layer at every position (as a plain encoder does), not only at the "
                "labelled ones");
  cmd->add_flag("--print-config", args->print_config, "Print the resolved config (every key) and exit");
  add_rank_options(cmd, args->ranks);  // tokens/s of all ranks together
  cmd->callback([args] {
    const int rc = run_bench_train(*args);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace xmoe::cli
