// xmoe tokenizer: train the SentencePiece model of a corpus (SPEC §6), and encode / decode
// text with it.
//   xmoe tokenizer train  --corpus DIR --out PREFIX [--vocab-size 8000] [--lines-per-language N]
//                         [--seed S] [--split train] [--character-coverage 0.9995] ...
//   xmoe tokenizer encode --model M.model [--pieces] [TEXT...]   (no TEXT: one line per stdin line)
//   xmoe tokenizer decode --model M.model ID...
#include "commands.h"
#include "validators.h"

#include "xmoe/data/corpus_files.h"
#include "xmoe/data/tokenizer.h"
#include "xmoe/data/tokenizer_trainer.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <iostream>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace xmoe::cli {

namespace {

struct TokenizerTrainArgs {
  std::string corpus, out, split = "train", model_type = "unigram";
  int64_t vocab_size = 8000, lines_per_language = 0, max_sentence_length = 8192;
  uint64_t seed = 0;
  double character_coverage = 0.9995;
  bool byte_fallback = false, soft_vocab_limit = false, verbose = false;
};

struct TokenizerCodecArgs {
  std::string model;
  std::vector<std::string> text;
  std::vector<std::string> ids;  // parsed strictly: "", "0x10" or "1e3" are not ids
  bool pieces = false;
};

// The byte offset of the first byte that does not belong to a well-formed UTF-8 sequence
// (overlong forms, surrogates and code points past U+10FFFF included), or npos.
size_t invalid_utf8_offset(const std::string& text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = s[i];
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
    if (c < 0x80) {
      ++i;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;  // overlong
      if (c == 0xED) hi = 0x9F;  // surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;  // overlong
      if (c == 0xF4) hi = 0x8F;  // past U+10FFFF
    } else {
      return i;
    }
    if (i + len > n || s[i + 1] < lo || s[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k)
      if (s[i + k] < 0x80 || s[i + k] > 0xBF) return i;
    i += len;
  }
  return std::string::npos;
}

void run_train(const TokenizerTrainArgs& a) {
  TokenizerTrainOptions options;
  options.vocab_size(a.vocab_size)
      .lines_per_language(a.lines_per_language)
      .seed(a.seed)
      .character_coverage(a.character_coverage)
      .model_type(a.model_type)
      .threads(at::get_num_threads())
      .max_sentence_length(a.max_sentence_length)
      .byte_fallback(a.byte_fallback)
      .hard_vocab_limit(!a.soft_vocab_limit)
      .verbose(a.verbose);
  const TokenizerTrainReport r = train_tokenizer_from_corpus(a.corpus, a.split, a.out, options);
  std::printf("%-10s %12s %12s\n", "language", "lines", "sampled");
  int64_t total = 0, target = 0;
  for (int64_t n : r.lines_used) target = std::max(target, n);
  for (size_t l = 0; l < r.languages.size(); ++l) {
    std::printf("%-10s %12lld %12lld%s\n", r.languages[l].c_str(),
                static_cast<long long>(r.lines_available[l]),
                static_cast<long long>(r.lines_used[l]),
                r.lines_used[l] < target ? "  (fewer lines than the others: all used)" : "");
    total += r.lines_used[l];
  }
  std::printf("trained a %s model of %lld pieces on %lld lines (threads: %d)\nwrote %s and %s\n",
              a.model_type.c_str(), static_cast<long long>(r.vocab_size),
              static_cast<long long>(total), at::get_num_threads(), r.model_path.c_str(),
              r.vocab_path.c_str());
}

// `where` names the text in errors: "the text" or "stdin line N".
void print_encoded(const Tokenizer& tokenizer, const std::string& text, bool pieces,
                   const std::string& where) {
  if (text.size() > kMaxLineBytes)  // SentencePiece needs ~200 bytes of memory per byte
    throw std::invalid_argument(where + " is " + std::to_string(text.size()) +
                                " bytes; encode at most 1 MiB at a time");
  // SentencePiece would turn the bytes into <unk> without a word.
  const size_t bad = invalid_utf8_offset(text);
  if (bad != std::string::npos)
    throw std::invalid_argument(where + " is not valid UTF-8 (byte " + std::to_string(bad) + ")");
  std::string line;
  if (pieces) {
    for (const auto& p : tokenizer.encode_as_pieces(text)) line += (line.empty() ? "" : " ") + p;
  } else {
    for (int id : tokenizer.encode(text)) {
      line += (line.empty() ? "" : " ") + std::to_string(id);
    }
  }
  std::cout << line << "\n";
}

void run_encode(const TokenizerCodecArgs& a) {
  const Tokenizer tokenizer = Tokenizer::load(a.model);
  if (!a.text.empty()) {
    std::string text;
    for (const auto& word : a.text) text += (text.empty() ? "" : " ") + word;
    print_encoded(tokenizer, text, a.pieces, "the text");
    return;
  }
  std::string line;
  for (int64_t n = 1; std::getline(std::cin, line); ++n)
    print_encoded(tokenizer, line, a.pieces, "stdin line " + std::to_string(n));
}

void run_decode(const TokenizerCodecArgs& a) {
  const Tokenizer tokenizer = Tokenizer::load(a.model);
  std::vector<int> ids;
  for (const std::string& word : a.ids) {
    int id = 0;
    const char* end = word.data() + word.size();
    const auto [ptr, ec] = std::from_chars(word.data(), end, id);
    if (word.empty() || ec != std::errc() || ptr != end || id < 0 || id >= tokenizer.vocab_size())
      throw std::invalid_argument("'" + word + "' is not a token id of " + a.model +
                                  " (a decimal integer in [0, " +
                                  std::to_string(tokenizer.vocab_size()) + "))");
    ids.push_back(id);
  }
  std::cout << tokenizer.decode(ids) << "\n";
}

}  // namespace

