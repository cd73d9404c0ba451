#include "xmoe/train/fused_adamw.h"

#include "optimizer_state_key.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/nn/utils/clip_grad.h>

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

bool fusable(const at::Tensor& p, const torch::optim::AdamWOptions& o) {
  const at::Tensor& g = p.grad();
  return !o.amsgrad() && p.device().is_cpu() && p.scalar_type() == at::kFloat && p.is_contiguous() &&
         g.device().is_cpu() && g.scalar_type() == at::kFloat && g.is_contiguous() && !g.is_sparse();
}

}  // namespace

double clipped_adamw_step(torch::optim::AdamW& optimizer, double max_norm) {
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
    const double norm = torch::nn::utils::clip_grad_norm_(with_grad, max_norm);
    if (std::isfinite(norm)) optimizer.step();
    return norm;
  }
  // The global norm as clip_grad_norm_ forms it: the norm of the per-parameter norms.
  std::vector<at::Tensor> norms;
  norms.reserve(with_grad.size());
  for (const at::Tensor& p : with_grad) norms.push_back(p.grad().norm(2));
  const double total = norms.empty() ? 0.0 : at::stack(norms).norm(2).item<double>();
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
