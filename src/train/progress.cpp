#include "xmoe/train/progress.h"

#include <unistd.h>

#include <cmath>

namespace xmoe {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<long long>(std::llround(seconds));
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%lldh%02lldm", s / 3600, (s % 3600) / 60);
  else if (s >= 60) std::snprintf(buf, sizeof buf, "%lldm%02llds", s / 60, s % 60);
  else std::snprintf(buf, sizeof buf, "%llds", s);
  return buf;
}

ProgressLine::ProgressLine(int64_t total_steps, int64_t first_step, std::FILE* stream)
    : total_(total_steps), first_(first_step), stream_(stream),
      tty_(isatty(fileno(stream)) != 0), start_(std::chrono::steady_clock::now()) {}

void ProgressLine::update(int64_t step, double tokens_per_s, const std::string& text) {
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const int64_t done = step - first_;
  const double eta = done > 0 ? elapsed / static_cast<double>(done) * static_cast<double>(total_ - step) : NAN;
  const int width = 20;
  const int filled = total_ > 0 ? static_cast<int>(width * step / total_) : width;
  std::string bar(static_cast<size_t>(filled), '=');
  bar.resize(width, ' ');
  std::fprintf(stream_, "%sstep %lld/%lld [%s] %s | %.0f tok/s | %s elapsed, ETA %s%s",
               tty_ ? "\r\033[K" : "", static_cast<long long>(step),
               static_cast<long long>(total_), bar.c_str(), text.c_str(), tokens_per_s,
               format_duration(elapsed).c_str(), format_duration(eta).c_str(), tty_ ? "" : "\n");
  std::fflush(stream_);
}

void ProgressLine::finish() {
  if (tty_) std::fputc('\n', stream_);
  std::fflush(stream_);
}

}  // namespace xmoe
