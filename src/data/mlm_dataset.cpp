#include "xmoe/data/mlm_dataset.h"

#include "seeded_random.h"
#include "xmoe/data/corpus_files.h"
#include "xmoe/data/sampling.h"
#include "xmoe/data/token_cache.h"
#include "xmoe/util/init.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <utility>

namespace xmoe {
namespace {

namespace fs = std::filesystem;
using data_detail::mix_seed;

// Tags that keep the seed streams of different purposes apart.
constexpr uint64_t kLanguageDrawTag = 0x6C616E67;  // "lang"
constexpr uint64_t kTrainMaskTag = 0x6D61736B;     // "mask"
constexpr uint64_t kEvalMaskTag = 0x6576616C;      // "eval"
constexpr uint64_t kEpochOrderTag = 0x65706F63;    // "epoc"

uint64_t seed3(uint64_t seed, uint64_t tag, uint64_t a, uint64_t b = 0) {
  return mix_seed(mix_seed(mix_seed(seed, tag), a), b);
}

std::string default_cache_dir(const Tokenizer& tokenizer) {
  if (tokenizer.path().empty()) return "";
  fs::path model(tokenizer.path());
  if (model.extension() == ".model") model.replace_extension("");
  return model.string() + ".cache";
}

// The cache file of one corpus file: named by split and language, with a hash of the text
// file's absolute path so that two corpora never share a cache file.
std::string cache_file(const std::string& cache_dir, const std::string& split,
                       const std::string& language, const std::string& text_path) {
  std::error_code ec;
  fs::path absolute = fs::absolute(text_path, ec);
  const uint64_t h = data_detail::fnv1a(ec ? text_path : absolute.lexically_normal().string());
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(h));
  return (fs::path(cache_dir) / (split + "." + language + "." + hex + ".ids")).string();
}

}  // namespace

void MlmDatasetOptions::validate() const {
  auto fail = [](const std::string& m) {
    throw std::invalid_argument("xmoe::MlmDatasetOptions: " + m);
  };
  if (corpus_dir_.empty()) fail("corpus_dir is empty");
  if (split_.empty()) fail("split is empty (train, valid or test)");
  if (max_len_ < 3)
    fail("max_len = " + std::to_string(max_len_) + " must be >= 3 ([CLS], a token, [SEP])");
  if (max_tokens_ < max_len_)
    fail("max_tokens = " + std::to_string(max_tokens_) + " must be >= max_len = " +
         std::to_string(max_len_));
  if (!(std::isfinite(alpha_) && alpha_ > 0 && alpha_ <= 1))
    fail("alpha = " + std::to_string(alpha_) + " must be in (0, 1]");
  for (size_t i = 0; i < languages_.size(); ++i) {
    if (languages_[i].empty()) fail("languages[" + std::to_string(i) + "] is empty");
    for (size_t j = 0; j < i; ++j) {
      if (languages_[j] == languages_[i]) fail("languages lists '" + languages_[i] + "' twice");
    }
  }
  // The masking fields, through MaskingOptions' own checks (any vocabulary will do here).
  try {
    MaskingOptions(Tokenizer::kNumSpecial + 1)
        .mask_prob(mask_prob_)
        .mask_token_prob(mask_token_prob_)
        .random_token_prob(random_token_prob_)
        .validate();
  } catch (const std::invalid_argument& e) {
    fail(std::string(e.what()).substr(std::strlen("xmoe::MaskingOptions: ")));
  }
}

