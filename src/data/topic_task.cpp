#include "xmoe/data/topic_task.h"

#include "xmoe/data/corpus_files.h"
#include "xmoe/io/safetensors.h"  // FileFormatError

#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <stdexcept>
#include <utility>

namespace xmoe {

namespace {

// Help folder (text/<folder>/…) → class name, in label order.
const std::vector<std::pair<std::string, std::string>>& topic_folders() {
  static const std::vector<std::pair<std::string, std::string>> folders = {
      {"scalc", "calc"},       {"swriter", "writer"}, {"sbasic", "basic"}, {"simpress", "impress"},
      {"sdraw", "draw"},       {"sdatabase", "base"}, {"smath", "math"},   {"schart", "chart"}};
  return folders;
}

}  // namespace

const std::vector<std::string>& help_topic_classes() {
  static const std::vector<std::string> classes = [] {
    std::vector<std::string> names;
    for (const auto& f : topic_folders()) names.push_back(f.second);
    return names;
  }();
  return classes;
}

int64_t help_topic_label(const std::string& key) {
  static const std::string kPrefix = "libreoffice:text/";
  if (key.compare(0, kPrefix.size(), kPrefix) != 0) return -1;
  const size_t end = key.find('/', kPrefix.size());
  if (end == std::string::npos) return -1;
  const std::string folder = key.substr(kPrefix.size(), end - kPrefix.size());
  const auto& folders = topic_folders();
  for (size_t i = 0; i < folders.size(); ++i)
    if (folders[i].first == folder) return static_cast<int64_t>(i);
  return -1;
}

std::string corpus_keys_file(const std::string& corpus_dir, const std::string& split,
                             const std::string& language) {
  return (std::filesystem::path(corpus_dir) / split / (language + ".keys")).string();
}

TopicSplit load_topic_split(const std::string& corpus_dir, const std::string& split,
                            const std::string& language, const Tokenizer& tokenizer,
                            int64_t max_len) {
  if (max_len < 3)
    throw std::invalid_argument("max_len must be >= 3, got " + std::to_string(max_len));
  const std::string text_path = corpus_file(corpus_dir, split, language);
  const std::string keys_path = corpus_keys_file(corpus_dir, split, language);
  std::error_code ec;
  if (!std::filesystem::is_regular_file(text_path, ec))
    throw std::runtime_error(text_path + ": no such corpus file (language '" + language +
                             "', split '" + split + "')");
  if (!std::filesystem::is_regular_file(keys_path, ec))
    throw std::runtime_error(keys_path + ": no keys file; the help-topic task needs the paragraph "
                             "keys: rebuild the corpus with `xmoe corpus build --keys` "
                             "(with the libreoffice source)");
  std::vector<int64_t> labels;
  for_each_line(keys_path, [&](int64_t, const std::string& key) {
    labels.push_back(help_topic_label(key));
  });

  TopicSplit out;
  out.language = language;
  const size_t body = static_cast<size_t>(max_len - 2);  // room for [CLS] and [SEP]
  for_each_line(text_path, [&](int64_t line, const std::string& text) {
    ++out.lines;
    if (static_cast<size_t>(line) >= labels.size() || labels[line] < 0) return;
    const std::vector<int> pieces = tokenizer.encode(text);
    TopicExample e;
    e.label = labels[line];
    e.ids.reserve(std::min(pieces.size(), body) + 2);
    e.ids.push_back(Tokenizer::kClsId);
    e.ids.insert(e.ids.end(), pieces.begin(), pieces.begin() + std::min(pieces.size(), body));
    e.ids.push_back(Tokenizer::kSepId);
    out.examples.push_back(std::move(e));
  });
  if (static_cast<size_t>(out.lines) != labels.size())
    throw FileFormatError(keys_path + ": " + std::to_string(labels.size()) + " keys for " +
                          std::to_string(out.lines) + " lines of " + text_path +
                          " (the two files must be written by the same corpus build)");
  return out;
}

std::vector<std::string> list_topic_languages(const std::string& corpus_dir,
                                              const std::string& split) {
  std::vector<std::string> languages;
  for (const std::string& l : list_corpus_languages(corpus_dir, split)) {
    std::error_code ec;
    if (std::filesystem::is_regular_file(corpus_keys_file(corpus_dir, split, l), ec))
      languages.push_back(l);
  }
  return languages;
}

std::vector<std::vector<int64_t>> batches_by_length(const std::vector<TopicExample>& examples,
                                                    int64_t batch_size) {
  if (batch_size <= 0) throw std::invalid_argument("batch_size must be > 0");
  std::vector<int64_t> order(examples.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return examples[a].ids.size() < examples[b].ids.size();
  });
  std::vector<std::vector<int64_t>> batches;
  for (size_t first = 0; first < order.size(); first += static_cast<size_t>(batch_size)) {
    const size_t end = std::min(order.size(), first + static_cast<size_t>(batch_size));
    batches.emplace_back(order.begin() + first, order.begin() + end);
  }
  return batches;
}

TopicBatch make_topic_batch(const std::vector<TopicExample>& examples,
                            const std::vector<int64_t>& indices) {
  size_t longest = 0;
  for (int64_t i : indices) longest = std::max(longest, examples.at(i).ids.size());
  const auto b = static_cast<int64_t>(indices.size());
  TopicBatch batch;
  batch.ids = at::full({b, static_cast<int64_t>(longest)}, Tokenizer::kPadId, at::kLong);
  batch.labels = at::empty({b}, at::kLong);
  int64_t* ids = batch.ids.data_ptr<int64_t>();
  int64_t* labels = batch.labels.data_ptr<int64_t>();
  for (int64_t r = 0; r < b; ++r) {
    const TopicExample& e = examples.at(indices[r]);
    std::copy(e.ids.begin(), e.ids.end(), ids + r * static_cast<int64_t>(longest));
    labels[r] = e.label;
    batch.tokens += static_cast<int64_t>(e.ids.size());
  }
  return batch;
}

}  // namespace xmoe
