// Upper bounds on model sizes, checked when options are validated: a typo (d_ff = 1e9,
// expert_depth = 1e11) must fail at once naming the keys, not hang building modules or die in
// the allocator or the OOM killer.
#pragma once

#include <sstream>
#include <string>

namespace xmoe {

/// 2^34 weights: 64 GiB of float32, more than any one machine here holds with AdamW's moments.
inline constexpr double kMaxParameters = 17179869184.0;

/// "<formula> = N parameters, more than the limit of 2^34 (64 GiB of float32 weights)".
inline std::string too_many_parameters(const std::string& formula, double parameters) {
  std::ostringstream s;
  s.precision(3);
  s << formula << " = " << parameters
    << " parameters, more than the limit of 2^34 (64 GiB of float32 weights)";
  return s.str();
}

}  // namespace xmoe
