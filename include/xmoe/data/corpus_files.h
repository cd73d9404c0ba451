// The on-disk layout of a text corpus, as the corpus builder writes it:
//
//   <corpus>/<split>/<lang>.txt     split ∈ {train, valid, test}; one paragraph per line, UTF-8
//
// Readers of that layout: which languages a split has, the file of one language, and a
// line-by-line scan (a trailing '\r' is dropped; empty lines are passed on, callers skip them).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace xmoe {

/// "<corpus>/<split>/<lang>.txt".
std::string corpus_file(const std::string& corpus_dir, const std::string& split,
                        const std::string& language);

/// The languages of a split: the stems of the "*.txt" files in <corpus>/<split>, sorted by
/// name. Throws std::runtime_error naming the directory when it does not exist or holds no .txt
/// file, and naming the entry when a "*.txt" is not a regular file (a dangling link, a folder).
std::vector<std::string> list_corpus_languages(const std::string& corpus_dir,
                                               const std::string& split);

/// The longest corpus line (one paragraph), in bytes.
inline constexpr size_t kMaxLineBytes = size_t{1} << 20;

/// Calls `visit(line_number, line)` (0-based) for every line of `path`, in order (a trailing
/// '\r' removed). Throws std::runtime_error naming the file when it cannot be opened or read,
/// and the file and line for a line longer than kMaxLineBytes.
void for_each_line(const std::string& path,
                   const std::function<void(int64_t, const std::string&)>& visit);

}  // namespace xmoe