MlmDataset::MlmDataset(const Tokenizer& tokenizer, MlmDatasetOptions options)
    : options_(std::move(options)), masking_(tokenizer.vocab_size()) {
  options_.validate();
  masking_.mask_id(Tokenizer::kMaskId)
      .first_regular_id(Tokenizer::kNumSpecial)
      .mask_prob(options_.mask_prob())
      .mask_token_prob(options_.mask_token_prob())
      .random_token_prob(options_.random_token_prob());
  masking_.validate();

  languages_ = options_.languages().empty()
                   ? list_corpus_languages(options_.corpus_dir(), options_.split())
                   : options_.languages();
  std::string cache_dir;
  if (options_.use_cache()) {
    cache_dir = options_.cache_dir().empty() ? default_cache_dir(tokenizer) : options_.cache_dir();
  }

  for (const auto& language : languages_) {
    const std::string path = corpus_file(options_.corpus_dir(), options_.split(), language);
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) {
      throw std::runtime_error(path + ": no such corpus file (language '" + language +
                               "', split '" + options_.split() + "')");
    }
    bool cached = false;
    EncodedLines lines =
        cache_dir.empty()
            ? encode_lines(tokenizer, path)
            : encode_lines_cached(tokenizer, path,
                                  cache_file(cache_dir, options_.split(), language, path), &cached);
    line_counts_.push_back(lines.n_nonempty_lines());
    sequences_.push_back(
        pack_lines(lines, options_.max_len(), Tokenizer::kClsId, Tokenizer::kSepId, options_.packing()));
    from_cache_.push_back(cached);
  }
  const bool any = std::any_of(line_counts_.begin(), line_counts_.end(),
                               [](int64_t n) { return n > 0; });
  if (!any) {
    throw std::runtime_error(options_.corpus_dir() + "/" + options_.split() +
                             ": no language has any text");
  }
  sampling_probs_ = language_sampling_probs(line_counts_, options_.alpha());

  const size_t n = languages_.size();
  state_.epoch.assign(n, 0);
  state_.cursor.assign(n, 0);
  order_.assign(n, {});
  order_epoch_.assign(n, -1);
}

int64_t MlmDataset::language_index(const std::string& language) const {
  const auto it = std::find(languages_.begin(), languages_.end(), language);
  if (it == languages_.end()) {
    std::string known;
    for (const auto& l : languages_) known += (known.empty() ? "" : ", ") + l;
    throw std::invalid_argument("xmoe::MlmDataset: no language '" + language + "' (known: " +
                                known + ")");
  }
  return it - languages_.begin();
}

void MlmDataset::check_language(int64_t language, const char* where) const {
  if (language < 0 || language >= n_languages()) {
    throw std::invalid_argument(std::string("xmoe::MlmDataset::") + where + ": language index " +
                                std::to_string(language) + " outside [0, " +
                                std::to_string(n_languages()) + ")");
  }
}

const PackedSequences& MlmDataset::sequences(int64_t language) const {
  check_language(language, "sequences");
  return sequences_[static_cast<size_t>(language)];
}

const std::vector<int64_t>& MlmDataset::epoch_order(int64_t language) {
  const auto l = static_cast<size_t>(language);
  const int64_t epoch = state_.epoch[l];
  if (order_epoch_[l] != epoch) {
    const int64_t n = sequences_[l].size();
    if (options_.shuffle()) {
      order_[l] = data_detail::seeded_permutation(
          n, seed3(options_.seed(), kEpochOrderTag, static_cast<uint64_t>(language),
                   static_cast<uint64_t>(epoch)));
    } else {
      order_[l].resize(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) order_[l][static_cast<size_t>(i)] = i;
    }
    order_epoch_[l] = epoch;
  }
  return order_[l];
}

void MlmDataset::collate(int64_t language, const std::vector<int64_t>& index,
                         MlmBatch* batch) const {
  check_language(language, "collate");
  const PackedSequences& seqs = sequences_[static_cast<size_t>(language)];
  int64_t longest = 0;
  for (int64_t i : index) {
    if (i < 0 || i >= seqs.size()) {
      throw std::invalid_argument("xmoe::MlmDataset::collate: sequence " + std::to_string(i) +
                                  " outside [0, " + std::to_string(seqs.size()) + ")");
    }
    longest = std::max(longest, seqs.length(i));
  }
  const auto b = static_cast<int64_t>(index.size());
  batch->tokens = at::full({b, longest}, Tokenizer::kPadId, at::kLong);
  batch->mask = at::zeros({b, longest}, at::kBool);
  auto tokens = batch->tokens.accessor<int64_t, 2>();
  auto mask = batch->mask.accessor<bool, 2>();
  for (int64_t r = 0; r < b; ++r) {
    const int64_t i = index[static_cast<size_t>(r)];
    const int32_t* src = seqs.data(i);
    for (int64_t c = 0; c < seqs.length(i); ++c) {
      tokens[r][c] = src[c];
      mask[r][c] = true;
    }
  }
  batch->language = language;
  batch->sequence_index = index;
}

