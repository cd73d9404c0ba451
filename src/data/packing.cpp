#include "xmoe/data/packing.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace xmoe {

LinePacking parse_line_packing(const std::string& name) {
  if (name == "whole") return LinePacking::kWhole;
  if (name == "fill") return LinePacking::kFill;
  throw std::invalid_argument("unknown line packing '" + name + "' (known: whole, fill)");
}

PackedSequences pack_lines(const EncodedLines& lines, int64_t max_len, int32_t cls_id,
                           int32_t sep_id, LinePacking packing) {
  if (max_len < 3) {
    throw std::invalid_argument("xmoe::pack_lines: max_len = " + std::to_string(max_len) +
                                " must be >= 3 ([CLS], one token, [SEP])");
  }
  PackedSequences out;
  out.ids.reserve(lines.ids.size() + 2 * static_cast<size_t>(lines.n_lines()) + 1);
  int64_t current = 0;  // length of the open sequence (0 = none open)

  auto close = [&] {
    if (current > 0) out.offsets.push_back(static_cast<int64_t>(out.ids.size()));
    current = 0;
  };
  auto open = [&] {
    out.ids.push_back(cls_id);
    current = 1;
  };

  for (int64_t i = 0; i < lines.n_lines(); ++i) {
    const int64_t n = lines.line_length(i);
    if (n == 0) continue;
    const int32_t* line = lines.ids.data() + lines.offsets[static_cast<size_t>(i)];
    // Does not fit the rest: kWhole starts the next sequence, kFill splits the line below.
    if (packing == LinePacking::kWhole && current > 0 && current + n + 1 > max_len) close();
    int64_t pos = 0;
    while (pos < n) {
      if (current == 0) open();
      const int64_t take = std::min(n - pos, max_len - current - 1);
      out.ids.insert(out.ids.end(), line + pos, line + pos + take);
      out.ids.push_back(sep_id);
      current += take + 1;
      pos += take;
      if (pos < n) close();  // the line continues in the next sequence
    }
    if (current + 2 > max_len) close();  // no room for another token and its [SEP]
  }
  close();
  return out;
}

}  // namespace xmoe
