#include "xmoe/kernels/routing_gate.h"

#include "softmax_rows.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

namespace xmoe::kernels {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Rows per block of the token sums: fixed, so the float64 partial sums (and the results) are the
// same for any thread count.
constexpr int64_t kBlockRows = 256;

int64_t block_count(int64_t rows) { return (rows + kBlockRows - 1) / kBlockRows; }

// Per block of rows: Σ_t q_te (E), first-choice counts (E), slot counts (E), Σ lse², Σ entropy.
int64_t partials_per_block(int64_t n_expert) { return 3 * n_expert + 2; }

template <typename T>
constexpr T normalize_eps() {
  return std::is_same_v<T, float> ? T(1.2e-7) : T(2.2e-16);
}

// The k largest of z, in decreasing order, ties to the lower index: O(k²·n), for the k of 1-2
// that routers use.
template <typename T>
void topk_row(const T* z, int64_t n, int64_t k, int64_t* ids) {
  for (int64_t r = 0; r < k; ++r) {
    int64_t best = -1;
    for (int64_t j = 0; j < n; ++j) {
      bool taken = false;
      for (int64_t q = 0; q < r; ++q) taken = taken || ids[q] == j;
      if (!taken && (best < 0 || z[j] > z[best])) best = j;
    }
    ids[r] = best;
  }
}

struct Forward {
  int64_t rows, n_expert, k;
  bool sigmoid, normalize, separate_balance;
};

// Fills p, q, lse, gates, ids and each block's partials (layout: partials_per_block).
template <typename T>
void forward_kernel(const Forward& f, const T* logits, const T* balance_logits, T* p, T* q, T* lse,
                    T* gates, int64_t* ids, double* partials) {
  const int64_t E = f.n_expert, k = f.k;
  const int64_t stride = partials_per_block(E);
  const int64_t n_blocks = block_count(f.rows);
  const std::vector<T> no_mask(E, T(0));
  at::parallel_for(0, n_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    for (int64_t blk = block_begin; blk < block_end; ++blk) {
      double* part = partials + blk * stride;
      double* p_sum = part;
      double* first = part + E;
      double* slots = part + 2 * E;
      double lse_sq = 0, entropy = 0;
      const int64_t end = std::min(f.rows, (blk + 1) * kBlockRows);
      const int64_t begin = blk * kBlockRows;
      // p = softmax(l) and q = softmax(b) for the block, by the attention's row softmax with
      // no key masked.
      std::copy(logits + begin * E, logits + end * E, p + begin * E);
      detail::masked_softmax_rows(p + begin * E, end - begin, E, no_mask.data());
      if (f.separate_balance) {
        std::copy(balance_logits + begin * E, balance_logits + end * E, q + begin * E);
        detail::masked_softmax_rows(q + begin * E, end - begin, E, no_mask.data());
      }
      for (int64_t t = begin; t < end; ++t) {
        const T* z = logits + t * E;
        const T* pt = p + t * E;
        const T* qt = f.separate_balance ? q + t * E : pt;
        int64_t* it = ids + t * k;
        topk_row(z, E, k, it);
        first[it[0]] += 1;
        // log Σ e^l = l_max − log p_max (p_max ≥ 1/E: a well-conditioned logarithm).
        lse[t] = z[it[0]] - std::log(pt[it[0]]);
        // −Σ p log p = lse − Σ p·l, as log p_e = l_e − lse: no logarithm per expert.
        double pl = 0;
        for (int64_t e = 0; e < E; ++e) pl += static_cast<double>(pt[e]) * z[e], p_sum[e] += qt[e];
        lse_sq += static_cast<double>(lse[t]) * lse[t];
        entropy += lse[t] - pl;
        T* gt = gates + t * k;
        T total = 0;
        for (int64_t j = 0; j < k; ++j) {
          slots[it[j]] += 1;
          gt[j] = f.sigmoid ? T(1) / (T(1) + std::exp(-z[it[j]])) : pt[it[j]];
          total += gt[j];
        }
        if (f.normalize) {
          const T denom = std::max(total, normalize_eps<T>());
          for (int64_t j = 0; j < k; ++j) gt[j] /= denom;
        }
      }
      part[3 * E] = lse_sq;
      part[3 * E + 1] = entropy;
    }
  });
}

