#include "xmoe/train/fused_adamw.h"

#include "optimizer_state_key.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/nn/utils/clip_grad.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

namespace xmoe {

namespace {

struct Coefficients {
  float grad_scale;   // c
  float decay;        // 1 − lr·λ
  float beta1, one_minus_beta1, beta2, one_minus_beta2;
  float sqrt_bias_correction2;  // √(1 − β₂ᵗ)
  float eps;
  float step_size;    // lr / (1 − β₁ᵗ)
};

// The element-wise update, built for AVX2 and for the baseline ISA (picked at load time). This
// file is compiled with -fno-math-errno (CMakeLists.txt): otherwise sqrt keeps the loop scalar.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, Coefficients k) {
  for (int64_t i = 0; i < n; ++i) {
    const float grad = g[i] * k.grad_scale;
    const float mi = m[i] * k.beta1 + k.one_minus_beta1 * grad;
    const float vi = v[i] * k.beta2 + k.one_minus_beta2 * grad * grad;
    const float denom = std::sqrt(vi) / k.sqrt_bias_correction2 + k.eps;
    p[i] = p[i] * k.decay - k.step_size * (mi / denom);
    m[i] = mi;
    v[i] = vi;
  }
}

// Σ x² in float64 with independent lanes, so the loop vectorises without reassociating a sum.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
double sum_of_squares(const float* x, int64_t n) {
  constexpr int64_t kLanes = 8;
  double lanes[kLanes] = {};
  const int64_t body = n - n % kLanes;
  for (int64_t i = 0; i < body; i += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += static_cast<double>(x[i + l]) * x[i + l];
  double sum = 0;
  for (int64_t l = 0; l < kLanes; ++l) sum += lanes[l];
  for (int64_t i = body; i < n; ++i) sum += static_cast<double>(x[i]) * x[i];
  return sum;
}

// ‖g‖₂ over every gradient in one parallel pass instead of one ATen norm per parameter and a
// norm of their stack: fixed chunks of at most 2¹⁵ elements, each summed in float64, added in
// chunk order (the same result for any thread count). Non-finite gradients give a non-finite norm.
double float_squared_norm(const std::vector<at::Tensor>& params) {
  constexpr int64_t kChunk = int64_t{1} << 15;
  struct Chunk { const float* data; int64_t n; };
  std::vector<Chunk> chunks;
  for (const at::Tensor& p : params) {
    const float* g = p.grad().data_ptr<float>();
    for (int64_t begin = 0; begin < p.numel(); begin += kChunk)
      chunks.push_back({g + begin, std::min(kChunk, p.numel() - begin)});
  }
  std::vector<double> sums(chunks.size(), 0.0);
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) sums[c] = sum_of_squares(chunks[c].data, chunks[c].n);
  });
  double total = 0;
  for (double s : sums) total += s;
  return total;
}

bool fusable(const at::Tensor& p, const torch::optim::AdamWOptions& o) {
  const at::Tensor& g = p.grad();
  return !o.amsgrad() && p.device().is_cpu() && p.scalar_type() == at::kFloat && p.is_contiguous() &&
         g.device().is_cpu() && g.scalar_type() == at::kFloat && g.is_contiguous() && !g.is_sparse();
}

}  // namespace

double squared_gradient_norm(const std::vector<at::Tensor>& params) {
  std::vector<at::Tensor> plain;
  double other = 0;
  for (const at::Tensor& p : params) {
    const at::Tensor& g = p.grad();
    TORCH_CHECK(g.defined(), "xmoe::squared_gradient_norm: a parameter has no gradient");
    if (g.device().is_cpu() && g.scalar_type() == at::kFloat && g.is_contiguous() && !g.is_sparse())
      plain.push_back(p);
    else
      other += g.to(at::kDouble).pow(2).sum().item<double>();
  }
  return float_squared_norm(plain) + other;
}

double clipped_adamw_step(torch::optim::AdamW& optimizer, double max_norm,
                          const GradientNorm& total_norm) {
  at::NoGradGuard no_grad;
  using Map = std::decay_t<decltype(optimizer.state())>;
  std::vector<at::Tensor> with_grad;
  bool all_fusable = true;
  for (auto& group : optimizer.param_groups()) {
    const auto& o = static_cast<const torch::optim::AdamWOptions&>(group.options());
    for (const at::Tensor& p : group.params()) {
      if (!p.grad().defined()) continue;
      with_grad.push_back(p);
      all_fusable = all_fusable && fusable(p, o);
    }
  }
  if (!all_fusable) {  // torch's own ops, in torch's order
    if (!total_norm) {
      const double norm = torch::nn::utils::clip_grad_norm_(with_grad, max_norm);
      if (std::isfinite(norm)) optimizer.step();
      return norm;
    }
    const double norm = total_norm(with_grad);
    if (!std::isfinite(norm)) return norm;
    const double clip = max_norm / (norm + 1e-6);
    if (clip < 1.0)
      for (const at::Tensor& p : with_grad) p.grad().mul_(clip);
    optimizer.step();
    return norm;
  }
  // The global norm clip_grad_norm_ forms (the norm of the per-parameter norms), in float64.
  const double total =
      total_norm ? total_norm(with_grad) : std::sqrt(float_squared_norm(with_grad));
  if (!std::isfinite(total)) return total;  // nothing is updated: the caller reports it
  const double clip = max_norm / (total + 1e-6);
  const float grad_scale = clip < 1.0 ? static_cast<float>(clip) : 1.f;

  for (auto& group : optimizer.param_groups()) {
    const auto& o = static_cast<const torch::optim::AdamWOptions&>(group.options());
    const double beta1 = std::get<0>(o.betas()), beta2 = std::get<1>(o.betas());
    for (const at::Tensor& p : group.params()) {
      if (!p.grad().defined()) continue;
      auto& slot = optimizer.state()[optimizer_state_key<Map>(p)];
      if (!slot) {
        auto fresh = std::make_unique<torch::optim::AdamWParamState>();
        fresh->step(0);
        fresh->exp_avg(at::zeros_like(p));
        fresh->exp_avg_sq(at::zeros_like(p));
        slot = std::move(fresh);
      }
      auto& s = static_cast<torch::optim::AdamWParamState&>(*slot);
      if (!s.exp_avg().is_contiguous()) s.exp_avg(s.exp_avg().contiguous());
      if (!s.exp_avg_sq().is_contiguous()) s.exp_avg_sq(s.exp_avg_sq().contiguous());
      s.step(s.step() + 1);
      const double t = static_cast<double>(s.step());
      Coefficients k{};
      k.grad_scale = grad_scale;
      k.decay = static_cast<float>(1.0 - o.lr() * o.weight_decay());
      k.beta1 = static_cast<float>(beta1);
      k.one_minus_beta1 = static_cast<float>(1.0 - beta1);
      k.beta2 = static_cast<float>(beta2);
      k.one_minus_beta2 = static_cast<float>(1.0 - beta2);
      k.sqrt_bias_correction2 = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, t)));
      k.eps = static_cast<float>(o.eps());
      k.step_size = static_cast<float>(o.lr() / (1.0 - std::pow(beta1, t)));
      float* pp = p.data_ptr<float>();
      const float* gp = p.grad().data_ptr<float>();
      float* mp = s.exp_avg().data_ptr<float>();
      float* vp = s.exp_avg_sq().data_ptr<float>();
      at::parallel_for(0, p.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
        adamw_update(pp + begin, gp + begin, mp + begin, vp + begin, end - begin, k);
      });
    }
  }
  return total;
}

}  // namespace xmoe
