#include "xmoe/kernels/linear.h"

#include "xmoe/kernels/gemm.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <algorithm>
#include <vector>

namespace xmoe::kernels {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename T>
void forward_kernel(const T* x, const T* w, const T* b, T* y, int64_t rows, int64_t in, int64_t out) {
  T beta = 0;
  if (b != nullptr) {
    at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) std::copy(b, b + out, y + r * out);
    });
    beta = 1;
  }
  gemm(false, true, rows, out, in, T(1), x, in, w, in, beta, y, out);
}

struct Linear : torch::autograd::Function<Linear> {
  // `bias` is an empty placeholder when has_bias is false (apply() cannot take undefined inputs).
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias, bool has_bias) {
    const int64_t in = weight.size(1), out = weight.size(0);
    at::Tensor x2 = x.reshape({-1, in});
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() = out;
    at::Tensor y = at::empty(shape, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "xmoe::kernels::linear", [&] {
      forward_kernel<scalar_t>(x2.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
                               has_bias ? bias.data_ptr<scalar_t>() : nullptr,
                               y.data_ptr<scalar_t>(), x2.size(0), in, out);
    });
    ctx->save_for_backward({x2, weight});
    ctx->saved_data["has_bias"] = has_bias;
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x2 = saved[0];
    const at::Tensor& weight = saved[1];
    const int64_t in = weight.size(1), out = weight.size(0), rows = x2.size(0);
    at::Tensor gy = grads[0].reshape({-1, out}).contiguous();
    at::Tensor gx, gw, gb;
    AT_DISPATCH_FLOATING_TYPES(gy.scalar_type(), "xmoe::kernels::linear backward", [&] {
      const scalar_t* g = gy.data_ptr<scalar_t>();
      if (ctx->needs_input_grad(0)) {
        gx = at::empty({rows, in}, gy.options());
        gemm(false, false, rows, in, out, scalar_t(1), g, out, weight.data_ptr<scalar_t>(), in,
             scalar_t(0), gx.data_ptr<scalar_t>(), in);
      }
      if (ctx->needs_input_grad(1)) {
        gw = at::empty({out, in}, gy.options());
        gemm(true, false, out, in, rows, scalar_t(1), g, out, x2.data_ptr<scalar_t>(), in,
             scalar_t(0), gw.data_ptr<scalar_t>(), in);
      }
    });
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) gb = gy.sum(0);
    if (gx.defined()) {
      std::vector<int64_t> shape(grads[0].sizes().begin(), grads[0].sizes().end());
      shape.back() = in;
      gx = gx.view(shape);
    }
    return {gx, gw, gb, at::Tensor()};
  }
};

}  // namespace

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  TORCH_CHECK(weight.dim() == 2 && x.dim() >= 1 && x.size(-1) == weight.size(1),
              "xmoe::kernels::linear: x [..., ", weight.dim() == 2 ? weight.size(1) : -1,
              "] and weight [out, in] do not match: x ", x.sizes(), ", weight ", weight.sizes());
  TORCH_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == weight.size(0)),
              "xmoe::kernels::linear: bias must be [", weight.size(0), "], got ", bias.sizes());
  const auto dtype = x.scalar_type();
  const bool fast = x.device().is_cpu() && weight.device().is_cpu() &&
                    (dtype == at::kFloat || dtype == at::kDouble) && weight.scalar_type() == dtype &&
                    (!bias.defined() || (bias.device().is_cpu() && bias.scalar_type() == dtype));
  if (!fast) return at::linear(x, weight, bias);
  return Linear::apply(x.contiguous(), weight.contiguous(),
                       bias.defined() ? bias.contiguous() : at::empty({0}, x.options()), bias.defined());
}

}  // namespace xmoe::kernels
