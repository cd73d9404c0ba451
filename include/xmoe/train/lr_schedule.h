// Learning-rate schedule of the pre-training (BERT/XLM style): linear warmup from 0, then
// linear decay to final_ratio · peak at the last step.
//
//   lr(s) = peak · s / W                                          for s < W   (s = 1, 2, …)
//   lr(s) = peak · (1 − (1 − r) · (s − W) / max(1, S − W))       for W ≤ s ≤ S
//
// s is the 1-based index of the optimizer step about to be taken, W the warmup steps, S the
// total steps, r = final_ratio. A pure function of the step: the scheduler's whole state is
// the step counter, which the checkpoint stores.
#pragma once

#include <cstdint>

namespace xmoe {

double learning_rate_at(int64_t step, double peak, int64_t warmup_steps, int64_t total_steps,
                        double final_ratio);

}  // namespace xmoe
