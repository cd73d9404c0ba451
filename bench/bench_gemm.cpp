// Google Benchmark of the machine's single-precision GEMM rate on an expert's shapes, the peak
// that docs/performance.md compares everything else with: the forward form C [M, 2048] =
// X [M, 512] · W [2048, 512]ᵀ (NT) and the weight-gradient form dW [2048, 512] = G [M, 2048]ᵀ ·
// X [M, 512] (TN), through oneDNN (kernels::sgemm, what the fast path calls) and through ATen
// (kernels::sgemm_aten: addmm on LibTorch's BLAS, OpenBLAS here), at 1 and 2 threads; and the
// weight-gradient form's dependence on its operands' row strides (BM_SgemmRowStride); and the
// few-row input-gradient products from weights at LibTorch's alignment against the placement of
// kernels::empty_gemm_weight (BM_SgemmWeightPlacement). Not a test:
//   ./build/xmoe_bench --benchmark_filter=Sgemm
#include "xmoe/kernels/gemm.h"
#include "xmoe/kernels/gemm_weight.h"
#include "xmoe/util/init.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>
#include <oneapi/dnnl/dnnl.h>

#include <algorithm>

namespace {

// range(0): M; range(1): 0 = NT, 1 = TN; range(2): 0 = oneDNN, 1 = ATen; range(3): threads.
void BM_Sgemm(benchmark::State& state) {
  const int64_t m = state.range(0), d = 512, f = 2048;
  const bool weight_gradient = state.range(1) != 0;
  const auto gemm = state.range(2) == 0 ? xmoe::kernels::sgemm : xmoe::kernels::sgemm_aten;
  const int threads_before = at::get_num_threads();
  at::set_num_threads(static_cast<int>(state.range(3)));
  at::Generator gen = xmoe::make_generator(4);
  const at::Tensor x = at::empty({m, d}).normal_(0, 1, gen);
  const at::Tensor w = at::empty({f, d}).normal_(0, 0.02, gen);
  const at::Tensor g = at::empty({m, f}).normal_(0, 1, gen);
  at::Tensor out = at::empty({std::max(m, d) * f});
  for (auto _ : state) {
    if (weight_gradient) {
      gemm(true, false, f, d, m, 1.f, g.data_ptr<float>(), f, x.data_ptr<float>(), d, 0.f,
           out.data_ptr<float>(), d);
    } else {
      gemm(false, true, m, f, d, 1.f, x.data_ptr<float>(), d, w.data_ptr<float>(), d, 0.f,
           out.data_ptr<float>(), f);
    }
    benchmark::DoNotOptimize(out.data_ptr<float>());
  }
  at::set_num_threads(threads_before);
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * m * d * f * state.iterations() / 1e9,
                                                 benchmark::Counter::kIsRate);
}

BENCHMARK(BM_Sgemm)
    ->ArgNames({"M", "tn", "aten", "threads"})
    ->ArgsProduct({{128, 1024, 8192}, {0, 1}, {0, 1}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// The weight-gradient product dW[m, n] = Aᵀ·B over k = 4096 token rows, A [k, m] and B [k, n],
// with the operands' rows m and n floats apart (as the activations are stored) or 16 more:
// dnnl_sgemm called directly against kernels::sgemm, which copies a wide operand into padded rows
// when its row stride is a multiple of 2 KiB and the other side is narrow (src/kernels/gemm.cpp).
void BM_SgemmRowStride(benchmark::State& state) {
  const int64_t m = state.range(0), n = state.range(1), k = 4096;
  const int64_t variant = state.range(2);  // 0: dnnl_sgemm, natural strides; 1: dnnl_sgemm,
                                           // strides + 16; 2: kernels::sgemm, natural strides
  const int64_t pad = variant == 1 ? 16 : 0, lda = m + pad, ldb = n + pad;
  at::Generator gen = xmoe::make_generator(5);
  const at::Tensor a = at::empty({k, lda}).normal_(0, 1, gen);
  const at::Tensor b = at::empty({k, ldb}).normal_(0, 1, gen);
  at::Tensor c = at::empty({m, n});
  for (auto _ : state) {
    if (variant == 2) {
      xmoe::kernels::sgemm(true, false, m, n, k, 1.f, a.data_ptr<float>(), lda, b.data_ptr<float>(),
                           ldb, 0.f, c.data_ptr<float>(), n);
    } else {
      dnnl_sgemm('T', 'N', m, n, k, 1.f, a.data_ptr<float>(), lda, b.data_ptr<float>(), ldb, 0.f,
                 c.data_ptr<float>(), n);
    }
    benchmark::DoNotOptimize(c.data_ptr<float>());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * m * n * k * state.iterations() / 1e9,
                                                 benchmark::Counter::kIsRate);
}

BENCHMARK(BM_SgemmRowStride)
    ->ArgNames({"M", "N", "variant"})
    ->ArgsProduct({{128, 256, 512, 768, 1024, 2048}, {128, 256, 512, 1024}, {0, 1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// An expert block's input gradient C [M, N] = A [M, K] · W [K, N] (no transposes), the weight W
// starting on LibTorch's 64-byte alignment or where kernels::empty_gemm_weight places it (16 bytes
// past a 32-byte boundary under oneDNN's AVX2 kernels; the same alignment elsewhere), at the
// caller's thread count. range(0): M; range(1): 0 = ∂y · W2 ([M, 512] · [512, 2048]),
// 1 = ∂a · W1 ([M, 2048] · [2048, 512]); range(2): 0 = at::empty, 1 = empty_gemm_weight.
void BM_SgemmWeightPlacement(benchmark::State& state) {
  const int64_t m = state.range(0);
  const int64_t k = state.range(1) == 0 ? 512 : 2048, n = state.range(1) == 0 ? 2048 : 512;
  at::Generator gen = xmoe::make_generator(6);
  const at::Tensor a = at::empty({m, k}).normal_(0, 1, gen);
  at::Tensor w = state.range(2) == 0 ? at::empty({k, n}) : xmoe::kernels::empty_gemm_weight({k, n});
  w.normal_(0, 0.02, gen);
  at::Tensor c = at::empty({m, n});
  for (auto _ : state) {
    xmoe::kernels::sgemm(false, false, m, n, k, 1.f, a.data_ptr<float>(), k, w.data_ptr<float>(), n,
                         0.f, c.data_ptr<float>(), n);
    benchmark::DoNotOptimize(c.data_ptr<float>());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * m * n * k * state.iterations() / 1e9,
                                                 benchmark::Counter::kIsRate);
}

BENCHMARK(BM_SgemmWeightPlacement)
    ->ArgNames({"M", "form", "placed"})
    ->ArgsProduct({{64, 256, 1024}, {0, 1}, {0, 1}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace
