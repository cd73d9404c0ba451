#include "xmoe/kernels/grouped_ffn.h"

#include "xmoe/kernels/gelu.h"
#include "xmoe/kernels/gemm.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

namespace xmoe::kernels {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Broadcasts bias[e] into every row of out[row0 : row0 + n] (the GEMM then accumulates).
void fill_rows_with_bias(float* out, const float* bias, int64_t n, int64_t width) {
  for (int64_t r = 0; r < n; ++r) std::copy(bias, bias + width, out + r * width);
}

// h = act(a) and g = act'(a): backward then needs one multiply, ∂a = ∂h ⊙ g, and a itself can
// be dropped after forward (the saved activation memory stays two [N, d_ff] buffers).
void activation_with_derivative(const at::Tensor& a, at::Tensor& h, at::Tensor& g, Activation act) {
  if (act == Activation::kGelu) {
    xmoe::kernels::gelu_with_derivative_out(a, h, g);
  } else {
    at::clamp_min_out(h, a, 0);
    at::gt_out(g, a, 0);  // 1 where a > 0, else 0, written as float
  }
}

struct GroupedFFN : torch::autograd::Function<GroupedFFN> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& xs, const at::Tensor& w1,
                            const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                            const std::vector<int64_t>& offsets, int64_t activation) {
    const int64_t n = xs.size(0), d = xs.size(1), f = w1.size(1);
    const Activation act = static_cast<Activation>(activation);
    at::Tensor h = at::empty({n, f}, xs.options());
    at::Tensor slope = at::empty({n, f}, xs.options());
    at::Tensor ys = at::empty({n, d}, xs.options());
    const float* x = xs.data_ptr<float>();
    const float* w1p = w1.data_ptr<float>();
    const float* b1p = b1.data_ptr<float>();
    const float* w2p = w2.data_ptr<float>();
    const float* b2p = b2.data_ptr<float>();
    float* yp = ys.data_ptr<float>();
    for_each_expert_block(offsets, [&](int64_t e, int64_t row0, int64_t rows) {
      at::Tensor ae = at::empty({rows, f}, xs.options());  // pre-activation, this block only
      fill_rows_with_bias(ae.data_ptr<float>(), b1p + e * f, rows, f);
      sgemm(false, true, rows, f, d, 1.f, x + row0 * d, d, w1p + e * f * d, d, 1.f,
            ae.data_ptr<float>(), f);
      at::Tensor he = h.narrow(0, row0, rows);
      at::Tensor ge = slope.narrow(0, row0, rows);
      activation_with_derivative(ae, he, ge, act);
      float* ye = yp + row0 * d;
      fill_rows_with_bias(ye, b2p + e * d, rows, d);
      sgemm(false, true, rows, d, f, 1.f, he.data_ptr<float>(), f, w2p + e * d * f, f, 1.f, ye, d);
    });
    ctx->save_for_backward({xs, w1, w2, slope, h});
    ctx->saved_data["offsets"] = offsets;
    return ys;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& xs = saved[0];
    const at::Tensor& w1 = saved[1];
    const at::Tensor& w2 = saved[2];
    const at::Tensor& slope = saved[3];
    const at::Tensor& h = saved[4];
    const std::vector<int64_t> offsets = ctx->saved_data["offsets"].toIntVector();
    at::Tensor gys = grads[0].contiguous();
    const int64_t n_expert = w1.size(0), f = w1.size(1), d = w1.size(2);

    // Every expert with rows overwrites its whole gradient slice (GEMM β = 0); only experts
    // without rows are zeroed, which saves a full memset of [E, d_ff, d] twice over.
    at::Tensor gw1 = at::empty_like(w1), gb1 = at::empty({n_expert, f}, w1.options());
    at::Tensor gw2 = at::empty_like(w2), gb2 = at::empty({n_expert, d}, w2.options());
    for (int64_t e = 0; e < n_expert; ++e) {
      if (offsets[e + 1] > offsets[e]) continue;
      gw1[e].zero_();
      gb1[e].zero_();
      gw2[e].zero_();
      gb2[e].zero_();
    }
    at::Tensor gxs = at::empty_like(xs);
    at::Tensor gh = at::empty_like(h);
    const float* x = xs.data_ptr<float>();
    const float* w1p = w1.data_ptr<float>();
    const float* w2p = w2.data_ptr<float>();
    const float* hp = h.data_ptr<float>();
    const float* gyp = gys.data_ptr<float>();
    float* gw1p = gw1.data_ptr<float>();
    float* gw2p = gw2.data_ptr<float>();
    float* ghp = gh.data_ptr<float>();
    float* gxp = gxs.data_ptr<float>();

    for_each_expert_block(offsets, [&](int64_t e, int64_t row0, int64_t rows) {
      const float* gy_e = gyp + row0 * d;
      gb2[e].copy_(gys.narrow(0, row0, rows).sum(0));
      // gw2[e] [d, f] = gysᵀ · h
      sgemm(true, false, d, f, rows, 1.f, gy_e, d, hp + row0 * f, f, 0.f, gw2p + e * d * f, f);
      // gh [rows, f] = gys · w2[e]
      float* gh_e = ghp + row0 * f;
      sgemm(false, false, rows, f, d, 1.f, gy_e, d, w2p + e * d * f, f, 0.f, gh_e, f);
      // ga = gh ⊙ act'(a), in place of gh
      at::Tensor ga = gh.narrow(0, row0, rows).mul_(slope.narrow(0, row0, rows));
      gb1[e].copy_(ga.sum(0));
      const float* ga_p = gh_e;
      // gw1[e] [f, d] = gaᵀ · xs
      sgemm(true, false, f, d, rows, 1.f, ga_p, f, x + row0 * d, d, 0.f, gw1p + e * f * d, d);
      // gxs [rows, d] = ga · w1[e]
      sgemm(false, false, rows, d, f, 1.f, ga_p, f, w1p + e * f * d, d, 0.f, gxp + row0 * d, d);
    });
    return {gxs, gw1, gb1, gw2, gb2, at::Tensor(), at::Tensor()};
  }
};

