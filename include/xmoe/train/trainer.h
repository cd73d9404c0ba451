// Masked-LM pre-training of an MoE encoder (X-MoE paper §4.1; SPEC §6), the engine behind
// `xmoe pretrain`. One run = one run directory (docs/run-directory.md).
//
// Each optimizer step takes `train.accumulate` batches of the training stream, minimises
//   L = CE_mlm + Σ_layers aux_loss          (aux losses already weighted by their coefficients)
// averaged over the batches, clips the global gradient norm, and takes an AdamW step
// (decoupled weight decay on matrices only, not on biases, norms or 1-D parameters) at the
// learning rate of lr_schedule.h. Every log.every steps a "train" line goes to metrics.jsonl;
// every eval.every steps (and at the end) the validation loss per language and the routing
// analysis of the probe tokens (routing_probe.h) a "valid" line; every checkpoint.every steps
// (and at the end, and when stopped) a checkpoint.
//
// Resuming from a checkpoint restores the model, the optimizer moments, the step, every random
// generator and the data position, so a resumed run continues with the same losses, bit for
// bit, as one that was never interrupted (same machine, same thread count).
#pragma once

#include "xmoe/data/mlm_dataset.h"
#include "xmoe/dist/communicator.h"
#include "xmoe/model/encoder.h"
#include "xmoe/train/pretrain_config.h"

#include <torch/optim/adamw.h>

#include <atomic>
#include <memory>
#include <cstdint>
#include <string>
#include <vector>

namespace xmoe {

/// Builds the encoder options of a config (vocab from the tokenizer); the MoE layers' experts are
/// split over `expert_group` when it has more than one rank.
EncoderOptions encoder_options(const PretrainConfig& config, int64_t vocab_size,
                               std::shared_ptr<dist::Communicator> expert_group = nullptr);

/// The seed of rank `rank`'s random streams (data order, dropout, router noise) in a run
/// seeded with `seed`: `seed` itself on rank 0, so a one-rank run is the plain run.
uint64_t rank_seed(uint64_t seed, int rank);

/// Seed of the evaluation masks (fixed, so every run is evaluated on the same positions).
inline constexpr uint64_t kEvalMaskSeed = 20240101;

/// Data options of a split: "train" = the shuffled, sampled training stream seeded with
/// train.seed; any other split = file order with the fixed evaluation masks.
MlmDatasetOptions dataset_options(const PretrainConfig& config, const std::string& split);

/// Seeds every run-time random stream from train.seed: the default CPU generator (dropout) and
/// each MoE router's own generator. Initial weights are left alone (they come from init_seed).
void seed_run_randomness(MoEEncoder& model, uint64_t seed);

/// AdamW over the trainable ones of `parameters` (requires_grad): decoupled weight decay on
/// matrices and embeddings (dim >= 2) only, none on biases, norms and other 1-D parameters.
std::unique_ptr<torch::optim::AdamW> make_optimizer(const std::vector<at::Tensor>& parameters,
                                                    const TrainConfig& t);

/// Drops every parameter's gradient (PyTorch's zero_grad(set_to_none=True); LibTorch 1.13's
/// Optimizer::zero_grad fills zeros instead). The next backward then stores fresh gradients
/// rather than adding them to zeros: two fewer passes over all gradients per step.
void clear_gradients(torch::nn::Module& model);

struct TrainerOptions {
  std::string run_dir;
  /// Continue from the newest checkpoint of run_dir (its config must match, except
  /// train.steps, which may grow).
  bool resume = false;
  /// Progress line on stderr.
  bool progress = true;
  /// When it becomes true the trainer finishes the current step, writes a checkpoint and
  /// returns (Ctrl-C).
  const std::atomic<bool>* stop = nullptr;
  /// Stop like `stop` after this many steps of this process (tests; -1 = no limit).
  int64_t max_steps_this_run = -1;
  /// Data + expert parallel training over the group's W ranks (docs/expert-parallel.md); null
  /// or one rank: this process alone. Every rank runs pretrain with the same config and
  /// run_dir; each trains on its own batches (W × the configured batch per step), the MoE
  /// layers' experts are split over the ranks, and rank 0 alone writes the run directory.
  std::shared_ptr<dist::Communicator> group;
  /// With a group: split the experts over the ranks (expert parallelism, default) or keep all of
  /// them on every rank (pure data parallelism: every gradient is all-reduced).
  bool split_experts = true;
};

struct TrainResult {
  bool finished = false;        // false: stopped early (a checkpoint was written)
  int64_t step = 0;             // optimizer steps done
  double valid_loss = 0.0;      // last validation loss (NaN when none ran in this process)
  std::string checkpoint;       // last checkpoint written (resumed with nothing to train: the
                                // one resumed from)
};

/// Trains. Throws std::runtime_error / xmoe::FileFormatError naming the file or step for
/// missing data, a config that does not match the checkpoint, or a diverged step (non-finite
/// router input, loss or gradient norm; the checkpoint of the step before is then renamed
/// `*.diverged`, docs/pretraining.md).
TrainResult pretrain(const PretrainConfig& config, const TrainerOptions& options);

}  // namespace xmoe
