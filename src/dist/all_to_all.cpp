#include "xmoe/dist/all_to_all.h"

#include <torch/autograd.h>

namespace xmoe {
namespace dist {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct ExchangeRows : torch::autograd::Function<ExchangeRows> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t group_id,
                            const std::vector<int64_t>& send_rows,
                            const std::vector<int64_t>& recv_rows) {
    // The group is looked up by id: an autograd node must not keep a process group alive.
    ctx->saved_data["group"] = group_id;
    ctx->saved_data["send_rows"] = send_rows;
    ctx->saved_data["recv_rows"] = recv_rows;
    return Communicator::by_id(group_id)->all_to_all(x, send_rows, recv_rows);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    auto group = Communicator::by_id(ctx->saved_data["group"].toInt());
    const std::vector<int64_t> send_rows = ctx->saved_data["send_rows"].toIntVector();
    const std::vector<int64_t> recv_rows = ctx->saved_data["recv_rows"].toIntVector();
    return {group->all_to_all(grad[0], recv_rows, send_rows), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

}  // namespace

at::Tensor exchange_rows(Communicator& group, const at::Tensor& x,
                         const std::vector<int64_t>& send_rows,
                         const std::vector<int64_t>& recv_rows) {
  return ExchangeRows::apply(x, group.id(), send_rows, recv_rows);
}

}  // namespace dist
}  // namespace xmoe
