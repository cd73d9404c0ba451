// The masked-LM pre-training data (SPEC §6): a corpus split read per language, tokenized once,
// packed into sequences, and served as padded, masked batches.
//
//   <corpus>/<split>/<lang>.txt ──Tokenizer (cached, token_cache.h)──▶ EncodedLines per language
//     ──pack_lines (packing.h)──▶ sequences [CLS] … [SEP] of length <= max_len
//     ──next_batch──▶ MlmBatch { input_ids, labels, tokens, mask } [B, L]
//
// Training stream (next_batch): batch t draws one language l with probability
//   q_l = n_l^a / Σ_m n_m^a          (sampling.h; n_l = non-empty lines of l, a = alpha)
// from u_t = U[0, 1) of SplitMix64(seed, t), then takes the next sequences of l in the order of
// its current epoch (a seeded permutation of its sequences, re-drawn for every epoch when
// shuffle is on; file order otherwise), as many as fit: B · L <= max_tokens, where L is the
// longest of the B sequences (shorter ones are right-padded with pad id 0, mask false). When a
// language runs out, its next epoch starts in the middle of the batch. The batch is then
// masked (masking.h) with a CPU generator seeded from (seed, t). So batch t depends only on
// (seed, t) and the per-language cursors, and the state — step t and every language's epoch
// and cursor — is a few integers: state_dict() / load_state_dict() resume bit-identically.
//
// Evaluation (eval_iterator): every sequence of one language exactly once, in file order, in
// the same max_tokens batches, masked with generators seeded from (seed, language, batch) —
// identical masks at every evaluation, so perplexities are comparable between checkpoints.
#pragma once

#include "xmoe/data/masking.h"
#include "xmoe/data/packing.h"
#include "xmoe/data/tokenizer.h"
#include "xmoe/io/safetensors.h"  // TensorMap

#include <ATen/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace xmoe {

struct MlmDatasetOptions {
  explicit MlmDatasetOptions(std::string corpus_dir, std::string split = "train")
      : corpus_dir_(std::move(corpus_dir)), split_(std::move(split)) {}

  /// Root of the corpus: files <corpus_dir>/<split>/<lang>.txt.
  TORCH_ARG(std::string, corpus_dir);
  /// "train", "valid" or "test" (any sub-directory name is accepted).
  TORCH_ARG(std::string, split);
  /// Languages in this order; empty = every <lang>.txt of the split, sorted by name.
  TORCH_ARG(std::vector<std::string>, languages) = {};
  /// Longest packed sequence, [CLS] and [SEP]s included (>= 3).
  TORCH_ARG(int64_t, max_len) = 512;
  /// Where a line that does not fit the rest of a sequence goes (packing.h).
  TORCH_ARG(LinePacking, packing) = LinePacking::kWhole;
  /// Upper bound on B · L of a batch (>= max_len, so any sequence fits).
  TORCH_ARG(int64_t, max_tokens) = 8192;
  /// Exponent a of the language sampling, in (0, 1].
  TORCH_ARG(double, alpha) = 0.7;
  /// Seeds the language draws, the epoch permutations and the masks.
  TORCH_ARG(uint64_t, seed) = 0;
  /// Re-permute every language's sequences at every epoch (training); false = file order.
  TORCH_ARG(bool, shuffle) = true;
  /// Masking (masking.h): share chosen, and of those, shares → [MASK] and → random token.
  TORCH_ARG(double, mask_prob) = 0.15;
  TORCH_ARG(double, mask_token_prob) = 0.8;
  TORCH_ARG(double, random_token_prob) = 0.1;
  /// Keep the encoded ids in cache files (token_cache.h).
  TORCH_ARG(bool, use_cache) = true;
  /// Where the cache files go; "" = beside the tokenizer model, in "<model minus .model>.cache"
  /// (no cache when the tokenizer has no file).
  TORCH_ARG(std::string, cache_dir) = "";

 public:
  /// Throws std::invalid_argument naming the first invalid field and its allowed values.
  void validate() const;
};

/// One batch of one language. B sequences, padded to the longest, L <= max_len.
struct MlmBatch {
  at::Tensor input_ids;  // [B, L] int64: corrupted ids, the model's input
  at::Tensor labels;     // [B, L] int64: original id at the chosen positions, −100 elsewhere
  at::Tensor tokens;     // [B, L] int64: uncorrupted ids (pad id 0 at padding)
  at::Tensor mask;       // [B, L] bool: true = real token, false = padding
  int64_t language = -1;                // index into MlmDataset::languages()
  std::vector<int64_t> sequence_index;  // [B]: which sequences of that language
};

