// Training the SentencePiece tokenizer of xmoe/data/tokenizer.h (SPEC §6) on a
// language-balanced sample of a corpus (<corpus>/<split>/<lang>.txt, xmoe/data/corpus_files.h):
//
//   1. For every language l, count its non-empty lines n_l and draw N_l = min(N, n_l) of them
//      uniformly without replacement (reservoir sampling, Vitter's algorithm R, driven by
//      SplitMix64(seed, l)); N = lines_per_language, or, when that is 0, the smallest n_l
//      (capped at kAutoLinesCap), so that every language contributes the same number of lines.
//   2. Train a SentencePiece model on the union (model_type unigram by default, vocab_size V,
//      character_coverage 0.9995, nmt_nfkc normalisation) with the fixed special ids pad 0,
//      unk 1, <s>/[CLS] 2, </s>/[SEP] 3 and the user-defined symbol <mask> 4. The sample is
//      passed in full (input_sentence_size 0, no shuffling), so for a fixed thread count the
//      model bytes depend only on the corpus and the options.
//   3. Write <prefix>.model (atomically) and <prefix>.vocab ("piece<TAB>score" per id).
#pragma once

#include <torch/arg.h>

#include <cstdint>
#include <string>
#include <vector>

namespace xmoe {

/// lines_per_language = 0 takes the smallest language's line count, at most this many.
constexpr int64_t kAutoLinesCap = 200000;

struct TokenizerTrainOptions {
  /// V, specials included; must exceed the number of required characters + 5.
  TORCH_ARG(int64_t, vocab_size) = 8000;
  /// Lines sampled per language; 0 = min over languages of n_l (capped at kAutoLinesCap).
  TORCH_ARG(int64_t, lines_per_language) = 0;
  /// Seed of the line sample (SentencePiece's own generator is seeded with it too).
  TORCH_ARG(uint64_t, seed) = 0;
  /// Share of the characters the vocabulary must cover (0.9995 suits CJK; 1.0 for small
  /// alphabets). Rarer characters become <unk> (or bytes with byte_fallback).
  TORCH_ARG(double, character_coverage) = 0.9995;
  /// "unigram" (SPEC §6) or "bpe".
  TORCH_ARG(std::string, model_type) = "unigram";
  /// SentencePiece training threads. The model is reproducible for a fixed count.
  TORCH_ARG(int64_t, threads) = 1;
  /// Lines longer than this many bytes are left out of training (never out of encoding).
  TORCH_ARG(int64_t, max_sentence_length) = 8192;
  /// Spell uncovered characters as UTF-8 byte pieces instead of <unk> (adds 256 pieces).
  TORCH_ARG(bool, byte_fallback) = false;
  /// false: V is an upper bound when the sample is too small to fill it.
  TORCH_ARG(bool, hard_vocab_limit) = true;
  /// Let SentencePiece log its progress to stderr.
  TORCH_ARG(bool, verbose) = false;

 public:
  /// Throws std::invalid_argument naming the first invalid field and its allowed values.
  void validate() const;
};

struct TokenizerTrainReport {
  std::vector<std::string> languages;
  std::vector<int64_t> lines_available;  // non-empty lines per language
  std::vector<int64_t> lines_used;       // lines sampled per language
  int64_t vocab_size = 0;                // pieces in the trained model
  std::string model_path;                // <prefix>.model
  std::string vocab_path;                // <prefix>.vocab
};

/// Up to `n` non-empty lines of `path` drawn uniformly without replacement (algorithm R with
/// SplitMix64(seed)), returned in file order. `available` receives the number of non-empty
/// lines. Throws std::runtime_error naming the file when it cannot be read.
std::vector<std::string> sample_lines(const std::string& path, int64_t n, uint64_t seed,
                                      int64_t* available = nullptr);

/// Trains on `sentences` and writes <model_prefix>.model and .vocab (step 2-3 above); creates
/// the prefix's directory. Returns the model path. Throws std::invalid_argument for bad options
/// or no sentences, std::runtime_error (with SentencePiece's message) when training fails,
/// e.g. a vocab_size too large for the sample.
std::string train_tokenizer(const std::vector<std::string>& sentences,
                            const std::string& model_prefix, const TokenizerTrainOptions& options);

/// Steps 1-3 on <corpus_dir>/<split>/*.txt (every language of the split).
TokenizerTrainReport train_tokenizer_from_corpus(const std::string& corpus_dir,
                                                 const std::string& split,
                                                 const std::string& model_prefix,
                                                 const TokenizerTrainOptions& options);

}  // namespace xmoe
