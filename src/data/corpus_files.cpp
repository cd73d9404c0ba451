#include "xmoe/data/corpus_files.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <system_error>

namespace xmoe {

namespace fs = std::filesystem;

std::string corpus_file(const std::string& corpus_dir, const std::string& split,
                        const std::string& language) {
  return (fs::path(corpus_dir) / split / (language + ".txt")).string();
}

std::vector<std::string> list_corpus_languages(const std::string& corpus_dir,
                                               const std::string& split) {
  const fs::path dir = fs::path(corpus_dir) / split;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    throw std::runtime_error(dir.string() + ": no such corpus split directory (expected " +
                             "<corpus>/<split>/<lang>.txt)");
  }
  std::vector<std::string> languages;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.path().extension() != ".txt") continue;
    // A <lang>.txt that is a dangling link or a folder would drop the language without a word.
    std::error_code status_ec;
    if (!entry.is_regular_file(status_ec))
      throw std::runtime_error(entry.path().string() + ": not a readable corpus file (a dangling " +
                               "link or a folder?)");
    languages.push_back(entry.path().stem().string());
  }
  if (ec) throw std::runtime_error(dir.string() + ": cannot list directory: " + ec.message());
  if (languages.empty()) {
    throw std::runtime_error(dir.string() + ": no <lang>.txt files in the corpus split");
  }
  std::sort(languages.begin(), languages.end());
  return languages;
}

void for_each_line(const std::string& path,
                   const std::function<void(int64_t, const std::string&)>& visit) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open corpus file");
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    // SentencePiece needs ~200 bytes of memory per byte of a line: one 20 MB line took 4.8 GB.
    if (line.size() > kMaxLineBytes)
      throw std::runtime_error(path + ": line " + std::to_string(n + 1) + " is " +
                               std::to_string(line.size()) + " bytes; a corpus line (one " +
                               "paragraph) is at most 1 MiB");
    visit(n++, line);
  }
  if (in.bad()) throw std::runtime_error(path + ": error reading corpus file");
}

}  // namespace xmoe
