// A one-line progress display for long loops: step, loss, tokens/s, elapsed and ETA.
// On a terminal the line is redrawn in place; otherwise (logs, CI) it prints one plain line
// per update, so updates should be sparse there.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace xmoe {

class ProgressLine {
 public:
  ProgressLine(int64_t total_steps, int64_t first_step, std::FILE* stream = stderr);

  /// `step` of total done; `text` is appended (e.g. "loss 6.52").
  void update(int64_t step, double tokens_per_s, const std::string& text);
  /// Ends the line on a terminal.
  void finish();

 private:
  int64_t total_, first_;
  std::FILE* stream_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
};

/// "1h02m", "4m12s", "35s".
std::string format_duration(double seconds);

}  // namespace xmoe
