// Google Benchmark sweep of one MoE layer, forward + backward on the fast path:
// T ∈ {1k, 8k, 32k}, E ∈ {8, 32, 128}, k ∈ {1, 2}, d ∈ {512, 1024} (d_ff = 4d).
// Reports tokens/s (items) and achieved expert-GEMM GFLOP/s. Not a test: run by hand, e.g.
//   ./build/xmoe_bench --benchmark_filter='T:8192/E:8/' --benchmark_min_time=2
// BM_ExpertBlockGemm times the grouped FFN's three GEMM forms alone on 8192 rows split into
// blocks of 64 (E = 128) or 1024 (E = 8) rows, each expert with its own weights, spread over
// the threads as the fast path does (docs/performance.md, E = 8 → E = 128):
//   ./build/xmoe_bench --benchmark_filter=ExpertBlockGemm
#include "xmoe/kernels/gemm.h"
#include "xmoe/moe/moe_layer.h"
#include "xmoe/util/heap.h"
#include "xmoe/util/init.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include <algorithm>
#include <thread>
#include <vector>

namespace {

void BM_MoELayerForwardBackward(benchmark::State& state) {
  const int64_t tokens = state.range(0), experts = state.range(1), top_k = state.range(2),
                d_model = state.range(3), d_ff = 4 * d_model;
  xmoe::MoELayer layer(xmoe::MoELayerOptions(d_model, d_ff, experts).top_k(top_k).seed(1));
  layer->train();
  at::Generator gen = xmoe::make_generator(2);
  at::Tensor h = at::empty({tokens, d_model}).normal_(0, 1, gen);
  at::Tensor grad = at::empty({tokens, d_model}).normal_(0, 1, gen);
  int64_t rows = 0;
  for (auto _ : state) {
    layer->zero_grad();
    at::Tensor x = h.detach().requires_grad_();
    xmoe::MoEOutput out = layer->forward(x);
    ((out.output * grad).sum() + out.aux_loss).backward();
    rows = out.plan.n_rows();
  }
  state.SetItemsProcessed(state.iterations() * tokens);
  state.counters["GFLOP/s"] = benchmark::Counter(
      12.0 * static_cast<double>(rows) * d_model * d_ff * state.iterations() / 1e9,
      benchmark::Counter::kIsRate);
}

BENCHMARK(BM_MoELayerForwardBackward)
    ->ArgNames({"T", "E", "k", "d"})
    ->ArgsProduct({{1024, 8192, 32768}, {8, 32, 128}, {1, 2}, {512, 1024}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// op 0: forward a = x · w1ᵀ [rows, f]; op 1: input gradient gx = ga · w1 [rows, d];
// op 2: weight gradient gw1 = gaᵀ · x [f, d] — the forms and operand layouts of grouped_ffn.cpp.
void BM_ExpertBlockGemm(benchmark::State& state) {
  const int64_t rows = state.range(0), op = state.range(1), total = 8192, d = 512, f = 2048;
  const int64_t experts = total / rows;
  std::vector<int64_t> offsets(experts + 1);
  for (int64_t e = 0; e <= experts; ++e) offsets[e] = e * rows;
  at::Generator gen = xmoe::make_generator(3);
  const at::Tensor x = at::empty({total, d}).normal_(0, 1, gen);
  const at::Tensor ga = at::empty({total, f}).normal_(0, 1, gen);
  const at::Tensor w1 = at::empty({experts, f, d}).normal_(0, 0.02, gen);
  at::Tensor out = at::empty({op == 2 ? experts * f * d : total * std::max(d, f)});
  const float *xp = x.data_ptr<float>(), *gp = ga.data_ptr<float>(), *wp = w1.data_ptr<float>();
  float* op_out = out.data_ptr<float>();
  for (auto _ : state) {
    xmoe::kernels::for_each_expert_block(offsets, [&](int64_t e, int64_t r0, int64_t n) {
      const float* w = wp + e * f * d;
      if (op == 0) {
        xmoe::kernels::sgemm(false, true, n, f, d, 1.f, xp + r0 * d, d, w, d, 0.f, op_out + r0 * f, f);
      } else if (op == 1) {
        xmoe::kernels::sgemm(false, false, n, d, f, 1.f, gp + r0 * f, f, w, d, 0.f, op_out + r0 * d, d);
      } else {
        xmoe::kernels::sgemm(true, false, f, d, n, 1.f, gp + r0 * f, f, xp + r0 * d, d, 0.f,
                             op_out + e * f * d, d);
      }
    });
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * total * d * f * state.iterations() / 1e9,
                                                 benchmark::Counter::kIsRate);
}

BENCHMARK(BM_ExpertBlockGemm)
    ->ArgNames({"rows", "op"})
    ->ArgsProduct({{64, 1024}, {0, 1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  // As the xmoe CLI does (docs/performance.md, "Heap setting"): freed blocks are reused instead of
  // unmapped, so an iteration does not pay page faults for what the previous one freed.
  xmoe::retain_freed_heap_memory();
  at::set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
