// xmoe demo: builds a small MoE layer per router, routes random tokens through it (training
// mode, forward + backward) and prints the per-expert loads and the aux losses.
#include "commands.h"
#include "validators.h"

#include "xmoe/moe/moe_layer.h"
#include "xmoe/util/init.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace xmoe::cli {

namespace {

struct DemoArgs {
  int64_t tokens = 4096, d_model = 64, d_ff = 128, experts = 8;
  uint64_t seed = 1;
};

struct DemoCase {
  std::string label;
  MoELayerOptions options;
};

void run_demo(const DemoArgs& a) {
  auto base = [&](const std::string& router) {
    return MoELayerOptions(a.d_model, a.d_ff, a.experts).router(router).seed(a.seed);
  };
  const std::vector<DemoCase> cases = {
      {"switch (dot, softmax, top-1)", base("dot")},
      {"switch (dot, sigmoid, top-1)", base("dot").gate(GateKind::kSigmoid)},
      {"gshard (dot, softmax, top-2)", base("dot").top_k(2)},
      {"gshard top-2, capacity 1.0", base("dot").top_k(2).capacity_factor(1.0)},
      {"shazeer (noisy top-2)", base("noisy_topk").top_k(2)},
      {"x-moe (softmax, top-1)", base("xmoe")},
      {"x-moe (sigmoid, top-1)", base("xmoe").gate(GateKind::kSigmoid)},
      {"x-moe torchscale variant", base("xmoe_torchscale")},
  };
  at::Tensor h = at::empty({a.tokens, a.d_model}).normal_(0, 1, make_generator(a.seed));
  std::printf("%lld random tokens, d_model %lld, d_ff %lld, %lld experts (training mode)\n\n",
              static_cast<long long>(a.tokens), static_cast<long long>(a.d_model),
              static_cast<long long>(a.d_ff), static_cast<long long>(a.experts));
  for (const DemoCase& c : cases) {
    MoELayer layer(c.options);
    layer->train();
    MoEOutput out = layer->forward(h);
    (out.output.pow(2).mean() + out.aux_loss).backward();
    const RoutingStats& s = out.routing.stats;
    std::printf("%-30s loads [", c.label.c_str());
    const int64_t* load = s.tokens_per_expert.data_ptr<int64_t>();
    for (int64_t e = 0; e < a.experts; ++e) std::printf("%s%lld", e ? " " : "", static_cast<long long>(load[e]));
    std::printf("]  dropped %.3f  entropy %.3f\n%-30s aux:", s.dropped_fraction, s.router_entropy, "");
    for (const auto& item : out.routing.aux) std::printf("  %s %.5f", item.first.c_str(), item.second.item<double>());
    std::printf("  (weighted total %.6f)\n", out.aux_loss.item<double>());
  }
}

}  // namespace

void register_demo(CLI::App& app) {
  auto args = std::make_shared<DemoArgs>();
  CLI::App* cmd = app.add_subcommand("demo", "Route random tokens through each router and print "
                                             "expert loads and aux losses");
  cmd->add_option("--tokens", args->tokens, "Tokens")->capture_default_str()->check(kPositive);
  cmd->add_option("--d-model", args->d_model, "Model width")->capture_default_str()->check(kPositive);
  cmd->add_option("--d-ff", args->d_ff, "Expert hidden width")->capture_default_str()->check(kPositive);
  cmd->add_option("--experts", args->experts, "Experts")->capture_default_str()->check(int_in(2, 4096));
  cmd->add_option("--seed", args->seed, "Seed")->capture_default_str();
  cmd->callback([args] { run_demo(*args); });
}

}  // namespace xmoe::cli