void register_tokenizer(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand(
      "tokenizer", "Train a SentencePiece tokenizer on a corpus; encode or decode text with it");
  cmd->require_subcommand(1);

  auto train = std::make_shared<TokenizerTrainArgs>();
  CLI::App* t = cmd->add_subcommand(
      "train", "Train a unigram SentencePiece model on an equal number of lines per language of "
               "<corpus>/<split>/<lang>.txt; writes PREFIX.model and PREFIX.vocab");
  t->add_option("--corpus", train->corpus, "Corpus directory (<corpus>/<split>/<lang>.txt)")
      ->required();
  t->add_option("--out", train->out, "Output prefix: writes PREFIX.model and PREFIX.vocab")
      ->required();
  t->add_option("--split", train->split, "Corpus split to train on")->capture_default_str();
  t->add_option("--vocab-size", train->vocab_size, "Vocabulary size, the 5 specials included")
      ->capture_default_str()
      ->check(int_in(Tokenizer::kNumSpecial + 1, 1 << 24));
  t->add_option("--lines-per-language", train->lines_per_language,
                "Lines sampled per language; 0 = as many as the smallest language has (at most " +
                    std::to_string(kAutoLinesCap) + ")")
      ->capture_default_str()
      ->check(kNonNegative);
  t->add_option("--seed", train->seed, "Seed of the line sample")->capture_default_str();
  t->add_option("--character-coverage", train->character_coverage,
                "Share of characters covered by the vocabulary")
      ->capture_default_str()
      ->check(number_in(std::numeric_limits<double>::denorm_min(), 1.0, "in (0, 1]", "(0, 1]"));
  t->add_option("--model-type", train->model_type, "unigram or bpe")->capture_default_str();
  t->add_option("--max-sentence-length", train->max_sentence_length,
                "Longer lines (bytes) are left out of training")
      ->capture_default_str()
      ->check(int_in(1, 1 << 30));
  t->add_flag("--byte-fallback", train->byte_fallback,
              "Spell uncovered characters as byte pieces instead of <unk>");
  t->add_flag("--soft-vocab-limit", train->soft_vocab_limit,
              "Allow fewer pieces than --vocab-size when the sample is small");
  t->add_flag("--verbose", train->verbose, "Show SentencePiece's training log");
  t->callback([train] { run_train(*train); });

  auto codec = std::make_shared<TokenizerCodecArgs>();
  CLI::App* e = cmd->add_subcommand(
      "encode", "Print the ids (or pieces) of TEXT, or of every line of stdin when TEXT is absent");
  e->add_option("--model", codec->model, "Tokenizer model (.model)")->required();
  e->add_flag("--pieces", codec->pieces, "Print pieces instead of ids");
  e->add_option("text", codec->text, "Text to encode (words are joined with single spaces)");
  e->callback([codec] { run_encode(*codec); });

  CLI::App* d = cmd->add_subcommand("decode", "Print the text of a list of ids");
  d->add_option("--model", codec->model, "Tokenizer model (.model)")->required();
  d->add_option("ids", codec->ids, "Token ids")->required();
  d->callback([codec] { run_decode(*codec); });
}

}  // namespace xmoe::cli
