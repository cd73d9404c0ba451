// The row exchange of expert parallelism as an autograd function.
#pragma once

#include "xmoe/dist/communicator.h"

#include <ATen/Tensor.h>

#include <cstdint>
#include <vector>

namespace xmoe {
namespace dist {

/// y = group.all_to_all(x, send_rows, recv_rows): x [Σ send_rows, d] → y [Σ recv_rows, d].
/// Backward is the same exchange in reverse: the gradient of every received row goes back to
/// the rank and row it came from (gx = all_to_all(gy, recv_rows, send_rows)). Every rank of
/// the group must run the backward too, in the same order as the forwards.
at::Tensor exchange_rows(Communicator& group, const at::Tensor& x,
                         const std::vector<int64_t>& send_rows,
                         const std::vector<int64_t>& recv_rows);

}  // namespace dist
}  // namespace xmoe
