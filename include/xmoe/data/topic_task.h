// The help-topic task: cross-lingual text classification made from the corpus's LibreOffice help
// (a downstream task for `xmoe finetune`, in the spirit of the paper's XTREME fine-tuning: train
// on one language, test zero-shot on the others).
//
// A paragraph's class is the LibreOffice module its help page documents, read from the page path
// in its corpus key (`xmoe corpus build --keys` writes <split>/<lang>.keys beside each .txt):
//
//   libreoffice:text/scalc/01/04060101.html#par_id3150084  →  "calc"
//
// Pages of text/shared (common to every module), man pages and fortunes belong to no class and
// are skipped. The help is a parallel corpus split by page, so a page's translations share its
// split and class: a model fine-tuned on English train paragraphs is measured on test paragraphs
// of pages it never saw, in every language.
#pragma once

#include "xmoe/data/tokenizer.h"

#include <ATen/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace xmoe {

/// Class names, in label order: calc, writer, basic, impress, draw, base, math, chart.
const std::vector<std::string>& help_topic_classes();

/// The label of a corpus key (index into help_topic_classes()), or -1 for a key of no class.
int64_t help_topic_label(const std::string& key);

/// "<corpus>/<split>/<lang>.keys".
std::string corpus_keys_file(const std::string& corpus_dir, const std::string& split,
                             const std::string& language);

struct TopicExample {
  std::vector<int64_t> ids;  // [CLS] pieces… [SEP], at most max_len ids
  int64_t label = 0;
};

struct TopicSplit {
  std::string language;
  std::vector<TopicExample> examples;  // in file order
  int64_t lines = 0;                   // lines read (examples + lines of no class)
};

/// Reads <split>/<lang>.txt and .keys of `corpus_dir`, keeps the lines with a class, and tokenises
/// them (truncated to max_len ids, [SEP] kept last). Throws std::runtime_error naming the file
/// when the text or keys file is missing (the keys: with the `--keys` rebuild hint) and
/// xmoe::FileFormatError when the two files differ in line count.
TopicSplit load_topic_split(const std::string& corpus_dir, const std::string& split,
                            const std::string& language, const Tokenizer& tokenizer,
                            int64_t max_len);

/// The languages of a split that have a keys file, sorted by name.
std::vector<std::string> list_topic_languages(const std::string& corpus_dir,
                                              const std::string& split);

struct TopicBatch {
  at::Tensor ids;     // [B, L] int64, padded with Tokenizer::kPadId to the longest example
  at::Tensor labels;  // [B] int64
  int64_t tokens = 0; // non-padding ids
};

/// Index batches of at most `batch_size` examples, in order of length (stable): for evaluation,
/// where the order does not matter and similar lengths waste less padding.
std::vector<std::vector<int64_t>> batches_by_length(const std::vector<TopicExample>& examples,
                                                    int64_t batch_size);

/// The examples at `indices`, padded to the longest one.
TopicBatch make_topic_batch(const std::vector<TopicExample>& examples,
                            const std::vector<int64_t>& indices);

}  // namespace xmoe
