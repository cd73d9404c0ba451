#include "xmoe/data/tokenizer_trainer.h"

#include "seeded_random.h"
#include "spm_api.h"
#include "xmoe/data/corpus_files.h"
#include "xmoe/data/tokenizer.h"
#include "xmoe/util/atomic_file.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <regex>
#include <stdexcept>
#include <utility>

namespace xmoe {
namespace {

std::string format_double(double v) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.17g", v);
  return buffer;
}

// SentencePiece's error, in xmoe's terms: without its source location and failed condition
// ("Internal: ./src/trainer_interface.cc(580) [(...) <= (...)] "), and naming the options of
// `xmoe tokenizer train` rather than SentencePiece's own flags.
std::string explain_sentencepiece_error(std::string error) {
  static const std::regex location(R"(^[A-Za-z ]+: \S+\(\d+\) \[[^\]]*\] )");
  error = std::regex_replace(error, location, "");
  error = std::regex_replace(error, std::regex(R"( with --character_coverage option)"), "");
  error = std::regex_replace(error, std::regex(R"(\bvocab_size\b)"), "--vocab-size");
  error = std::regex_replace(error, std::regex(R"(\bcharacter_coverage\b)"),
                             "--character-coverage");
  return error;
}

}  // namespace

void TokenizerTrainOptions::validate() const {
  auto fail = [](const std::string& m) {
    throw std::invalid_argument("xmoe::TokenizerTrainOptions: " + m);
  };
  if (vocab_size_ <= Tokenizer::kNumSpecial)
    fail("vocab_size = " + std::to_string(vocab_size_) + " must be > " +
         std::to_string(Tokenizer::kNumSpecial) + " (the special pieces)");
  if (lines_per_language_ < 0)
    fail("lines_per_language = " + std::to_string(lines_per_language_) +
         " must be >= 0 (0 = as many as the smallest language)");
  if (!(std::isfinite(character_coverage_) && character_coverage_ > 0 &&
        character_coverage_ <= 1.0))
    fail("character_coverage = " + std::to_string(character_coverage_) + " must be in (0, 1]");
  if (model_type_ != "unigram" && model_type_ != "bpe")
    fail("model_type = '" + model_type_ + "' is unknown (known: unigram, bpe)");
  if (threads_ < 1) fail("threads = " + std::to_string(threads_) + " must be >= 1");
  if (max_sentence_length_ < 1)
    fail("max_sentence_length = " + std::to_string(max_sentence_length_) + " must be >= 1");
}

std::vector<std::string> sample_lines(const std::string& path, int64_t n, uint64_t seed,
                                      int64_t* available) {
  if (n < 0) throw std::invalid_argument("xmoe::sample_lines: n = " + std::to_string(n) + " < 0");
  // Algorithm R: the first n lines fill the reservoir; line i (0-based among non-empty lines)
  // then replaces slot j ~ U{0..i} when j < n. Slots keep their line index for file order.
  std::vector<std::pair<int64_t, std::string>> reservoir;
  reservoir.reserve(static_cast<size_t>(std::min<int64_t>(n, 1 << 20)));
  data_detail::SplitMix64 rng(seed);
  int64_t seen = 0;
  for_each_line(path, [&](int64_t, const std::string& line) {
    if (line.empty()) return;
    if (seen < n) {
      reservoir.emplace_back(seen, line);
    } else if (n > 0) {
      const auto j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(seen) + 1));
      if (j < n) reservoir[static_cast<size_t>(j)] = {seen, line};
    }
    ++seen;
  });
  if (available != nullptr) *available = seen;
  std::sort(reservoir.begin(), reservoir.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<std::string> lines;
  lines.reserve(reservoir.size());
  for (auto& item : reservoir) lines.push_back(std::move(item.second));
  return lines;
}

