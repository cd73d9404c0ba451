#include "xmoe/kernels/gemm.h"

#include <ATen/ATen.h>
#include <oneapi/dnnl/dnnl.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>

namespace xmoe::kernels {

namespace {
std::atomic<bool> g_use_aten{false};  // set once oneDNN has reported that it cannot run here

// oneDNN 2.6's sgemm loses about half its speed on the weight-gradient form Aᵀ·B (A [k, m],
// B [k, n], k = token rows) when the rows of a wide operand lie a multiple of 2 KiB apart and the
// other side of the product is narrow. Measured on the 2-core EPYC hosts, 2 threads (in-step:
// bench/sgemm_calls_preload.cpp on the small config's training step; standalone:
// BM_SgemmRowStride in bench/bench_gemm.cpp):
// - A with lda = 1024, m = 1024, n = 256 (dW1 of a d = 256, d_ff = 1024 FFN): 65-76 GFLOP/s,
//   150-170 with lda = 1040; the same at k = 256 (an expert's block) and at 1 thread;
// - B with ldb = 1024, m = 256, n = 1024 (its dW2): 85 in-step, 159 with ldb = 1040.
// n ≥ 1024 for A shows no such loss; a row stride of 768 loses less than a copy costs. Copying the
// operand into rows padded by 16 floats reads and writes k × width floats, a small fraction of the
// k × m × n product.
bool aliased_wide_rows(int64_t width, int64_t ld, int64_t other_side) {
  return width >= 512 && ld % 512 == 0 && other_side <= 256;
}

// X [rows, width] (row stride ld) copied into `out` with rows of width + 16 floats; x and ld are
// redirected to the copy.
void pad_rows(const float*& x, int64_t& ld, int64_t rows, int64_t width,
              std::unique_ptr<float[]>& out) {
  const int64_t padded = width + 16;
  out.reset(new float[rows * padded]);  // every element the GEMM reads is written below
  float* dst = out.get();
  const float* src = x;
  const int64_t src_ld = ld;
#pragma omp parallel for schedule(static) if (!omp_in_parallel())
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(dst + r * padded, src + r * src_ld, width * sizeof(float));
  x = dst;
  ld = padded;
}
}  // namespace

void sgemm_aten(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                int64_t ldc) {
  if (m == 0 || n == 0) return;
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  auto view = [&](const float* p, int64_t rows, int64_t cols, int64_t ld, bool trans) {
    at::Tensor t = at::from_blob(const_cast<float*>(p), {trans ? cols : rows, trans ? rows : cols},
                                 {ld, 1}, f32);
    return trans ? t.t() : t;
  };
  at::Tensor out = at::from_blob(c, {m, n}, {ldc, 1}, f32);
  // beta = 0 ignores C's old values (NaN included), as BLAS does.
  out.addmm_(view(a, m, k, lda, trans_a), view(b, k, n, ldb, trans_b), beta, alpha);
}

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // an empty sum: C = beta · C (beta = 0 clears C, NaN included)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.f ? 0.f : beta * c[i * ldc + j];
    return;
  }
  if (g_use_aten.load(std::memory_order_relaxed)) {
    sgemm_aten(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  std::unique_ptr<float[]> padded_a, padded_b;
  if (trans_a && !trans_b) {
    if (aliased_wide_rows(m, lda, n)) pad_rows(a, lda, k, m, padded_a);
    if (aliased_wide_rows(n, ldb, m)) pad_rows(b, ldb, k, n, padded_b);
  }
  const dnnl_status_t status = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, alpha,
                                          a, lda, b, ldb, beta, c, ldc);
  if (status == dnnl_unimplemented) {
    if (!g_use_aten.exchange(true))
      std::fprintf(stderr, "xmoe: warning: oneDNN's sgemm is unimplemented on this CPU; the "
                           "expert GEMMs use ATen (slower)\n");
    sgemm_aten(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  if (status != dnnl_success) {
    throw std::runtime_error("xmoe::kernels::sgemm: dnnl_sgemm failed with status " +
                             std::to_string(static_cast<int>(status)) + " (M=" + std::to_string(m) +
                             " N=" + std::to_string(n) + " K=" + std::to_string(k) + ")");
  }
}

void dgemm_reference(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                     const double* a, int64_t lda, const double* b, int64_t ldb, double beta,
                     double* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0;
      for (int64_t l = 0; l < k; ++l)
        acc += (trans_a ? a[l * lda + i] : a[i * lda + l]) * (trans_b ? b[j * ldb + l] : b[l * ldb + j]);
      c[i * ldc + j] = alpha * acc + (beta == 0 ? 0.0 : beta * c[i * ldc + j]);
    }
  }
}

void for_each_expert_block(const std::vector<int64_t>& offsets,
                           const std::function<void(int64_t, int64_t, int64_t)>& block) {
  const int64_t n_expert = static_cast<int64_t>(offsets.size()) - 1;
  const int threads = omp_get_max_threads();
  const int64_t rows = offsets.back() - offsets.front();
  // A block holding more than 1/(2·threads) of the rows would leave threads idle if it ran on one
  // of them: it runs alone, its GEMMs on every thread. Every other block runs single-threaded
  // beside the others, largest first, which keeps the threads evenly loaded. Small blocks gain:
  // the six GEMMs of forward + backward over 8192 rows (d = 512, d_ff = 2048, each expert its own
  // weights, 2 threads, three interleaved runs) took 681-761 ms spread over the experts against
  // 807-884 ms block after block at 64 rows per block, 632-638 against 689-769 at 256 rows, and
  // the same at 512 and 1024 rows.
  auto rows_of = [&](int64_t e) { return offsets[e + 1] - offsets[e]; };
  std::vector<int64_t> spread;
  for (int64_t e = 0; e < n_expert; ++e) {
    if (rows_of(e) == 0) continue;
    if (threads == 1 || 2 * threads * rows_of(e) > rows) {
      block(e, offsets[e], rows_of(e));
    } else {
      spread.push_back(e);
    }
  }
  if (spread.size() <= 1) {  // nothing to spread: a lone block keeps every thread
    for (int64_t e : spread) block(e, offsets[e], rows_of(e));
    return;
  }
  std::stable_sort(spread.begin(), spread.end(),
                   [&](int64_t a, int64_t b) { return rows_of(a) > rows_of(b); });
  std::exception_ptr error;
  const int64_t n_spread = static_cast<int64_t>(spread.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < n_spread; ++i) {
    const int64_t e = spread[i];
    try {
      block(e, offsets[e], rows_of(e));
    } catch (...) {
#pragma omp critical
      error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace xmoe::kernels