/// Where the training stream stands: everything next_batch() depends on besides the options.
struct MlmDatasetState {
  int64_t step = 0;             // batches drawn so far
  std::vector<int64_t> epoch;   // [n_languages]: completed passes over the language
  std::vector<int64_t> cursor;  // [n_languages]: next position in the epoch's order
};

class MlmEvalIterator;

class MlmDataset {
 public:
  /// Reads, tokenizes (or loads from the cache) and packs every language of the split.
  /// Throws std::invalid_argument for bad options, std::runtime_error naming the file for a
  /// missing split directory or language file, and when no language has any text.
  MlmDataset(const Tokenizer& tokenizer, MlmDatasetOptions options);

  const MlmDatasetOptions& options() const { return options_; }
  const std::vector<std::string>& languages() const { return languages_; }
  int64_t n_languages() const { return static_cast<int64_t>(languages_.size()); }
  /// Index of `language` in languages(); std::invalid_argument when it is not there.
  int64_t language_index(const std::string& language) const;
  /// n_l: the non-empty lines of every language.
  const std::vector<int64_t>& line_counts() const { return line_counts_; }
  /// q_l of every language (sampling.h).
  const std::vector<double>& sampling_probs() const { return sampling_probs_; }
  /// The packed sequences of a language.
  const PackedSequences& sequences(int64_t language) const;
  /// Whether each language's ids came from a valid cache file.
  const std::vector<bool>& loaded_from_cache() const { return from_cache_; }
  const MaskingOptions& masking() const { return masking_; }

  /// The next training batch (see the header comment); advances the state.
  MlmBatch next_batch();

  const MlmDatasetState& state() const { return state_; }
  /// Throws std::invalid_argument when the state does not belong to this dataset (number of
  /// languages, a cursor outside its language).
  void set_state(const MlmDatasetState& state);

  /// The state as tensors, for a checkpoint: "<prefix>step" [1], "<prefix>epoch" [n],
  /// "<prefix>cursor" [n], and for checking on load "<prefix>seed" [1] (the uint64 bits) and
  /// "<prefix>n_sequences" [n], all int64.
  TensorMap state_dict(const std::string& prefix = "data.") const;
  /// Restores state_dict(). Throws xmoe::FileFormatError naming the key when one is missing or
  /// malformed, and std::invalid_argument when the seed or the sequence counts differ (the
  /// corpus, tokenizer, max_len or seed changed: the stream could not continue identically).
  void load_state_dict(const TensorMap& tensors, const std::string& prefix = "data.");

  /// Deterministic evaluation batches of one language (see the header comment). The iterator
  /// refers to this dataset, which must outlive it.
  MlmEvalIterator eval_iterator(int64_t language) const;

  /// Pads sequences `index` of `language` into tokens/mask [B, L] (no masking).
  void collate(int64_t language, const std::vector<int64_t>& index, MlmBatch* batch) const;

 private:
  friend class MlmEvalIterator;
  const std::vector<int64_t>& epoch_order(int64_t language);
  void check_language(int64_t language, const char* where) const;

  MlmDatasetOptions options_;
  MaskingOptions masking_;
  std::vector<std::string> languages_;
  std::vector<int64_t> line_counts_;
  std::vector<double> sampling_probs_;
  std::vector<PackedSequences> sequences_;
  std::vector<bool> from_cache_;
  MlmDatasetState state_;
  // The permutation of each language's current epoch (cache; a function of seed and epoch).
  std::vector<std::vector<int64_t>> order_;
  std::vector<int64_t> order_epoch_;
};

/// Batches of one language, every sequence once in file order; see MlmDataset::eval_iterator.
class MlmEvalIterator {
 public:
  /// Fills `batch` and returns true, or returns false at the end.
  bool next(MlmBatch* batch);
  /// Back to the first batch (the same batches and masks again).
  void reset() { cursor_ = 0, batch_index_ = 0; }
  int64_t language() const { return language_; }

 private:
  friend class MlmDataset;
  MlmEvalIterator(const MlmDataset* dataset, int64_t language)
      : dataset_(dataset), language_(language) {}

  const MlmDataset* dataset_;
  int64_t language_;
  int64_t cursor_ = 0;
  int64_t batch_index_ = 0;
};

}  // namespace xmoe
