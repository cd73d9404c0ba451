#include "xmoe/train/evaluate.h"

#include "xmoe/moe/moe_layer.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <cmath>
#include <stdexcept>

namespace xmoe {
namespace {

struct LossSum {
  double loss = 0.0;   // Σ cross-entropy over the predicted tokens
  int64_t tokens = 0;  // predicted tokens
};

// This rank's share of one language: batch b runs on rank b mod W. The ranks read every batch
// (cheap next to a forward pass) so that they agree on the rounds without talking.
LossSum language_loss_share(MoEEncoder& model, MlmEvalIterator batches, int64_t max_batches,
                            int rank, int n_rank, bool collective_forward) {
  LossSum share;
  int64_t read = 0;
  const auto next = [&](MlmBatch* batch) {
    if ((max_batches > 0 && read == max_batches) || !batches.next(batch)) return false;
    ++read;
    return true;
  };
  const size_t full_round = static_cast<size_t>(n_rank);
  std::vector<MlmBatch> round;
  for (bool exhausted = false; !exhausted;) {
    round.clear();
    MlmBatch batch;
    while (round.size() < full_round && next(&batch)) round.push_back(std::move(batch));
    exhausted = round.size() < full_round;
    if (static_cast<size_t>(rank) < round.size()) {
      const MlmBatch& mine = round[static_cast<size_t>(rank)];
      MlmOutput out = model->mlm(mine.input_ids, mine.labels);
      share.loss += out.loss.item<double>() * static_cast<double>(out.n_predicted);
      share.tokens += out.n_predicted;
    } else if (collective_forward && !round.empty()) {
      model->mlm(round.front().input_ids, round.front().labels);  // keeps the exchanges paired
    }
  }
  return share;
}

}  // namespace

MlmEvaluation evaluate_mlm(MoEEncoder& model, const MlmDataset& data, int64_t max_batches,
                           dist::Communicator* group) {
  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  const int rank = group ? group->rank() : 0;
  const int n_rank = group ? group->size() : 1;
  const bool collective_forward = n_rank > 1 && !expert_shard_ids(*model).empty();

  // [loss sum, predicted tokens] per language, summed over the ranks in one all-reduce.
  at::Tensor sums = at::zeros({data.n_languages(), 2}, at::kDouble);
  for (int64_t l = 0; l < data.n_languages(); ++l) {
    const LossSum share = language_loss_share(model, data.eval_iterator(l), max_batches, rank,
                                              n_rank, collective_forward);
    sums[l][0] = share.loss;
    sums[l][1] = static_cast<double>(share.tokens);
  }
  if (n_rank > 1) {
    std::vector<at::Tensor> reduce{sums};
    group->all_reduce_sum(reduce);
    sums = reduce[0];
  }

  MlmEvaluation result;
  double total = 0.0;
  for (int64_t l = 0; l < data.n_languages(); ++l) {
    const double sum = sums[l][0].item<double>();
    const int64_t tokens = static_cast<int64_t>(sums[l][1].item<double>());
    const std::string& name = data.languages()[static_cast<size_t>(l)];
    if (!std::isfinite(sum))
      throw std::runtime_error("evaluation: the masked-LM loss of language '" + name +
                               "' is not finite");
    result.languages.push_back({name, tokens > 0 ? sum / static_cast<double>(tokens) : NAN, tokens});
    total += sum;
    result.tokens += tokens;
  }
  result.loss = result.tokens > 0 ? total / static_cast<double>(result.tokens) : NAN;
  model->train(was_training);
  return result;
}

}  // namespace xmoe
