// Google Benchmark of the fused routing gate (kernels::routing_gate) against its ATen composition
// (routing_gate_aten) in the same run: top-1 softmax gate with separate balance logits as the
// X-MoE router has them, forward + backward of Σ gates + balance + z, at the tiny config's MoE
// shape (T 2048, E 8) and the layer benchmark's largest (T 8192, E 128). Not a test: run by hand,
//   ./build/xmoe_bench --benchmark_filter=RoutingGate --benchmark_min_time=2
#include "xmoe/kernels/routing_gate.h"
#include "xmoe/routing/topk.h"
#include "xmoe/util/init.h"

#include <ATen/ATen.h>
#include <benchmark/benchmark.h>

namespace {

// range(0): T; range(1): E; range(2): 1 = fused, 0 = ATen composition.
void BM_RoutingGate(benchmark::State& state) {
  const int64_t tokens = state.range(0), experts = state.range(1);
  const bool fused = state.range(2) != 0;
  at::Generator gen = xmoe::make_generator(7);
  const at::Tensor scores = at::empty({tokens, experts}).uniform_(-1, 1, gen);
  for (auto _ : state) {
    at::Tensor s = scores.detach().requires_grad_(true);
    at::Tensor logits = s / 0.3, balance_logits = s / 0.07;  // X-MoE: s/τ and s/τ₀
    xmoe::kernels::RoutingGate g =
        fused ? xmoe::kernels::routing_gate(logits, balance_logits, 1, false, false)
              : xmoe::routing_gate_aten(logits, balance_logits, 1, xmoe::GateKind::kSoftmax, false,
                                        xmoe::SecondExpertPolicy::kAll, true, gen, nullptr);
    (g.gates.sum() + g.balance_loss + g.z_loss).backward();
    benchmark::DoNotOptimize(s.grad().data_ptr<float>());
  }
  state.counters["tokens/s"] = benchmark::Counter(
      static_cast<double>(tokens) * state.iterations(), benchmark::Counter::kIsRate);
}

BENCHMARK(BM_RoutingGate)
    ->ArgNames({"T", "E", "fused"})
    ->Args({2048, 8, 1})
    ->Args({2048, 8, 0})
    ->Args({8192, 128, 1})
    ->Args({8192, 128, 0})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
