// Learning-rate schedule of the pre-training (BERT/XLM style): linear warmup, then linear
// decay towards final_ratio · peak. With i = optimizer steps already taken (0-based index of
// the step about to be taken), W warmup steps and S total steps:
//
//   lr(i) = peak · (i + 1) / W                                   for i < W
//   lr(i) = peak · (r + (1 − r) · (S − i) / (S − W))            for W ≤ i < S
//
// so the first step already has a positive rate, the peak is reached at i = W, and the rate
// would reach r · peak at i = S (one past the last step). A pure function of the step: the
// scheduler's whole state is the step counter, which the checkpoint stores.
#pragma once

#include <cstdint>

namespace xmoe {

double learning_rate_at(int64_t steps_done, double peak, int64_t warmup_steps,
                        int64_t total_steps, double final_ratio);

}  // namespace xmoe
