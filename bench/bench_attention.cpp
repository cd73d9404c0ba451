// Google Benchmark of the fused attention kernel against its ATen composition
// (kernels::attention_reference) in the same run: forward, and forward + backward, with attention
// dropout 0.1, at the tiny config's shape (B 32, L 64, 4 heads of 32) and the small config's
// (B 32, L 128, 4 heads of 64). Not a test: run by hand, e.g.
//   ./build/xmoe_bench --benchmark_filter=Attention --benchmark_min_time=2
#include "xmoe/kernels/attention.h"
#include "xmoe/util/init.h"

#include <ATen/ATen.h>
#include <benchmark/benchmark.h>

namespace {

// range(0): L (batch 32, 4 heads, d = 2L); range(1): 1 = fused, 0 = ATen reference;
// range(2): 1 = forward + backward, 0 = forward only.
void BM_Attention(benchmark::State& state) {
  const int64_t len = state.range(0), batch = 32, heads = 4, d = 2 * len;
  const bool fused = state.range(1) != 0, backward = state.range(2) != 0;
  at::Generator gen = xmoe::make_generator(5);
  const at::Tensor qkv = at::empty({batch, len, 3 * d}).normal_(0, 1, gen);
  const at::Tensor grad = at::empty({batch, len, d}).normal_(0, 1, gen);
  const at::Tensor padding = at::zeros({batch, len}, at::kBool);
  const auto attend = fused ? xmoe::kernels::attention : xmoe::kernels::attention_reference;
  for (auto _ : state) {
    at::Tensor x = qkv.detach().requires_grad_(backward);
    at::Tensor out = attend(x, padding, heads, 0.1, true, gen);
    if (backward) out.backward(grad);
    benchmark::DoNotOptimize(out.data_ptr<float>());
  }
  // QKᵀ and PV: 4·B·L²·d FLOP forward, twice that backward.
  state.counters["GFLOP/s"] = benchmark::Counter(
      (backward ? 3.0 : 1.0) * 4.0 * batch * len * len * d * state.iterations() / 1e9,
      benchmark::Counter::kIsRate);
}

BENCHMARK(BM_Attention)
    ->ArgNames({"L", "fused", "bwd"})
    ->ArgsProduct({{64, 128}, {1, 0}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
