#include "xmoe/analysis/routing_consistency.h"

#include <ATen/ATen.h>

#include <cmath>

namespace xmoe::analysis {

namespace {
void check_assignments(const at::Tensor& a, const at::Tensor& b, const char* fn) {
  TORCH_CHECK(a.dim() == 1 && a.sizes() == b.sizes(), "xmoe::analysis::", fn,
              ": expects two [n] assignments of equal length, got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a.numel() > 0, "xmoe::analysis::", fn, ": needs at least one token");
}
}  // namespace

double routing_fluctuation(const at::Tensor& before, const at::Tensor& after) {
  check_assignments(before, after, "routing_fluctuation");
  return before.ne(after).to(at::kDouble).mean().item<double>();
}

double token_agreement(const at::Tensor& a, const at::Tensor& b) {
  check_assignments(a, b, "token_agreement");
  return a.eq(b).to(at::kDouble).mean().item<double>();
}

double pearson(const at::Tensor& a_in, const at::Tensor& b_in) {
  TORCH_CHECK(a_in.dim() == 1 && a_in.sizes() == b_in.sizes(),
              "xmoe::analysis::pearson: expects two vectors of equal length");
  at::Tensor a = a_in.to(at::kDouble), b = b_in.to(at::kDouble);
  at::Tensor da = a - a.mean(), db = b - b.mean();
  const double denom = std::sqrt(da.pow(2).sum().item<double>() * db.pow(2).sum().item<double>());
  if (denom == 0.0) return 0.0;
  return (da * db).sum().item<double>() / denom;
}

std::vector<double> interrun_consistency(const std::vector<at::Tensor>& loads) {
  TORCH_CHECK(loads.size() >= 2, "xmoe::analysis::interrun_consistency: needs at least 2 runs, got ",
              loads.size());
  for (const auto& l : loads) {
    TORCH_CHECK(l.dim() == 2 && l.sizes() == loads[0].sizes(),
                "xmoe::analysis::interrun_consistency: every run must be [n_windows, E] = ",
                loads[0].sizes(), ", got ", l.sizes());
  }
  const int64_t n_windows = loads[0].size(0);
  std::vector<double> out(n_windows, 0.0);
  for (int64_t w = 0; w < n_windows; ++w) {
    double sum = 0;
    int64_t pairs = 0;
    for (size_t a = 0; a < loads.size(); ++a) {
      for (size_t b = a + 1; b < loads.size(); ++b) {
        sum += pearson(loads[a][w], loads[b][w]);
        ++pairs;
      }
    }
    out[w] = sum / static_cast<double>(pairs);
  }
  return out;
}

}  // namespace xmoe::analysis
