// Row-major single-precision GEMM on contiguous CPU buffers, and its grouped form over the
// per-expert row blocks of a dispatch plan. Backed by oneDNN's dnnl_sgemm (the fastest FP32 GEMM
// measured on our machines; LibTorch links the same libdnnl, so there is no conflict).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

namespace xmoe::kernels {

/// C[M, N] = alpha · op(A) · op(B) + beta · C, row-major; op(X) = Xᵀ when trans_x.
/// lda/ldb/ldc are row strides. When oneDNN cannot run on the CPU ("unimplemented": seen with
/// Debian's oneDNN 2.6 on a cloud GPU host, docs/gpu.md) it falls back to sgemm_aten once and for
/// all, with one warning on stderr; other oneDNN errors throw std::runtime_error.
void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc);

/// The same product through ATen (at::addmm_ on views of the buffers): the fallback, and the plain
/// reference the tests compare sgemm with.
void sgemm_aten(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                int64_t ldc);

/// The same row-major product in float64 by a plain triple loop: the gradient-check precision
/// of the fused kernels (small shapes only; beta = 0 ignores C).
void dgemm_reference(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                     const double* a, int64_t lda, const double* b, int64_t ldb, double beta,
                     double* c, int64_t ldc);

/// sgemm or dgemm_reference by element type, for kernels templated on it.
inline void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                 const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                 int64_t ldc) {
  sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                 const double* a, int64_t lda, const double* b, int64_t ldb, double beta, double* c,
                 int64_t ldc) {
  dgemm_reference(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/// Runs `block(e, row_begin, n_rows)` for every expert e with n_rows > 0 (offsets [E + 1]).
/// A block with more than 1/(2·threads) of all rows runs alone, its GEMMs using every thread;
/// the other blocks are spread over the threads, largest first, each running single-threaded
/// (dnnl_sgemm and ATen run serially inside the parallel region); a lone such block runs on
/// every thread. Which blocks run which way depends only on the offsets and the thread count.
/// An exception from `block` is rethrown.
void for_each_expert_block(const std::vector<int64_t>& offsets,
                           const std::function<void(int64_t, int64_t, int64_t)>& block);

}  // namespace xmoe::kernels
