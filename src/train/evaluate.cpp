#include "xmoe/train/evaluate.h"

#include <torch/csrc/autograd/grad_mode.h>

#include <cmath>
#include <stdexcept>

namespace xmoe {

MlmEvaluation evaluate_mlm(MoEEncoder& model, const MlmDataset& data, int64_t max_batches) {
  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  MlmEvaluation result;
  double total = 0.0;
  for (int64_t l = 0; l < data.n_languages(); ++l) {
    MlmEvalIterator batches = data.eval_iterator(l);
    MlmBatch batch;
    double sum = 0.0;
    int64_t tokens = 0;
    for (int64_t b = 0; (max_batches == 0 || b < max_batches) && batches.next(&batch); ++b) {
      MlmOutput out = model->mlm(batch.input_ids, batch.labels);
      sum += out.loss.item<double>() * static_cast<double>(out.n_predicted);
      tokens += out.n_predicted;
    }
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
