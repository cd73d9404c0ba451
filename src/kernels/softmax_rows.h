// Row-wise softmax with a key mask, and its backward, for the fused attention kernel and the
// routing gate (internal).
//
//   forward, in place on S [rows, n]:
//     P[i, j] = e^(S[i, j] + bias[j] − m_i) / Σ_k e^(S[i, k] + bias[k] − m_i),
//     m_i = max_k S[i, k] + bias[k],
//     bias[j] = 0 for a real key, −∞ for padding (whatever S holds there); with no real key the
//     rows are 0.
//   backward, in place on dP [rows, n]:
//     dS[i, j] = scale · P[i, j] · (dP[i, j] − Σ_k dP[i, k] P[i, k])
//
// Why not at::_softmax after a masked fill: in the attention task the scores of one (batch, head)
// are still in cache right after their GEMM; a separate pass over [B, H, L, L] reads them back
// from memory (~0.7 ms of a 2.4 ms tiny attention forward, docs/performance.md).
#pragma once

#include <cstdint>

namespace xmoe::kernels::detail {

void masked_softmax_rows(float* s, int64_t rows, int64_t n, const float* bias);
void masked_softmax_rows(double* s, int64_t rows, int64_t n, const double* bias);

void softmax_backward_rows(float* dp, const float* p, int64_t rows, int64_t n, float scale);
void softmax_backward_rows(double* dp, const double* p, int64_t rows, int64_t n, double scale);

}  // namespace xmoe::kernels::detail