MlmBatch MlmDataset::next_batch() {
  const uint64_t step = static_cast<uint64_t>(state_.step);
  const double u = data_detail::unit_double(
      data_detail::splitmix64(seed3(options_.seed(), kLanguageDrawTag, step)));
  const int64_t language = draw_language(sampling_probs_, u);
  const auto l = static_cast<size_t>(language);
  const PackedSequences& seqs = sequences_[l];

  // Take sequences in epoch order while B · L <= max_tokens, crossing into the next epoch.
  std::vector<int64_t> index;
  int64_t longest = 0;
  while (true) {
    if (state_.cursor[l] >= seqs.size()) {
      state_.cursor[l] = 0;
      ++state_.epoch[l];
    }
    const std::vector<int64_t>& order = epoch_order(language);
    const int64_t next = order[static_cast<size_t>(state_.cursor[l])];
    const int64_t new_longest = std::max(longest, seqs.length(next));
    if (static_cast<int64_t>(index.size() + 1) * new_longest > options_.max_tokens()) break;
    index.push_back(next);
    longest = new_longest;
    ++state_.cursor[l];
    // One pass at most: a batch never holds the same sequence twice.
    if (static_cast<int64_t>(index.size()) >= seqs.size()) break;
  }

  MlmBatch batch;
  collate(language, index, &batch);
  MaskedTokens masked = mask_tokens(batch.tokens, batch.mask, masking_,
                                    make_generator(seed3(options_.seed(), kTrainMaskTag, step)));
  batch.input_ids = std::move(masked.input_ids);
  batch.labels = std::move(masked.labels);
  ++state_.step;
  return batch;
}

void MlmDataset::set_state(const MlmDatasetState& state) {
  const auto n = static_cast<size_t>(n_languages());
  auto fail = [](const std::string& m) {
    throw std::invalid_argument("xmoe::MlmDataset::set_state: " + m);
  };
  if (state.step < 0) fail("step = " + std::to_string(state.step) + " must be >= 0");
  if (state.epoch.size() != n || state.cursor.size() != n) {
    fail("the state has " + std::to_string(state.cursor.size()) + " languages, the dataset " +
         std::to_string(n));
  }
  for (size_t l = 0; l < n; ++l) {
    if (state.epoch[l] < 0) fail("epoch of '" + languages_[l] + "' is negative");
    if (state.cursor[l] < 0 || state.cursor[l] > sequences_[l].size()) {
      fail("cursor " + std::to_string(state.cursor[l]) + " of '" + languages_[l] +
           "' outside [0, " + std::to_string(sequences_[l].size()) + "]");
    }
  }
  state_ = state;
}

TensorMap MlmDataset::state_dict(const std::string& prefix) const {
  auto vec = [](const std::vector<int64_t>& v) {
    return at::tensor(at::ArrayRef<int64_t>(v), at::kLong).clone();
  };
  std::vector<int64_t> n_sequences;
  for (const auto& s : sequences_) n_sequences.push_back(s.size());
  int64_t seed_bits = 0;
  const uint64_t seed = options_.seed();
  std::memcpy(&seed_bits, &seed, sizeof(seed));
  TensorMap out;
  out[prefix + "step"] = at::full({1}, state_.step, at::kLong);
  out[prefix + "epoch"] = vec(state_.epoch);
  out[prefix + "cursor"] = vec(state_.cursor);
  out[prefix + "seed"] = at::full({1}, seed_bits, at::kLong);
  out[prefix + "n_sequences"] = vec(n_sequences);
  return out;
}

