// CUDA tensors: the MoE layer's fast path (CPU float32 only) must fall back to the reference
// path, and that path must give what the CPU reference path computes: routing, outputs, aux loss
// and every gradient (FastPathEqualsReference ties the CPU fast path to the CPU reference path,
// so these tests do not depend on the CPU GEMM kernels). Also the encoder end to end. Skipped where no CUDA device is available (CI, the
// CPU-only Debian LibTorch); scripts/gpu_check.sh runs it on a GPU machine.
#include "xmoe/model/encoder.h"
#include "xmoe/moe/moe_layer.h"
#include "xmoe/util/init.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>
#include <torch/cuda.h>

#include <string>
#include <vector>

namespace xmoe {
namespace {

bool have_cuda() { return torch::cuda::is_available(); }

const at::Device kCuda(at::kCUDA, 0);

// Makes `dst` (on any device) hold exactly the parameters and buffers of `src`.
void copy_state(torch::nn::Module& dst, torch::nn::Module& src) {
  at::NoGradGuard no_grad;
  auto src_params = src.named_parameters(/*recurse=*/true);
  for (auto& item : dst.named_parameters(/*recurse=*/true)) {
    item.value().copy_(src_params[item.key()]);
  }
  auto src_buffers = src.named_buffers(/*recurse=*/true);
  for (auto& item : dst.named_buffers(/*recurse=*/true)) {
    item.value().copy_(src_buffers[item.key()]);
  }
}

::testing::AssertionResult Close(const at::Tensor& cpu, const at::Tensor& cuda, const std::string& what,
                                 double rtol = 1e-4, double atol = 1e-5) {
  if (!cpu.defined() && !cuda.defined()) return ::testing::AssertionSuccess();
  if (cpu.defined() != cuda.defined()) {
    return ::testing::AssertionFailure() << what << ": defined on one device only";
  }
  at::Tensor a = cpu.detach().to(at::kDouble);
  at::Tensor b = cuda.detach().cpu().to(at::kDouble);
  if (a.sizes() != b.sizes()) {
    return ::testing::AssertionFailure() << what << ": shape " << a.sizes() << " vs " << b.sizes();
  }
  if (at::allclose(a, b, rtol, atol)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": max |cpu - cuda| = "
                                       << (a - b).abs().max().item<double>();
}

struct CudaCase {
  std::string router;
  int64_t top_k;
  double capacity_factor;
  int64_t depth;
  SecondExpertPolicy policy;
  bool masked;
};

std::string cuda_case_name(const ::testing::TestParamInfo<CudaCase>& info) {
  const CudaCase& c = info.param;
  const char* policy = c.policy == SecondExpertPolicy::kAll      ? "all"
                       : c.policy == SecondExpertPolicy::kRandom ? "random"
                                                                 : "sampling";
  return c.router + "_k" + std::to_string(c.top_k) + "_cf" +
         std::to_string(static_cast<int>(c.capacity_factor * 100)) + "_depth" +
         std::to_string(c.depth) + "_" + policy + (c.masked ? "_masked" : "");
}

class CudaMoELayer : public ::testing::TestWithParam<CudaCase> {};

// Forward + backward in training mode on the CPU (reference path) and on CUDA (asked for the fast
// path, must fall back to the reference path); both layers start from the same parameters and see
// the same noise.
TEST_P(CudaMoELayer, FallsBackToReferenceAndMatchesCpu) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device";
  const CudaCase& c = GetParam();
  const int64_t n_tokens = 29, d_model = 16, d_ff = 24, n_expert = 5;
  auto options = MoELayerOptions(d_model, d_ff, n_expert)
                     .router(c.router)
                     .top_k(c.top_k)
                     .capacity_factor(c.capacity_factor)
                     .expert_depth(c.depth)
                     .second_expert_policy(c.policy)
                     .seed(7);
  MoELayer cpu(MoELayerOptions(options).expert_path(ExpertPath::kReference));
  MoELayer gpu(options);  // expert_path kFast, the default
  at::Generator gen = make_generator(3);
  if (c.router == "noisy_topk") {
    // Its weights start at zero (every score tied); give them values.
    at::NoGradGuard no_grad;
    for (auto& p : cpu->router().parameters()) p.normal_(0, 1, gen);
  }
  gpu->to(kCuda);
  copy_state(*gpu, *cpu);

  at::Tensor h = at::empty({n_tokens, d_model}).normal_(0, 1, gen);
  at::Tensor grad_out = at::empty({n_tokens, d_model}).normal_(0, 1, gen);
  MoEInputs cpu_in, gpu_in;
  at::Tensor mask;
  if (c.masked) {
    mask = at::ones({n_tokens}, at::kBool);
    for (int64_t t = 3; t < n_tokens; t += 4) mask[t] = false;
    cpu_in.mask = mask;
    gpu_in.mask = mask.to(kCuda);
  }
  const int64_t n_real = c.masked ? mask.sum().item<int64_t>() : n_tokens;
  at::Tensor noise = at::empty({n_real, n_expert}).normal_(0, 1, gen);
  cpu_in.noise = noise;
  gpu_in.noise = noise.to(kCuda);

  cpu->train();
  gpu->train();
  at::Tensor x_cpu = h.clone().requires_grad_();
  at::Tensor x_gpu = h.to(kCuda).requires_grad_();
  MoEOutput out_cpu = cpu->forward(x_cpu, cpu_in);
  MoEOutput out_gpu = gpu->forward(x_gpu, gpu_in);
  ((out_cpu.output * grad_out).sum() + out_cpu.aux_loss).backward();
  ((out_gpu.output * grad_out.to(kCuda)).sum() + out_gpu.aux_loss).backward();

  EXPECT_EQ(out_gpu.routing.stats.path, "reference");
  EXPECT_TRUE(out_gpu.output.is_cuda());
  EXPECT_TRUE(out_gpu.aux_loss.is_cuda());
  ASSERT_TRUE(x_gpu.grad().defined());
  EXPECT_TRUE(x_gpu.grad().is_cuda());
  EXPECT_TRUE(at::equal(out_cpu.routing.expert_ids, out_gpu.routing.expert_ids.cpu()))
      << "expert choice differs between CPU and CUDA";
  EXPECT_TRUE(at::equal(out_cpu.plan.kept, out_gpu.plan.kept.cpu()));
  EXPECT_EQ(out_cpu.plan.n_dropped, out_gpu.plan.n_dropped);
  EXPECT_TRUE(Close(out_cpu.routing.gates, out_gpu.routing.gates, "gates"));
  EXPECT_TRUE(Close(out_cpu.output, out_gpu.output, "output"));
  EXPECT_TRUE(Close(out_cpu.aux_loss, out_gpu.aux_loss, "aux_loss"));
  EXPECT_TRUE(Close(x_cpu.grad(), x_gpu.grad(), "d output / d h"));
  auto gpu_params = gpu->named_parameters(/*recurse=*/true);
  for (const auto& item : cpu->named_parameters(/*recurse=*/true)) {
    const at::Tensor& g = gpu_params[item.key()];
    EXPECT_TRUE(g.is_cuda()) << item.key();
    EXPECT_TRUE(Close(item.value().grad(), g.grad(), "grad of " + item.key()));
  }
  EXPECT_DOUBLE_EQ(out_cpu.routing.stats.dropped_fraction, out_gpu.routing.stats.dropped_fraction);
}

INSTANTIATE_TEST_SUITE_P(
    Routers, CudaMoELayer,
    ::testing::Values(CudaCase{"dot", 1, 0.0, 1, SecondExpertPolicy::kAll, false},
                      CudaCase{"dot", 2, 0.0, 1, SecondExpertPolicy::kAll, true},
                      CudaCase{"dot", 2, 0.5, 1, SecondExpertPolicy::kRandom, false},
                      CudaCase{"dot", 2, 0.0, 1, SecondExpertPolicy::kSampling, false},
                      CudaCase{"noisy_topk", 2, 0.0, 1, SecondExpertPolicy::kAll, false},
                      CudaCase{"noisy_topk", 2, 1.0, 2, SecondExpertPolicy::kAll, true},
                      CudaCase{"xmoe", 1, 0.0, 1, SecondExpertPolicy::kAll, false},
                      CudaCase{"xmoe", 2, 1.25, 3, SecondExpertPolicy::kAll, true},
                      CudaCase{"xmoe_torchscale", 1, 0.0, 1, SecondExpertPolicy::kAll, false},
                      CudaCase{"xmoe_torchscale", 2, 0.0, 2, SecondExpertPolicy::kAll, false}),
    cuda_case_name);

// Evaluation mode without autograd (how a trained model is served): same routing and output.
TEST(CudaMoELayerEval, EveryRouterMatchesCpuWithoutGrad) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device";
  for (const std::string router : {"dot", "noisy_topk", "xmoe", "xmoe_torchscale"}) {
    SCOPED_TRACE(router);
    auto options = MoELayerOptions(8, 12, 4).router(router).top_k(2).capacity_factor(1.0).seed(2);
    MoELayer cpu(MoELayerOptions(options).expert_path(ExpertPath::kReference));
    MoELayer gpu(options);
    at::Generator gen = make_generator(9);
    if (router == "noisy_topk") {
      at::NoGradGuard no_grad;
      for (auto& p : cpu->router().parameters()) p.normal_(0, 1, gen);
    }
    gpu->to(kCuda);
    copy_state(*gpu, *cpu);
    cpu->eval();
    gpu->eval();
    at::Tensor h = at::empty({23, 8}).normal_(0, 1, gen);
    at::NoGradGuard no_grad;
    MoEOutput a = cpu->forward(h);
    MoEOutput b = gpu->forward(h.to(kCuda));
    EXPECT_EQ(b.routing.stats.path, "reference");
    EXPECT_TRUE(at::equal(a.routing.expert_ids, b.routing.expert_ids.cpu()));
    EXPECT_TRUE(Close(a.output, b.output, "output"));
  }
}

// The fast path is CPU float32 only: float64 on CUDA is the reference path too.
TEST(CudaMoELayerEval, DoubleOnCudaUsesTheReferencePath) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device";
  MoELayer layer(MoELayerOptions(4, 6, 3).seed(1));
  layer->to(kCuda, at::kDouble);
  MoEOutput out = layer->forward(at::randn({5, 4}, at::TensorOptions().dtype(at::kDouble).device(kCuda)));
  EXPECT_EQ(out.routing.stats.path, "reference");
  EXPECT_TRUE(out.output.is_cuda());
  EXPECT_EQ(out.output.scalar_type(), at::kDouble);
}