// Gradients through softmax go through the attention's row softmax backward,
// ∂z = p ⊙ (w − Σ_e p_e w_e) for weights w = ∂/∂p; it is linear in w, so the gate's and a shared
// balance loss's weights are summed first and go through it once.
template <typename T>
void backward_kernel(const Forward& f, const T* p, const T* q, const T* lse, const T* gates,
                     const int64_t* ids, const double* first_share, const T* dgates,
                     double d_balance, double d_z, T* dlogits, T* dbalance_logits) {
  const int64_t E = f.n_expert, k = f.k;
  const double inv_t = 1.0 / static_cast<double>(f.rows);
  // ∂balance/∂q_te = E · f_e / T, the same for every token.
  std::vector<T> w_balance(E);
  for (int64_t e = 0; e < E; ++e)
    w_balance[e] = static_cast<T>(d_balance * static_cast<double>(E) * first_share[e] * inv_t);
  at::parallel_for(0, f.rows, kBlockRows, [&](int64_t begin, int64_t end) {
    const int64_t rows = end - begin;
    for (int64_t t = begin; t < end; ++t) {  // ∂/∂p into dlogits
      T* w = dlogits + t * E;
      if (f.separate_balance) {
        std::fill(w, w + E, T(0));
        std::copy(w_balance.begin(), w_balance.end(), dbalance_logits + t * E);
      } else {
        std::copy(w_balance.begin(), w_balance.end(), w);
      }
      if (f.sigmoid) continue;
      const T* pt = p + t * E;
      const T* gt = gates + t * k;
      const T* dgt = dgates + t * k;
      const int64_t* it = ids + t * k;
      if (!f.normalize) {
        for (int64_t j = 0; j < k; ++j) w[it[j]] += dgt[j];
        continue;
      }
      // Through the renormalisation g = r / S (S = Σ r unless clamped): ∂r_j = (∂g_j − Σ ∂g·g) / S.
      T raw_sum = 0, dot = 0;
      for (int64_t j = 0; j < k; ++j) raw_sum += pt[it[j]], dot += dgt[j] * gt[j];
      const bool clamped = raw_sum < normalize_eps<T>();
      const T denom = clamped ? normalize_eps<T>() : raw_sum;
      for (int64_t j = 0; j < k; ++j) w[it[j]] += (dgt[j] - (clamped ? T(0) : dot)) / denom;
    }
    detail::softmax_backward_rows(dlogits + begin * E, p + begin * E, rows, E, T(1));
    if (f.separate_balance)
      detail::softmax_backward_rows(dbalance_logits + begin * E, q + begin * E, rows, E, T(1));
    for (int64_t t = begin; t < end; ++t) {  // the terms that do not go through softmax
      T* dz = dlogits + t * E;
      // z-loss: ∂/∂l_te of lse_t² / T = (2 lse_t / T) · p_te.
      const T z_scale = static_cast<T>(2.0 * d_z * inv_t * lse[t]);
      for (int64_t e = 0; e < E; ++e) dz[e] += z_scale * p[t * E + e];
      if (!f.sigmoid) continue;
      const T* gt = gates + t * k;
      for (int64_t j = 0; j < k; ++j) dz[ids[t * k + j]] += dgates[t * k + j] * gt[j] * (T(1) - gt[j]);
    }
  });
}