void MlmDataset::load_state_dict(const TensorMap& tensors, const std::string& prefix) {
  const auto n = n_languages();
  auto get = [&](const std::string& key, int64_t numel) {
    const auto it = tensors.find(prefix + key);
    if (it == tensors.end()) {
      throw FileFormatError("dataset state: missing tensor '" + prefix + key + "'");
    }
    const at::Tensor& t = it->second;
    if (t.scalar_type() != at::kLong || t.dim() != 1 || t.numel() != numel) {
      throw FileFormatError("dataset state: tensor '" + prefix + key + "' must be int64 [" +
                            std::to_string(numel) + "]");
    }
    const at::Tensor c = t.contiguous().cpu();
    return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + numel);
  };
  // The number of languages comes from the state itself, so that a mismatch is reported as such.
  const auto cursor_it = tensors.find(prefix + "cursor");
  if (cursor_it != tensors.end() && cursor_it->second.dim() == 1 &&
      cursor_it->second.numel() != n) {
    throw std::invalid_argument("xmoe::MlmDataset::load_state_dict: the state has " +
                                std::to_string(cursor_it->second.numel()) +
                                " languages, the dataset " + std::to_string(n));
  }
  const auto seed_bits = get("seed", 1)[0];
  uint64_t seed = 0;
  std::memcpy(&seed, &seed_bits, sizeof(seed));
  if (seed != options_.seed()) {
    throw std::invalid_argument("xmoe::MlmDataset::load_state_dict: the state was saved with seed " +
                                std::to_string(seed) + ", the dataset has seed " +
                                std::to_string(options_.seed()));
  }
  const auto n_sequences = get("n_sequences", n);
  for (int64_t l = 0; l < n; ++l) {
    const auto i = static_cast<size_t>(l);
    if (n_sequences[i] != sequences_[i].size()) {
      throw std::invalid_argument(
          "xmoe::MlmDataset::load_state_dict: language '" + languages_[i] + "' had " +
          std::to_string(n_sequences[i]) + " sequences when the state was saved, now " +
          std::to_string(sequences_[i].size()) + " (corpus, tokenizer or max_len changed)");
    }
  }
  MlmDatasetState state;
  state.step = get("step", 1)[0];
  state.epoch = get("epoch", n);
  state.cursor = get("cursor", n);
  set_state(state);
}

MlmEvalIterator MlmDataset::eval_iterator(int64_t language) const {
  check_language(language, "eval_iterator");
  return MlmEvalIterator(this, language);
}

bool MlmEvalIterator::next(MlmBatch* batch) {
  const PackedSequences& seqs = dataset_->sequences_[static_cast<size_t>(language_)];
  if (cursor_ >= seqs.size()) return false;
  int64_t b = 0, longest = 0;
  while (cursor_ + b < seqs.size()) {
    const int64_t new_longest = std::max(longest, seqs.length(cursor_ + b));
    if ((b + 1) * new_longest > dataset_->options_.max_tokens()) break;
    longest = new_longest;
    ++b;
  }
  std::vector<int64_t> index(static_cast<size_t>(b));
  for (int64_t i = 0; i < b; ++i) index[static_cast<size_t>(i)] = cursor_ + i;
  dataset_->collate(language_, index, batch);
  MaskedTokens masked = mask_tokens(
      batch->tokens, batch->mask, dataset_->masking_,
      make_generator(seed3(dataset_->options_.seed(), kEvalMaskTag,
                           static_cast<uint64_t>(language_), static_cast<uint64_t>(batch_index_))));
  batch->input_ids = std::move(masked.input_ids);
  batch->labels = std::move(masked.labels);
  cursor_ += b;
  ++batch_index_;
  return true;
}

}  // namespace xmoe
