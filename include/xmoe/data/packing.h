// Packing the encoded lines of one language into training sequences (RoBERTa's
// FULL-SENTENCES format, Liu et al. 2019 §4.2, with BERT's [CLS]/[SEP] tokens):
//
//   sequence = [CLS] line_a [SEP] line_b [SEP] … line_k [SEP],   length <= max_len
//
// Consecutive non-empty lines are added greedily while the sequence stays within max_len. A line
// that does not fit in the rest of a started sequence either starts the next one
// (LinePacking::kWhole: lines stay whole where they can, sequences often end early) or fills the
// rest, closed by [SEP], and continues in the next sequence (LinePacking::kFill: every sequence
// but a language's last is max_len or max_len − 1 long, so batches carry almost no padding). A
// line longer than max_len − 2 tokens is cut into pieces of max_len − 2 tokens (the last one
// shorter), each in a sequence of its own and closed by [SEP]. Empty lines are skipped. Every
// sequence thus starts with [CLS], ends with [SEP], has at least one regular token and holds no
// padding; every token of every non-empty line appears exactly once, in order.
#pragma once

#include "xmoe/data/token_cache.h"

#include <cstdint>
#include <string>
#include <vector>

namespace xmoe {

/// Where a line that does not fit in the rest of a started sequence goes (header comment).
enum class LinePacking { kWhole, kFill };

/// "whole" | "fill"; throws std::invalid_argument listing both.
LinePacking parse_line_packing(const std::string& name);

struct PackedSequences {
  std::vector<int32_t> ids;      // every sequence's ids concatenated
  std::vector<int64_t> offsets;  // [n_sequences + 1], offsets[0] = 0

  PackedSequences() : offsets{0} {}
  int64_t size() const { return static_cast<int64_t>(offsets.size()) - 1; }
  int64_t length(int64_t i) const {
    return offsets[static_cast<size_t>(i) + 1] - offsets[static_cast<size_t>(i)];
  }
  const int32_t* data(int64_t i) const { return ids.data() + offsets[static_cast<size_t>(i)]; }
  /// Σ lengths (specials included).
  int64_t n_tokens() const { return static_cast<int64_t>(ids.size()); }
};

/// Packs `lines` as above. Throws std::invalid_argument when max_len < 3.
PackedSequences pack_lines(const EncodedLines& lines, int64_t max_len, int32_t cls_id,
                           int32_t sep_id, LinePacking packing = LinePacking::kWhole);

}  // namespace xmoe
