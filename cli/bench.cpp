// xmoe bench layer: times forward + backward of one MoE layer in-process (after a warm-up) and
// prints one JSON line; also times the bare GEMM limit — the same expert GEMMs as plain sgemm
// calls on the same block sizes — so the ratio to the machine's GEMM speed is in the same run.
#include "bench_timing.h"
#include "commands.h"
#include "validators.h"

#include "xmoe/kernels/gemm.h"
#include "xmoe/kernels/gemm_weight.h"
#include "xmoe/moe/moe_layer.h"
#include "xmoe/util/init.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <memory>
#include <vector>

namespace xmoe::cli {

namespace {

struct BenchArgs {
  int64_t tokens = 8192, d_model = 512, d_ff = 2048, experts = 8, top_k = 1, depth = 1;
  std::string router = "dot", path = "fast";
  double capacity_factor = 0.0;
  int iters = 5, warmup = 1;
  uint64_t seed = 1;
};

double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

// The six GEMMs per expert block of one forward + backward, as bare sgemm calls.
double time_gemm_limit(const std::vector<int64_t>& offsets, int64_t d, int64_t f, int64_t depth,
                       int iters) {
  const int64_t n = offsets.back();
  std::vector<float> x(n * d, 0.5f), a(n * f, 0.25f), y(n * d);
  // The weights start where the layer's do (xmoe/kernels/gemm_weight.h), so the limit is the
  // fastest placement of the same products, not a slower one.
  const at::Tensor w1 = kernels::empty_gemm_weight({f, d}).fill_(0.1f);
  const at::Tensor w2 = kernels::empty_gemm_weight({d, f}).fill_(0.1f);
  const float* w1p = w1.data_ptr<float>();
  const float* w2p = w2.data_ptr<float>();
  auto once = [&] {
    for (int64_t j = 0; j < depth; ++j) {
      kernels::for_each_expert_block(offsets, [&](int64_t, int64_t r0, int64_t rows) {
        float* ae = a.data() + r0 * f;
        float* ye = y.data() + r0 * d;
        const float* xe = x.data() + r0 * d;
        thread_local std::vector<float> gw_local;  // per thread: blocks may run concurrently
        gw_local.resize(f * d);
        kernels::sgemm(false, true, rows, f, d, 1.f, xe, d, w1p, d, 0.f, ae, f);
        kernels::sgemm(false, true, rows, d, f, 1.f, ae, f, w2p, f, 0.f, ye, d);
        kernels::sgemm(true, false, d, f, rows, 1.f, ye, d, ae, f, 0.f, gw_local.data(), f);
        kernels::sgemm(false, false, rows, f, d, 1.f, ye, d, w2p, f, 0.f, ae, f);
        kernels::sgemm(true, false, f, d, rows, 1.f, ae, f, xe, d, 0.f, gw_local.data(), d);
        kernels::sgemm(false, false, rows, d, f, 1.f, ae, f, w1p, d, 0.f, ye, d);
      });
    }
  };
  once();
  std::vector<double> times;
  for (int i = 0; i < iters; ++i) {
    const double t0 = now_ms();
    once();
    times.push_back(now_ms() - t0);
  }
  return median(times);
}

void run_bench_layer(const BenchArgs& a) {
  auto options = MoELayerOptions(a.d_model, a.d_ff, a.experts)
                     .top_k(a.top_k)
                     .router(a.router)
                     .capacity_factor(a.capacity_factor)
                     .expert_depth(a.depth)
                     .expert_path(parse_expert_path(a.path))
                     .seed(a.seed);
  MoELayer layer(options);
  layer->train();
  at::Generator gen = make_generator(a.seed + 1);
  at::Tensor h = at::empty({a.tokens, a.d_model}).normal_(0, 1, gen);
  at::Tensor grad = at::empty({a.tokens, a.d_model}).normal_(0, 1, gen);

  std::vector<double> fwd, bwd, route;
  MoEOutput last;
  for (int i = 0; i < a.warmup + a.iters; ++i) {
    for (auto& p : layer->parameters()) p.mutable_grad().reset();  // as the peers' set_to_none
    at::Tensor x = h.detach().requires_grad_();
    const double t0 = now_ms();
    last = layer->forward(x);
    const double t1 = now_ms();
    ((last.output * grad).sum() + last.aux_loss).backward();
    const double t2 = now_ms();
    // Routing + dispatch plan alone, to report their share of the layer time.
    const double t3 = now_ms();
    {
      at::NoGradGuard no_grad;
      RoutingResult r = layer->router().route(h);
      make_dispatch_plan(r.expert_ids, r.active, a.experts, -1);
    }
    const double t4 = now_ms();
    if (i >= a.warmup) {
      fwd.push_back(t1 - t0);
      bwd.push_back(t2 - t1);
      route.push_back(t4 - t3);
    }
  }
  const double fwd_ms = median(fwd), bwd_ms = median(bwd);
  std::vector<double> total(fwd.size());
  for (size_t i = 0; i < fwd.size(); ++i) total[i] = fwd[i] + bwd[i];
  const double fwd_bwd_ms = median(total);
  const double rows = static_cast<double>(last.plan.n_rows());
  const double flops = 12.0 * rows * a.d_model * a.d_ff * a.depth;  // 6 GEMMs of 2·n·d·f
  const double gemm_ms = time_gemm_limit(last.plan.offsets, a.d_model, a.d_ff, a.depth, a.iters);
  nlohmann::json out = {
      {"tokens", a.tokens},
      {"d_model", a.d_model},
      {"d_ff", a.d_ff},
      {"experts", a.experts},
      {"top_k", a.top_k},
      {"router", a.router},
      {"capacity_factor", a.capacity_factor},
      {"expert_depth", a.depth},
      {"path", last.routing.stats.path},
      {"threads", at::get_num_threads()},
      {"fwd_ms", fwd_ms},
      {"bwd_ms", bwd_ms},
      {"fwd_bwd_ms", fwd_bwd_ms},
      {"tokens_per_s", a.tokens / (fwd_bwd_ms / 1000.0)},
      {"gflops", flops / (fwd_bwd_ms / 1000.0) / 1e9},
      {"routing_ms", median(route)},
      {"routing_share", median(route) / fwd_bwd_ms},
      {"gemm_limit_ms", gemm_ms},
      {"gemm_limit_tokens_per_s", a.tokens / (gemm_ms / 1000.0)},
      {"fraction_of_gemm_limit", gemm_ms / fwd_bwd_ms},
      {"dropped_fraction", last.plan.dropped_fraction()},
      {"peak_rss_mb", peak_rss_mb()},
      {"gemm_kernel", "oneDNN dnnl_sgemm"},
  };
  std::cout << out.dump() << std::endl;
}

}  // namespace

void register_bench(CLI::App& app) {
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks");
  bench->require_subcommand(1);
  register_bench_train(*bench);
  auto args = std::make_shared<BenchArgs>();
  CLI::App* cmd = bench->add_subcommand(
      "layer", "Time forward + backward of one MoE layer and its bare GEMM limit (JSON line)");
  cmd->add_option("--tokens", args->tokens, "Tokens T")
      ->capture_default_str()
      ->check(int_in(1, 1 << 24));
  cmd->add_option("--d-model", args->d_model, "Model width d")->capture_default_str()->check(kPositive);
  cmd->add_option("--d-ff", args->d_ff, "Expert hidden width")->capture_default_str()->check(kPositive);
  cmd->add_option("--experts", args->experts, "Experts E")->capture_default_str()->check(kPositive);
  cmd->add_option("--top-k", args->top_k, "Experts per token")->capture_default_str()->check(kPositive);
  cmd->add_option("--expert-depth", args->depth, "FFN sub-layers per expert")->capture_default_str()->check(kPositive);
  cmd->add_option("--router", args->router, "Router kind")->capture_default_str();
  cmd->add_option("--capacity-factor", args->capacity_factor, "0 = dropless")->capture_default_str()->check(kNonNegative);
  cmd->add_option("--path", args->path, "Expert path")->capture_default_str()->check(CLI::IsMember({"fast", "reference"}));
  cmd->add_option("--iters", args->iters, "Timed iterations (median reported)")
      ->capture_default_str()
      ->check(int_in(1, kMaxBenchIterations));
  cmd->add_option("--warmup", args->warmup, "Untimed iterations first")
      ->capture_default_str()
      ->check(int_in(0, kMaxBenchIterations));
  cmd->add_option("--seed", args->seed, "Seed")->capture_default_str();
  cmd->callback([args] { run_bench_layer(*args); });
}

}  // namespace xmoe::cli
