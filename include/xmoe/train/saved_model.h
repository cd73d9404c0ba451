// A trained model back from a run directory or a checkpoint file, for evaluation and analysis.
#pragma once

#include "xmoe/model/encoder.h"
#include "xmoe/train/checkpoint.h"
#include "xmoe/train/pretrain_config.h"

#include <functional>
#include <string>

namespace xmoe {

struct SavedModel {
  std::string checkpoint;      // the file it came from
  int64_t step = 0;
  PretrainConfig config;       // the config saved in the checkpoint
  std::string tokenizer;       // <run>/tokenizer.model when present, else config.data.tokenizer
  /// True when <run>/tokenizer.model is missing and config.data.tokenizer is used instead: it may
  /// no longer be the model the run trained with (callers warn).
  bool tokenizer_from_config = false;
  MoEEncoder model{nullptr};   // in evaluation mode
};

/// Loads the checkpoint `path` (a file, or a run directory: its newest checkpoint). Throws
/// xmoe::FileFormatError / std::runtime_error naming the file for anything missing or corrupt.
/// `adjust`, when given, edits the saved config before the model is built: options that leave
/// the parameters as they are (fine-tuning's aux-loss coefficients); SavedModel::config is the
/// edited config.
SavedModel load_saved_model(const std::string& path,
                            const std::function<void(PretrainConfig&)>& adjust = {});

}  // namespace xmoe
