#include "xmoe/kernels/cross_entropy.h"

#include "vec_math.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <cmath>
#include <limits>

namespace xmoe::kernels {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Independent partial results per lane let the reductions vectorise without -ffast-math.
constexpr int64_t kLanes = 16;

XMOE_VEC_INLINE float log_sum_exp_loop(const float* z, int64_t v) {
  float lane_max[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) lane_max[l] = -std::numeric_limits<float>::infinity();
  const int64_t body = v - v % kLanes;
  for (int64_t j = 0; j < body; j += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) lane_max[l] = z[j + l] > lane_max[l] ? z[j + l] : lane_max[l];
  }
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t l = 0; l < kLanes; ++l) m = lane_max[l] > m ? lane_max[l] : m;
  for (int64_t j = body; j < v; ++j) m = z[j] > m ? z[j] : m;
  float lane_sum[kLanes] = {};
  for (int64_t j = 0; j < body; j += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) lane_sum[l] += detail::exp_f32(z[j + l] - m);
  }
  double sum = 0;
  for (int64_t l = 0; l < kLanes; ++l) sum += lane_sum[l];
  for (int64_t j = body; j < v; ++j) sum += detail::exp_f32(z[j] - m);
  return m + static_cast<float>(std::log(sum));
}

XMOE_VEC_INLINE void softmax_minus_onehot_loop(const float* z, float lse, int64_t label, float scale,
                                               float* gz, int64_t v) {
  for (int64_t j = 0; j < v; ++j) gz[j] = scale * detail::exp_f32(z[j] - lse);
  gz[label] -= scale;
}

#if XMOE_X86_DISPATCH
XMOE_TARGET_AVX2_FMA float log_sum_exp_avx2(const float* z, int64_t v) { return log_sum_exp_loop(z, v); }
XMOE_TARGET_AVX2_FMA void softmax_minus_onehot_avx2(const float* z, float lse, int64_t label, float scale,
                                                    float* gz, int64_t v) {
  softmax_minus_onehot_loop(z, lse, label, scale, gz, v);
}
#endif

float log_sum_exp(const float* z, int64_t v) {
#if XMOE_X86_DISPATCH
  if (detail::cpu_has_avx2_fma()) return log_sum_exp_avx2(z, v);
#endif
  return log_sum_exp_loop(z, v);
}

void softmax_minus_onehot(const float* z, float lse, int64_t label, float scale, float* gz, int64_t v) {
#if XMOE_X86_DISPATCH
  if (detail::cpu_has_avx2_fma()) return softmax_minus_onehot_avx2(z, lse, label, scale, gz, v);
#endif
  softmax_minus_onehot_loop(z, lse, label, scale, gz, v);
}

double log_sum_exp(const double* z, int64_t v) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < v; ++j) m = std::max(m, z[j]);
  double sum = 0;
  for (int64_t j = 0; j < v; ++j) sum += std::exp(z[j] - m);
  return m + std::log(sum);
}

void softmax_minus_onehot(const double* z, double lse, int64_t label, double scale, double* gz, int64_t v) {
  for (int64_t j = 0; j < v; ++j) gz[j] = scale * std::exp(z[j] - lse);
  gz[label] -= scale;
}

struct CrossEntropy : torch::autograd::Function<CrossEntropy> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& labels) {
    const int64_t n = logits.size(0), v = logits.size(1);
    at::Tensor lse = at::empty({n}, logits.options());
    at::Tensor loss;
    const int64_t* y = labels.data_ptr<int64_t>();
    AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "xmoe::kernels::cross_entropy", [&] {
      const scalar_t* z = logits.data_ptr<scalar_t>();
      scalar_t* l = lse.data_ptr<scalar_t>();
      at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) l[i] = log_sum_exp(z + i * v, v);
      });
      double total = 0;  // Σ_i lse_i − z_{i, y_i}, summed in double for any N
      for (int64_t i = 0; i < n; ++i)
        total += static_cast<double>(l[i]) - static_cast<double>(z[i * v + y[i]]);
      loss =
          at::scalar_tensor(n == 0 ? std::numeric_limits<double>::quiet_NaN() : total / n, logits.options());
    });
    ctx->save_for_backward({logits, labels, lse});
    return loss;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &logits = saved[0], &labels = saved[1], &lse = saved[2];
    const int64_t n = logits.size(0), v = logits.size(1);
    at::Tensor gz = at::empty_like(logits);
    const int64_t* y = labels.data_ptr<int64_t>();
    AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "xmoe::kernels::cross_entropy backward", [&] {
      const auto scale = static_cast<scalar_t>(grads[0].item<double>() / static_cast<double>(n));
      const scalar_t* z = logits.data_ptr<scalar_t>();
      const scalar_t* l = lse.data_ptr<scalar_t>();
      scalar_t* g = gz.data_ptr<scalar_t>();
      at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
          softmax_minus_onehot(z + i * v, l[i], y[i], scale, g + i * v, v);
      });
    });
    return {gz, at::Tensor()};
  }
};

}  // namespace

at::Tensor cross_entropy(const at::Tensor& logits, const at::Tensor& labels) {
  TORCH_CHECK(logits.dim() == 2 && labels.dim() == 1 && labels.size(0) == logits.size(0),
              "xmoe::kernels::cross_entropy: logits must be [N, V] and labels [N], got logits ",
              logits.sizes(), ", labels ", labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong, "xmoe::kernels::cross_entropy: labels must be int64, got ",
              labels.scalar_type());
  const bool fast = logits.device().is_cpu() && labels.device().is_cpu() &&
                    (logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble);
  if (!fast) return at::cross_entropy_loss(logits, labels);
  at::Tensor y = labels.contiguous();
  const int64_t v = logits.size(1);
  const int64_t* yp = y.data_ptr<int64_t>();
  for (int64_t i = 0; i < y.numel(); ++i) {
    TORCH_CHECK(yp[i] >= 0 && yp[i] < v, "xmoe::kernels::cross_entropy: label ", yp[i], " at row ", i,
                " is outside the classes [0, ", v, ")");
  }
  return CrossEntropy::apply(logits.contiguous(), y);
}

}  // namespace xmoe::kernels
