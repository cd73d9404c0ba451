// A text file tokenized once: the ids of every line, kept in memory as one flat array, and a
// binary cache file so that a second run skips the tokenization.
//
// Cache file (little-endian):
//   bytes 0-7    magic "XMOEIDS2"
//   u64          tokenizer fingerprint (FNV-1a of the .model bytes, Tokenizer::fingerprint())
//   u64          size of the text file in bytes
//   i64          modification time of the text file, nanoseconds since the epoch
//   u64          FNV-1a of the text file's bytes (copies keep size and mtime)
//   u64          n_lines, u64 n_ids
//   u64 × (n_lines + 1)   offsets (line i = ids[offsets[i] .. offsets[i+1]))
//   i32 × n_ids           ids
//   u64          FNV-1a of the offsets and ids bytes
// A cache whose key (fingerprint, size, mtime, text hash) differs from the current tokenizer
// and text file, or that is truncated or fails its checksum, is ignored and rewritten
// (atomically).
#pragma once

#include "xmoe/data/tokenizer.h"

#include <cstdint>
#include <string>
#include <vector>

namespace xmoe {

/// The ids of every line of a file (empty lines included, as empty ranges; no [CLS]/[SEP]).
struct EncodedLines {
  std::vector<int32_t> ids;      // [n_ids], every line's ids concatenated
  std::vector<int64_t> offsets;  // [n_lines + 1], offsets[0] = 0

  EncodedLines() : offsets{0} {}
  int64_t n_lines() const { return static_cast<int64_t>(offsets.size()) - 1; }
  int64_t line_length(int64_t i) const {
    return offsets[static_cast<size_t>(i) + 1] - offsets[static_cast<size_t>(i)];
  }
  /// Lines with at least one id: the n_l of multilingual sampling (xmoe/data/sampling.h).
  int64_t n_nonempty_lines() const;
  void append_line(const std::vector<int>& line_ids);
};

/// Tokenizes every line of `text_path` (in parallel over at::get_num_threads() threads; the
/// result does not depend on the thread count). Throws std::runtime_error naming the file.
EncodedLines encode_lines(const Tokenizer& tokenizer, const std::string& text_path);

/// encode_lines through the cache file `cache_path` (see above); `from_cache`, when given, says
/// whether a valid cache was used. A cache that cannot be written is only skipped.
EncodedLines encode_lines_cached(const Tokenizer& tokenizer, const std::string& text_path,
                                 const std::string& cache_path, bool* from_cache = nullptr);

}  // namespace xmoe
