#include "xmoe/analysis/representation_collapse.h"

#include <ATen/ATen.h>

#include <limits>

namespace xmoe::analysis {

CollapseResult representation_collapse(const at::Tensor& x_in, const at::Tensor& classes_in) {
  TORCH_CHECK(x_in.dim() == 2, "xmoe::analysis::representation_collapse: x must be [n, r], got ",
              x_in.sizes());
  TORCH_CHECK(classes_in.dim() == 1 && classes_in.size(0) == x_in.size(0),
              "xmoe::analysis::representation_collapse: classes must be [n = ", x_in.size(0),
              "], got ", classes_in.sizes());
  at::NoGradGuard no_grad;
  at::Tensor x = x_in.detach().to(at::kDouble).cpu();
  at::Tensor classes = classes_in.detach().to(at::kLong).cpu();
  CollapseResult result;
  result.n_tokens = x.size(0);
  if (result.n_tokens == 0) {
    result.rc = std::numeric_limits<double>::quiet_NaN();
    return result;
  }
  // Relabel the non-empty classes 0..K−1.
  auto uniq = at::_unique(classes, /*sorted=*/true, /*return_inverse=*/true);
  at::Tensor labels = std::get<1>(uniq);
  const int64_t n_classes = std::get<0>(uniq).size(0);
  result.n_classes = n_classes;
  const int64_t r = x.size(1);

  at::Tensor counts = at::bincount(labels, {}, n_classes).to(at::kDouble);             // [K]
  at::Tensor sums = at::zeros({n_classes, r}, x.options()).index_add_(0, labels, x);  // [K, r]
  at::Tensor means = sums / counts.unsqueeze(1);                                       // μ_k
  at::Tensor global = x.mean(0, /*keepdim=*/true);                                     // μ_G
  at::Tensor within = x - means.index_select(0, labels);
  at::Tensor sigma_w = at::matmul(within.t(), within) / static_cast<double>(result.n_tokens);
  at::Tensor between = means - global;
  at::Tensor sigma_b = at::matmul(between.t(), between) / static_cast<double>(n_classes);
  if (n_classes < 2) {
    result.rc = std::numeric_limits<double>::quiet_NaN();
    return result;
  }
  // Σ_B is symmetric positive semi-definite: its pseudo-inverse from the eigendecomposition.
  auto eig = at::linalg_eigh(sigma_b);
  at::Tensor values = std::get<0>(eig), vectors = std::get<1>(eig);
  const double largest = values.abs().max().item<double>();
  at::Tensor keep = values > kPinvRelativeTolerance * largest;
  at::Tensor inv = at::where(keep, 1.0 / values, at::zeros_like(values));
  at::Tensor pinv = at::matmul(vectors * inv.unsqueeze(0), vectors.t());
  result.rank_between = keep.sum().item<int64_t>();
  result.rc = at::trace(at::matmul(sigma_w, pinv)).item<double>() / static_cast<double>(n_classes);
  result.defined = result.rank_between > 0;
  if (!result.defined) result.rc = std::numeric_limits<double>::quiet_NaN();
  return result;
}

}  // namespace xmoe::analysis
