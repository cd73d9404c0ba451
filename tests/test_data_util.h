// A small generated multilingual corpus for the data tests: sentences drawn from fixed word
// lists (English, German, Russian, Chinese) by a fixed-seed generator, written in the corpus
// builder's layout <corpus>/<split>/<lang>.txt, and a tiny tokenizer trained on it.
#pragma once

#include "test_util.h"
#include "xmoe/data/tokenizer_trainer.h"

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace xmoe_test {

inline const std::map<std::string, std::vector<std::string>>& corpus_words() {
  static const std::map<std::string, std::vector<std::string>> words = {
      {"en", {"the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "house",
              "river", "green", "small", "big", "water", "tree", "under", "over", "bright",
              "morning", "evening", "people", "walked", "slowly", "city", "with", "friends"}},
      {"de", {"der", "die", "das", "Katze", "Hund", "läuft", "über", "große", "Brücke",
              "schön", "Stadt", "Wasser", "Baum", "grün", "klein", "und", "mit", "Straße",
              "heute", "Morgen", "Abend", "Leute", "gehen", "langsam", "Fluss", "Freunde"}},
      {"ru", {"кошка", "сидит", "на", "коврике", "и", "собака", "бежит", "к", "дому",
              "река", "зелёный", "маленький", "большой", "вода", "дерево", "под", "над",
              "утро", "вечер", "люди", "идут", "медленно", "город", "с", "друзьями"}},
      {"zh", {"我们", "你们", "城市", "河流", "小猫", "大狗", "早上", "晚上", "朋友", "走路",
              "绿色", "房子", "树木", "喝水", "慢慢"}},
  };
  return words;
}

/// A deterministic sentence of `lang` (words joined by spaces, or without for zh, then ".").
inline std::string make_sentence(const std::string& lang, uint64_t* state) {
  auto next = [state] {
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return *state >> 33;
  };
  const auto& words = corpus_words().at(lang);
  const uint64_t n = 4 + next() % 8;
  std::string s;
  for (uint64_t i = 0; i < n; ++i) {
    if (i > 0 && lang != "zh") s += " ";
    s += words[next() % words.size()];
  }
  return s + (lang == "zh" ? "。" : ".");
}

/// Lines of 1-3 sentences each.
inline std::vector<std::string> make_lines(const std::string& lang, int64_t n, uint64_t seed) {
  uint64_t state = seed * 0x9E3779B97F4A7C15ULL + 1;
  std::vector<std::string> lines;
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t k = 1 + (state >> 40) % 3;
    std::string line;
    for (uint64_t j = 0; j < k; ++j) {
      line += (j > 0 && lang != "zh" ? " " : "") + make_sentence(lang, &state);
    }
    lines.push_back(line);
  }
  return lines;
}

/// Writes <dir>/<split>/<lang>.txt with `counts[lang]` generated lines each.
inline void write_corpus(const std::string& dir, const std::string& split,
                         const std::map<std::string, int64_t>& counts, uint64_t seed) {
  std::filesystem::create_directories(dir + "/" + split);
  for (const auto& item : counts) {
    std::string text;
    for (const auto& line : make_lines(item.first, item.second, seed + item.first.size() * 7919 +
                                                                    static_cast<uint64_t>(item.first[0]))) {
      text += line + "\n";
    }
    write_file(dir + "/" + split + "/" + item.first + ".txt", text);
  }
}

/// The options of the tiny test tokenizer (vocabulary 200).
inline xmoe::TokenizerTrainOptions tiny_tokenizer_options() {
  return xmoe::TokenizerTrainOptions().vocab_size(200).seed(1).threads(1);
}

}  // namespace xmoe_test
