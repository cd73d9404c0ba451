// Google Benchmark sweep of one MoE layer, forward + backward on the fast path:
// T ∈ {1k, 8k, 32k}, E ∈ {8, 32, 128}, k ∈ {1, 2}, d ∈ {512, 1024} (d_ff = 4d).
// Reports tokens/s (items) and achieved expert-GEMM GFLOP/s. Not a test: run by hand, e.g.
//   ./build/xmoe_bench --benchmark_filter='T:8192/E:8/' --benchmark_min_time=2
#include "xmoe/moe/moe_layer.h"
#include "xmoe/util/init.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include <thread>

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
    rows = out.plan.n_kept();
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

}  // namespace

int main(int argc, char** argv) {
  at::set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
