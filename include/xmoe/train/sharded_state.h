// The training state of an expert-parallel run as one ordinary checkpoint
// (docs/expert-parallel.md).
//
// Rank r holds experts [r·E/W, (r+1)·E/W) of every MoE layer, their AdamW moments, and its own
// random generators and data position. A checkpoint holds the whole model — every expert, as a
// single-process run of the same config would (xmoe eval, analyze and finetune read it as is) —
// and each rank's own state: rank 0's under the usual names, rank r's under "rank<r>.<name>".
#pragma once

#include "xmoe/dist/communicator.h"
#include "xmoe/io/safetensors.h"

#include <torch/nn/module.h>

#include <set>
#include <string>
#include <vector>

namespace xmoe {

/// Names (as named_parameters gives them) of the expert parameters of `model`'s expert-parallel
/// MoE layers: the tensors that are shards.
std::set<std::string> sharded_parameter_names(const torch::nn::Module& model);

/// Parameters of the whole model: this rank's, with every expert shard counted once per rank.
int64_t whole_model_parameters(const torch::nn::Module& model, int ranks);

/// Prefixes of the tensors every rank has its own value of: generators and data position.
inline const std::vector<std::string> kPerRankPrefixes = {"rng.", "data."};

/// Collective: rank 0 receives the whole state (its return value; the others get an empty map).
/// Shards — model.<name>, optim.<name>.exp_avg, optim.<name>.exp_avg_sq for <name> in `sharded`
/// — are concatenated over the ranks along dim 0; per-rank tensors of rank r > 0 are added as
/// "rank<r>.<key>"; the rest (replicated) is rank 0's.
TensorMap gather_training_state(const TensorMap& local, const std::set<std::string>& sharded,
                                dist::Communicator& group);

/// This rank's part of a whole state written by gather_training_state for a group of the same
/// size: its rows of every shard and its own per-rank tensors under their usual names.
/// Throws FileFormatError naming `path` when the state was written by another number of ranks.
TensorMap local_training_state(const TensorMap& whole, const std::set<std::string>& sharded,
                               const dist::Communicator& group, const std::string& path);

}  // namespace xmoe
