#include "xmoe/train/lr_schedule.h"

#include <algorithm>

namespace xmoe {

double learning_rate_at(int64_t steps_done, double peak, int64_t warmup_steps,
                        int64_t total_steps, double final_ratio) {
  const auto i = static_cast<double>(steps_done);
  if (steps_done < warmup_steps) return peak * (i + 1.0) / static_cast<double>(warmup_steps);
  const double span = static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps));
  const double left = std::max(0.0, static_cast<double>(total_steps) - i) / span;
  return peak * (final_ratio + (1.0 - final_ratio) * left);
}

}  // namespace xmoe
