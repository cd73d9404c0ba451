#include "xmoe/train/saved_model.h"

#include "xmoe/data/tokenizer.h"
#include "xmoe/train/trainer.h"  // encoder_options
#include "xmoe/train/training_state.h"

#include <filesystem>

namespace xmoe {

SavedModel load_saved_model(const std::string& path,
                            const std::function<void(PretrainConfig&)>& adjust) {
  namespace fs = std::filesystem;
  SavedModel saved;
  saved.checkpoint = resolve_checkpoint(path);
  const Checkpoint c = read_checkpoint(saved.checkpoint);
  saved.step = c.step;
  const auto config = c.metadata.find("config");
  if (config == c.metadata.end())
    throw FileFormatError(c.path + ": the checkpoint has no 'config' metadata");
  saved.config = parse_pretrain_config(config->second, c.path + " (config metadata)");
  if (adjust) adjust(saved.config);
  // <run>/checkpoints/step-N.safetensors → <run>/tokenizer.model
  const fs::path beside = fs::path(saved.checkpoint).parent_path().parent_path() / "tokenizer.model";
  std::error_code ec;
  saved.tokenizer_from_config = !fs::is_regular_file(beside, ec);
  saved.tokenizer = saved.tokenizer_from_config ? saved.config.data.tokenizer : beside.string();
  const Tokenizer tokenizer = Tokenizer::load(saved.tokenizer);
  saved.model = MoEEncoder(encoder_options(saved.config, tokenizer.vocab_size()));
  load_module_state(*saved.model, c.tensors, c.path);
  saved.model->eval();
  return saved;
}

}  // namespace xmoe