// The whole encoder (attention, MoE layers, masked-LM head) on CUDA equals the CPU.
TEST(CudaEncoder, MlmLossAndGradientsMatchCpu) {
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device";
  auto options = EncoderOptions(20, 32, 2, 4, 64)
                     .max_len(16)
                     .dropout(0.0)
                     .attention_dropout(0.0)
                     .moe_layers({1})
                     .moe(MoELayerOptions(32, 64, 4).router("xmoe").top_k(2))
                     .seed(3);
  MoEEncoder cpu(EncoderOptions(options).moe(
      MoELayerOptions(*options.moe()).expert_path(ExpertPath::kReference)));
  MoEEncoder gpu(options);
  gpu->to(kCuda);
  copy_state(*gpu, *cpu);
  at::Generator gen = make_generator(4);
  at::Tensor ids = at::randint(1, 20, {3, 10}, gen, at::TensorOptions().dtype(at::kLong));
  ids[2].narrow(0, 7, 3).fill_(0);  // padding
  at::Tensor labels = at::full({3, 10}, -100, at::kLong);
  labels[0][1] = 4;
  labels[1][5] = 9;
  labels[2][2] = 13;
  MlmOutput a = cpu->mlm(ids, labels);
  MlmOutput b = gpu->mlm(ids.to(kCuda), labels.to(kCuda));
  (a.loss + a.encoder.aux_loss).backward();
  (b.loss + b.encoder.aux_loss).backward();
  EXPECT_TRUE(b.loss.is_cuda());
  EXPECT_EQ(a.n_predicted, b.n_predicted);
  EXPECT_TRUE(Close(a.loss, b.loss, "loss"));
  EXPECT_TRUE(Close(a.encoder.aux_loss, b.encoder.aux_loss, "aux_loss"));
  ASSERT_EQ(b.encoder.moe.size(), 1u);
  EXPECT_EQ(b.encoder.moe[0].routing.stats.path, "reference");
  auto gpu_params = gpu->named_parameters(/*recurse=*/true);
  for (const auto& item : cpu->named_parameters(/*recurse=*/true)) {
    EXPECT_TRUE(Close(item.value().grad(), gpu_params[item.key()].grad(), "grad of " + item.key(),
                      1e-3, 1e-5));
  }
}

}  // namespace
}  // namespace xmoe