void check_operand(const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat,
              "xmoe::kernels::grouped_ffn: ", name, " must be float32 on the CPU, got ",
              t.scalar_type(), " on ", t.device());
  TORCH_CHECK(t.sizes() == shape, "xmoe::kernels::grouped_ffn: ", name, " must be ", shape,
              ", got ", t.sizes());
}

}  // namespace

at::Tensor grouped_ffn(const at::Tensor& xs, const at::Tensor& w1, const at::Tensor& b1,
                       const at::Tensor& w2, const at::Tensor& b2,
                       const std::vector<int64_t>& offsets, Activation activation) {
  TORCH_CHECK(xs.dim() == 2 && w1.dim() == 3, "xmoe::kernels::grouped_ffn: xs must be [N, d], w1 [E, d_ff, d]");
  const int64_t n = xs.size(0), d = xs.size(1), e = w1.size(0), f = w1.size(1);
  check_operand(xs, "xs", {n, d});
  check_operand(w1, "w1", {e, f, d});
  check_operand(b1, "b1", {e, f});
  check_operand(w2, "w2", {e, d, f});
  check_operand(b2, "b2", {e, d});
  TORCH_CHECK(static_cast<int64_t>(offsets.size()) == e + 1 && offsets.front() == 0 &&
                  offsets.back() == n,
              "xmoe::kernels::grouped_ffn: offsets must have E + 1 = ", e + 1,
              " entries from 0 to N = ", n);
  return GroupedFFN::apply(xs.contiguous(), w1.contiguous(), b1.contiguous(), w2.contiguous(),
                           b2.contiguous(), offsets, static_cast<int64_t>(activation));
}

}  // namespace xmoe::kernels
