// clipped_adamw_step against torch::nn::utils::clip_grad_norm_ + torch::optim::AdamW::step on
// the same parameters and gradients: parameters, moments, step counts and the returned norm.
#include "xmoe/train/fused_adamw.h"
#include "xmoe/train/training_state.h"
#include "xmoe/util/init.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/nn/utils/clip_grad.h>

#include <cmath>
#include <limits>
#include <memory>
#include <vector>

namespace {

using xmoe::make_generator;

struct Params : torch::nn::Module {
  std::vector<at::Tensor> decay, no_decay;  // two groups, as the trainer builds them
  std::unique_ptr<torch::optim::AdamW> optimizer;

  explicit Params(at::ScalarType dtype = at::kFloat) {
    // w1 spans three of the gradient norm's 2¹⁵-element chunks, the last one partial.
    decay = {register_parameter("w0", at::empty({37, 5}, dtype).normal_(0, 1, make_generator(1))),
             register_parameter("w1", at::empty({3, 100, 230}, dtype).normal_(0, 1, make_generator(2)))};
    no_decay = {register_parameter("b0", at::empty({5}, dtype).normal_(0, 1, make_generator(3)))};
    auto options = [](double wd) {
      return std::make_unique<torch::optim::AdamWOptions>(
          torch::optim::AdamWOptions(3e-3).betas({0.9, 0.98}).eps(1e-6).weight_decay(wd));
    };
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(decay, options(0.01));
    groups.emplace_back(no_decay, options(0.0));
    optimizer = std::make_unique<torch::optim::AdamW>(groups, torch::optim::AdamWOptions(3e-3));
  }
  std::vector<at::Tensor> params() const {
    std::vector<at::Tensor> all = decay;
    all.insert(all.end(), no_decay.begin(), no_decay.end());
    return all;
  }
  void set_grads(uint64_t seed, double scale) {
    uint64_t s = seed;
    for (at::Tensor& p : params()) p.mutable_grad() = at::empty_like(p).normal_(0, scale, make_generator(s++));
  }
};

TEST(FusedAdamW, MatchesTorchClipAndAdamWOverSeveralSteps) {
  for (double max_norm : {0.5, std::numeric_limits<double>::infinity()}) {
    Params torch_side, fused;
    for (int step = 0; step < 4; ++step) {
      torch_side.set_grads(100 + step, 1.0 + step);
      fused.set_grads(100 + step, 1.0 + step);
      const double expected = torch::nn::utils::clip_grad_norm_(torch_side.params(), max_norm);
      torch_side.optimizer->step();
      const double got = xmoe::clipped_adamw_step(*fused.optimizer, max_norm);
      EXPECT_NEAR(got, expected, 1e-5 * expected) << "step " << step;
    }
    const auto a = torch_side.params(), b = fused.params();
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_TRUE(at::allclose(a[i], b[i], 1e-5, 1e-6)) << "parameter " << i << " max_norm " << max_norm;
    }
    // Moments and step counts, as the checkpoint code reads them.
    const xmoe::TensorMap sa = xmoe::adamw_state(*torch_side.optimizer, torch_side);
    const xmoe::TensorMap sb = xmoe::adamw_state(*fused.optimizer, fused);
    ASSERT_EQ(sa.size(), 9u);
    ASSERT_EQ(sb.size(), 9u);
    for (const auto& [name, t] : sa) {
      if (name.size() > 5 && name.compare(name.size() - 5, 5, ".step") == 0) {
        EXPECT_EQ(t.item<int64_t>(), 4) << name;
        EXPECT_TRUE(at::equal(t, sb.at(name))) << name;
      } else {
        EXPECT_TRUE(at::allclose(t, sb.at(name), 1e-5, 1e-7)) << name << " max_norm " << max_norm;
      }
    }
  }
}

TEST(FusedAdamW, NonFiniteGradientsUpdateNothing) {
  Params s;
  s.set_grads(1, 1.0);
  xmoe::clipped_adamw_step(*s.optimizer, 1.0);
  const std::vector<at::Tensor> before = [&] {
    std::vector<at::Tensor> copy;
    for (const at::Tensor& p : s.params()) copy.push_back(p.detach().clone());
    return copy;
  }();
  s.set_grads(2, 1.0);
  s.decay[0].mutable_grad()[3][1] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE(std::isfinite(xmoe::clipped_adamw_step(*s.optimizer, 1.0)));
  for (size_t i = 0; i < before.size(); ++i) EXPECT_TRUE(at::equal(before[i], s.params()[i])) << i;
  for (const auto& [key, state] : s.optimizer->state()) {
    (void)key;
    EXPECT_EQ(static_cast<torch::optim::AdamWParamState&>(*state).step(), 1);
  }
}

TEST(FusedAdamW, SkipsParametersWithoutGradientsAndFallsBackForDouble) {
  Params s;
  s.set_grads(5, 1.0);
  s.no_decay[0].mutable_grad().reset();
  const at::Tensor untouched = s.no_decay[0].detach().clone();
  xmoe::clipped_adamw_step(*s.optimizer, 1.0);
  EXPECT_TRUE(at::equal(untouched, s.no_decay[0]));
  EXPECT_EQ(s.optimizer->state().size(), 2u);  // no state for the parameter without a gradient

  // float64 parameters take torch's own ops: the result equals torch exactly.
  Params a(at::kDouble), b(at::kDouble);
  a.set_grads(7, 2.0);
  b.set_grads(7, 2.0);
  torch::nn::utils::clip_grad_norm_(a.params(), 1.0);
  a.optimizer->step();
  xmoe::clipped_adamw_step(*b.optimizer, 1.0);
  for (size_t i = 0; i < a.params().size(); ++i) EXPECT_TRUE(at::equal(a.params()[i], b.params()[i])) << i;
}

TEST(FusedAdamW, GradientNormIsTheSameForAnyThreadCount) {
  const int threads = at::get_num_threads();
  std::vector<double> norms;
  for (int n : {1, 2, 3}) {
    at::set_num_threads(n);
    Params p;
    p.set_grads(7, 3.0);
    norms.push_back(xmoe::clipped_adamw_step(*p.optimizer, 1.0));
  }
  at::set_num_threads(threads);
  EXPECT_EQ(norms[1], norms[0]);
  EXPECT_EQ(norms[2], norms[0]);
}

}  // namespace
