#include "xmoe/train/metrics_log.h"

#include "xmoe/util/atomic_file.h"

#include <sstream>
#include <stdexcept>

namespace xmoe {

MetricsLog::MetricsLog(const std::string& path, int64_t keep_through_step) : path_(path) {
  std::ostringstream kept;
  if (keep_through_step >= 0) {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      const auto record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      // A torn last line (crash mid-write), or any line that is not a record, is dropped too.
      if (record.is_object() && record.contains("step") && record["step"].is_number_integer() &&
          record["step"].get<int64_t>() <= keep_through_step)
        kept << line << '\n';
    }
  }
  write_file_atomically(path, [&](std::ostream& out) { out << kept.str(); });
  out_.open(path, std::ios::app);
  if (!out_) throw std::runtime_error(path + ": cannot open the metrics file for writing");
}

void MetricsLog::write(const nlohmann::json& record) {
  // NaN is not JSON: nlohmann writes null for it, which readers treat as "undefined".
  out_ << record.dump() << '\n';
  out_.flush();
  if (!out_) throw std::runtime_error(path_ + ": cannot write the metrics file");
}

}  // namespace xmoe
