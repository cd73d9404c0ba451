// The masked-LM pre-training configuration (configs/*.json; every key in docs/pretraining.md).
//
// A config is a JSON object of sections: name, data, model, moe (null = the dense baseline),
// train, log, eval, checkpoint. It is validated as a whole before anything runs: an unknown
// key, a wrong type or an out-of-range value is an error naming the key ("train.lr"). Missing
// keys take the documented defaults, and the resolved config (every key) is saved with the run.
// `overrides` are "dotted.key=value" strings (the CLI's --set); the value is JSON, or a plain
// string when it does not parse as JSON (--set data.corpus=data/corpus).
#pragma once

#include "xmoe/moe/moe_layer.h"

#include <c10/util/Optional.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace xmoe {

struct DataConfig {
  std::string corpus;            // corpus root: <corpus>/<split>/<lang>.txt
  std::string tokenizer;         // SentencePiece model file
  std::vector<std::string> languages;  // empty = every language of the corpus
  int64_t max_len = 128;         // packed sequence length
  std::string packing = "whole"; // "whole" | "fill": a line that does not fit (packing.h)
  int64_t batch_tokens = 4096;   // B · L bound of one batch
  double alpha = 0.7;            // language sampling exponent
  double mask_prob = 0.15;
};

struct ModelConfig {
  int64_t d_model = 256;
  int64_t n_layers = 4;
  int64_t n_heads = 4;
  int64_t d_ff = 1024;
  double dropout = 0.1;
  double attention_dropout = 0.1;
  bool pre_norm = true;
  std::vector<int64_t> moe_layers;  // indices of the MoE sub-layers
  uint64_t init_seed = 1;           // parameter initialisation only
};

struct TrainConfig {
  int64_t steps = 1000;
  double lr = 5e-4;
  int64_t warmup_steps = 100;
  double final_lr_ratio = 0.0;   // lr at the last step, as a share of lr
  double weight_decay = 0.01;
  double beta1 = 0.9, beta2 = 0.98, eps = 1e-6;
  double clip_norm = 1.0;        // 0 = no clipping
  int64_t accumulate = 1;        // batches per optimizer step
  uint64_t seed = 1;             // data order, masking, dropout, router noise
};

struct LogConfig {
  int64_t every = 10;
};

struct EvalConfig {
  int64_t every = 200;
  int64_t max_batches = 0;       // per language; 0 = the whole split
  int64_t probe_tokens = 4096;   // fixed tokens for the routing analysis
};

struct CheckpointConfig {
  int64_t every = 500;
  int64_t keep = 2;
};

struct PretrainConfig {
  std::string name = "run";
  DataConfig data;
  ModelConfig model;
  c10::optional<MoELayerOptions> moe;  // d_model from model; nullopt = dense
  TrainConfig train;
  LogConfig log;
  EvalConfig eval;
  CheckpointConfig checkpoint;

  /// The resolved config as JSON text (every key).
  std::string to_json() const;
};

/// Parses and validates `json_text`; `source` names it in errors. Throws xmoe::FileFormatError
/// "<source>: <key>: <what is wrong>" for malformed JSON, an unknown key, a wrong type, an
/// out-of-range value, or a bad override.
PretrainConfig parse_pretrain_config(const std::string& json_text, const std::string& source,
                                     const std::vector<std::string>& overrides = {});

/// Reads and parses a config file.
PretrainConfig load_pretrain_config(const std::string& path,
                                    const std::vector<std::string>& overrides = {});

/// data.corpus and data.tokenizer as absolute, normalised paths (relative to the working
/// directory), as a run saves them: resume, eval and analysis then find the data from anywhere.
void make_data_paths_absolute(PretrainConfig& config);

/// train.* keys that may change on resume: the learning-rate schedule and clipping. Lowering the
/// rate is how a diverged run goes on from its last good checkpoint; the rate is a function of
/// the step and AdamW's moments carry over, so nothing else has to be reset.
inline constexpr const char* kScheduleKeys[] = {"lr", "warmup_steps", "final_lr_ratio",
                                                "clip_norm"};

/// What makes a run that run: the resolved config (`to_json()` text) without train.steps, the
/// schedule keys, the log, eval and checkpoint sections, the name and the data paths
/// (data.corpus, data.tokenizer) — the keys that may change on resume. Two checkpoints of one
/// run have equal identities.
nlohmann::json run_identity(const std::string& resolved_config_json);

}  // namespace xmoe