std::string train_tokenizer(const std::vector<std::string>& sentences,
                            const std::string& model_prefix,
                            const TokenizerTrainOptions& options) {
  options.validate();
  if (model_prefix.empty()) throw std::invalid_argument("xmoe::train_tokenizer: empty model prefix");
  if (sentences.empty()) throw std::invalid_argument("xmoe::train_tokenizer: no training sentences");

  const spm::Kwargs args = {
      {"model_type", options.model_type()},
      {"vocab_size", std::to_string(options.vocab_size())},
      {"character_coverage", format_double(options.character_coverage())},
      {"pad_id", std::to_string(Tokenizer::kPadId)},
      {"unk_id", std::to_string(Tokenizer::kUnkId)},
      {"bos_id", std::to_string(Tokenizer::kClsId)},
      {"eos_id", std::to_string(Tokenizer::kSepId)},
      {"user_defined_symbols", Tokenizer::kMaskPiece},
      {"num_threads", std::to_string(options.threads())},
      {"input_sentence_size", "0"},  // use the whole (already sampled) input
      {"shuffle_input_sentence", "false"},
      {"max_sentence_length", std::to_string(options.max_sentence_length())},
      {"byte_fallback", options.byte_fallback() ? "true" : "false"},
      {"hard_vocab_limit", options.hard_vocab_limit() ? "true" : "false"},
  };

  const std::string model_path = model_prefix + ".model";
  const spm::Api& api = spm::api();
  std::string model_bytes, error;
  // SentencePiece reserves the seed 0xFFFFFFFF for "from std::random_device".
  const auto seed = static_cast<unsigned int>(options.seed() % 0xFFFFFFFFu);
  if (!api.train(args, sentences, seed, options.verbose() ? 0 : 2, &model_bytes, &error)) {
    throw std::runtime_error(model_path + ": SentencePiece training failed: " +
                             explain_sentencepiece_error(error));
  }

  // Verify the ids before anything is written, then write the model and its vocabulary.
  const Tokenizer tokenizer = Tokenizer::from_serialized(model_bytes, model_path);
  void* processor = api.load(model_bytes, &error);
  if (processor == nullptr) throw std::runtime_error(model_path + ": " + error);
  std::unique_ptr<void, void (*)(void*)> guard(processor, api.destroy);

  const auto parent = std::filesystem::path(model_path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  write_file_atomically(model_path, [&](std::ostream& out) {
    out.write(model_bytes.data(), static_cast<std::streamsize>(model_bytes.size()));
  });
  write_file_atomically(model_prefix + ".vocab", [&](std::ostream& out) {
    for (int id = 0; id < tokenizer.vocab_size(); ++id) {
      out << tokenizer.id_to_piece(id) << '\t' << format_double(api.score(processor, id)) << '\n';
    }
  });
  return model_path;
}

TokenizerTrainReport train_tokenizer_from_corpus(const std::string& corpus_dir,
                                                 const std::string& split,
                                                 const std::string& model_prefix,
                                                 const TokenizerTrainOptions& options) {
  options.validate();
  TokenizerTrainReport report;
  report.languages = list_corpus_languages(corpus_dir, split);
  const size_t n_lang = report.languages.size();

  int64_t n = options.lines_per_language();
  report.lines_available.assign(n_lang, 0);
  if (n == 0) {
    // Pass 1: count the non-empty lines; the smallest language sets the (equal) share.
    int64_t smallest = -1;
    for (size_t l = 0; l < n_lang; ++l) {
      int64_t count = 0;
      for_each_line(corpus_file(corpus_dir, split, report.languages[l]),
                    [&](int64_t, const std::string& line) { count += line.empty() ? 0 : 1; });
      report.lines_available[l] = count;
      if (count > 0 && (smallest < 0 || count < smallest)) smallest = count;
    }
    if (smallest < 0) {
      throw std::runtime_error(corpus_dir + "/" + split + ": every language file is empty");
    }
    n = std::min(smallest, kAutoLinesCap);
  }

  std::vector<std::string> sample;
  report.lines_used.assign(n_lang, 0);
  for (size_t l = 0; l < n_lang; ++l) {
    const uint64_t seed =
        data_detail::mix_seed(options.seed(), data_detail::fnv1a(report.languages[l]));
    int64_t available = 0;
    std::vector<std::string> lines =
        sample_lines(corpus_file(corpus_dir, split, report.languages[l]), n, seed, &available);
    report.lines_available[l] = available;
    report.lines_used[l] = static_cast<int64_t>(lines.size());
    for (auto& line : lines) sample.push_back(std::move(line));
  }
  if (sample.empty()) {
    throw std::runtime_error(corpus_dir + "/" + split + ": every language file is empty");
  }
  report.model_path = train_tokenizer(sample, model_prefix, options);
  report.vocab_path = model_prefix + ".vocab";
  report.vocab_size = Tokenizer::load(report.model_path).vocab_size();
  return report;
}

}  // namespace xmoe
