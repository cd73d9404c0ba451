// Masked-LM evaluation: cross-entropy over every predicted position of a split, per language
// and overall (token-weighted), with the deterministic masks of MlmDataset::eval_iterator, so
// values are comparable between checkpoints and runs.
#pragma once

#include "xmoe/data/mlm_dataset.h"
#include "xmoe/dist/communicator.h"
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
///
/// With a `group` of W ranks (each holding the same data), rank r runs batches r, r + W, … of
/// each language and the sums are all-reduced: every rank returns the evaluation of all the
/// batches, as one process would (up to the order of the float additions), in 1/W of the time.
/// Every rank of the group must call it. When the model's experts are split over the ranks (its
/// forward is collective), a rank left without a batch in a language's last round runs that
/// round's first batch and discards it, so that all ranks make the same forward calls.
MlmEvaluation evaluate_mlm(MoEEncoder& model, const MlmDataset& data, int64_t max_batches,
                           dist::Communicator* group = nullptr);

}  // namespace xmoe