struct RoutingGateFunction : torch::autograd::Function<RoutingGateFunction> {
  // `balance_logits` is an empty placeholder when the gate logits serve as balance logits.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits,
                               const at::Tensor& balance_logits, int64_t k, bool sigmoid,
                               bool normalize) {
    const int64_t T = logits.size(0), E = logits.size(1);
    const bool separate = balance_logits.numel() > 0;
    const Forward f{T, E, k, sigmoid, normalize, separate};
    const auto opt = logits.options();
    at::Tensor p = at::empty({T, E}, opt);
    at::Tensor q = separate ? at::empty({T, E}, opt) : at::empty({0}, opt);
    at::Tensor lse = at::empty({T}, opt);
    at::Tensor gates = at::empty({T, k}, opt);
    at::Tensor ids = at::empty({T, k}, opt.dtype(at::kLong));
    const int64_t n_blocks = block_count(T);
    const int64_t stride = partials_per_block(E);
    std::vector<double> partials(n_blocks * stride, 0.0);
    AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "xmoe::kernels::routing_gate", [&] {
      forward_kernel<scalar_t>(f, logits.data_ptr<scalar_t>(),
                               separate ? balance_logits.data_ptr<scalar_t>() : nullptr,
                               p.data_ptr<scalar_t>(), separate ? q.data_ptr<scalar_t>() : nullptr,
                               lse.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(),
                               ids.data_ptr<int64_t>(), partials.data());
    });
    // Token sums, block by block in order.
    std::vector<double> sums(stride, 0.0);
    for (int64_t blk = 0; blk < n_blocks; ++blk)
      for (int64_t i = 0; i < stride; ++i) sums[i] += partials[blk * stride + i];
    const double inv_t = 1.0 / static_cast<double>(T);
    at::Tensor first_share = at::empty({E}, at::TensorOptions().dtype(at::kDouble));
    at::Tensor counts = at::empty({E}, at::TensorOptions().dtype(at::kLong));
    double balance = 0;
    for (int64_t e = 0; e < E; ++e) {
      first_share.data_ptr<double>()[e] = sums[E + e] * inv_t;
      counts.data_ptr<int64_t>()[e] = static_cast<int64_t>(sums[2 * E + e]);
      balance += sums[E + e] * inv_t * sums[e] * inv_t;
    }
    balance *= static_cast<double>(E);
    // Made in double, then cast: a value past float32's range (the z-loss of logits near 1e20)
    // becomes inf, which the caller's finiteness checks report, where at::full would throw.
    const auto f64 = at::TensorOptions().dtype(at::kDouble);
    at::Tensor balance_loss = at::full({}, balance, f64).to(opt);
    at::Tensor z_loss = at::full({}, sums[3 * E] * inv_t, f64).to(opt);
    at::Tensor entropy = at::full({}, sums[3 * E + 1] * inv_t, f64);

    ctx->save_for_backward({p, q, lse, gates, ids, first_share});
    ctx->saved_data["k"] = k;
    ctx->saved_data["sigmoid"] = sigmoid;
    ctx->saved_data["normalize"] = normalize;
    ctx->mark_non_differentiable({ids, counts, entropy});
    return {gates, balance_loss, z_loss, ids, counts, entropy};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &p = saved[0], &q = saved[1], &lse = saved[2], &gates = saved[3],
                     &ids = saved[4], &first_share = saved[5];
    const int64_t T = p.size(0), E = p.size(1);
    const bool separate = q.numel() > 0;
    const Forward f{T, E, ctx->saved_data["k"].toInt(), ctx->saved_data["sigmoid"].toBool(),
                    ctx->saved_data["normalize"].toBool(), separate};
    at::Tensor dgates = grads[0].defined() ? grads[0].contiguous() : at::zeros_like(gates);
    const double d_balance = grads[1].defined() ? grads[1].item<double>() : 0.0;
    const double d_z = grads[2].defined() ? grads[2].item<double>() : 0.0;
    at::Tensor dlogits = at::empty({T, E}, p.options());
    at::Tensor dbalance = separate ? at::empty({T, E}, p.options()) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "xmoe::kernels::routing_gate backward", [&] {
      backward_kernel<scalar_t>(f, p.data_ptr<scalar_t>(),
                                separate ? q.data_ptr<scalar_t>() : nullptr,
                                lse.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(),
                                ids.data_ptr<int64_t>(), first_share.data_ptr<double>(),
                                dgates.data_ptr<scalar_t>(), d_balance, d_z,
                                dlogits.data_ptr<scalar_t>(),
                                separate ? dbalance.data_ptr<scalar_t>() : nullptr);
    });
    return {dlogits, dbalance, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

bool routing_gate_supported(const at::Tensor& logits) {
  const auto dtype = logits.scalar_type();
  return logits.device().is_cpu() && logits.dim() == 2 && logits.size(0) > 0 &&
         (dtype == at::kFloat || dtype == at::kDouble);
}

RoutingGate routing_gate(const at::Tensor& logits, const at::Tensor& balance_logits, int64_t k,
                         bool sigmoid_gate, bool normalize_topk) {
  TORCH_CHECK(routing_gate_supported(logits),
              "xmoe::kernels::routing_gate: needs float or double logits [T >= 1, E] on the CPU, "
              "got ", logits.sizes(), " ", logits.scalar_type(), " on ", logits.device());
  const int64_t E = logits.size(1);
  TORCH_CHECK(k >= 1 && k <= E, "xmoe::kernels::routing_gate: k = ", k, " must be in [1, E = ", E,
              "]");
  TORCH_CHECK(!balance_logits.defined() ||
                  (balance_logits.sizes() == logits.sizes() &&
                   balance_logits.scalar_type() == logits.scalar_type() &&
                   balance_logits.device() == logits.device()),
              "xmoe::kernels::routing_gate: balance logits ", balance_logits.sizes(),
              " must match the gate logits ", logits.sizes(), " in shape, dtype and device");
  const bool normalize = !sigmoid_gate && k > 1 && normalize_topk;
  variable_list out = RoutingGateFunction::apply(
      logits.contiguous(),
      balance_logits.defined() ? balance_logits.contiguous() : at::empty({0}, logits.options()), k,
      sigmoid_gate, normalize);
  RoutingGate gate;
  gate.gates = out[0];
  gate.balance_loss = out[1];
  gate.z_loss = out[2];
  gate.expert_ids = out[3];
  gate.tokens_per_expert = out[4];
  gate.entropy = out[5].item<double>();
  return gate;
}

}  // namespace xmoe::kernels
