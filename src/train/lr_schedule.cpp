#include "xmoe/train/lr_schedule.h"

#include <algorithm>

namespace xmoe {

double learning_rate_at(int64_t step, double peak, int64_t warmup_steps, int64_t total_steps,
                        double final_ratio) {
  if (step < warmup_steps) return peak * static_cast<double>(step) / warmup_steps;
  const double decay_steps = static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps));
  const double progress = std::min(1.0, static_cast<double>(step - warmup_steps) / decay_steps);
  return peak * (1.0 - (1.0 - final_ratio) * progress);
}

}  // namespace xmoe
