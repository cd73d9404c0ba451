// Output files must not replace an input of the same command: the output is written atomically
// over its path, so `--out` naming an input would silently destroy it.
#pragma once

#include <filesystem>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <utility>

namespace xmoe::cli {

/// Throws std::invalid_argument when `out` is the same file as one of `inputs`
/// ({option, path}; empty paths are skipped).
inline void refuse_output_over_input(
    const std::string& out, std::initializer_list<std::pair<const char*, std::string>> inputs) {
  namespace fs = std::filesystem;
  for (const auto& [option, path] : inputs) {
    if (path.empty()) continue;
    std::error_code ec;  // false when either is missing: a new file replaces no input
    if (fs::equivalent(out, path, ec))
      throw std::invalid_argument("--out " + out + " is the " + option +
                                  " file: writing it would replace the input; choose another path");
  }
}

}  // namespace xmoe::cli
