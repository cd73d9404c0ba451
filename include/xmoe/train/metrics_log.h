// metrics.jsonl of a run (docs/run-directory.md): one JSON object per line, flushed per line so
// a crash loses at most the line being written.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <fstream>
#include <string>

namespace xmoe {

class MetricsLog {
 public:
  /// Opens `path` for appending. With `keep_through_step` >= 0 (a resumed run), lines of later
  /// steps — written after the checkpoint the run resumes from — are dropped first (atomically),
  /// so the file reads as one uninterrupted run; with a negative value (a fresh run) the file
  /// starts empty, whatever a failed earlier run left in it.
  explicit MetricsLog(const std::string& path, int64_t keep_through_step = -1);

  void write(const nlohmann::json& record);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::ofstream out_;
};

}  // namespace xmoe
