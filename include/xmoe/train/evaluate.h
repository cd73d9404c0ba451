// Masked-LM evaluation: cross-entropy over every predicted position of a split, per language
// and overall (token-weighted), with the deterministic masks of MlmDataset::eval_iterator, so
// values are comparable between checkpoints and runs.
#pragma once

#include "xmoe/data/mlm_dataset.h"
#include "xmoe/model/encoder.h"

#include <string>
#include <vector>

namespace xmoe {

struct LanguageLoss {
  std::string language;
  double loss = 0.0;       // mean cross-entropy, nats per predicted token
  int64_t tokens = 0;      // predicted tokens
};

struct MlmEvaluation {
  double loss = 0.0;       // Σ cross-entropy / Σ predicted tokens over all languages
  int64_t tokens = 0;
  std::vector<LanguageLoss> languages;
};

/// Runs the model in evaluation mode without gradients (and restores its training mode).
/// max_batches bounds the batches per language (0 = all). Throws std::runtime_error when the
/// loss is not finite, naming the language.
MlmEvaluation evaluate_mlm(MoEEncoder& model, const MlmDataset& data, int64_t max_batches);

}  // namespace xmoe
