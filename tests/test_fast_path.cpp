// The fast expert path (gather → grouped oneDNN GEMMs → combine, hand-written backward) equals
// the plain autograd reference path: outputs and every gradient.
#include "xmoe/kernels/dispatch_plan.h"
#include "xmoe/kernels/gemm.h"
#include "xmoe/kernels/gemm_weight.h"
#include "xmoe/kernels/grouped_ffn.h"
#include "xmoe/kernels/permute.h"
#include "xmoe/moe/expert_stack.h"
#include "xmoe/moe/moe_layer.h"
#include "xmoe/util/init.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <tuple>
#include <vector>

namespace xmoe {
namespace {

struct FastCase {
  std::string router;
  int64_t top_k;
  double capacity_factor;
  int64_t depth;
  Activation activation;
};

std::string fast_case_name(const ::testing::TestParamInfo<FastCase>& info) {
  const FastCase& c = info.param;
  std::string name = c.router + "_k" + std::to_string(c.top_k) + "_cf" +
                     std::to_string(static_cast<int>(c.capacity_factor * 10)) + "_depth" +
                     std::to_string(c.depth) + "_" + to_string(c.activation);
  return name;
}

class FastPathEqualsReference : public ::testing::TestWithParam<FastCase> {};

TEST_P(FastPathEqualsReference, OutputsAndAllGradients) {
  const FastCase& c = GetParam();
  // T = 37 is not a multiple of any tile; 6 experts for 37 tokens under a skewed router leave
  // some experts empty.
  const int64_t n_tokens = 37, d_model = 12, d_ff = 20, n_expert = 6;
  auto options = MoELayerOptions(d_model, d_ff, n_expert)
                     .router(c.router)
                     .top_k(c.top_k)
                     .capacity_factor(c.capacity_factor)
                     .expert_depth(c.depth)
                     .activation(c.activation)
                     .seed(11);
  MoELayer fast(options.expert_path(ExpertPath::kFast));
  MoELayer reference(options.expert_path(ExpertPath::kReference));
  if (c.router == "dot") {
    // Skew the router so that expert 5 receives no token.
    at::NoGradGuard no_grad;
    for (MoELayer* layer : {&fast, &reference}) {
      auto params = (*layer)->router().named_parameters();
      params["weight"][5].fill_(0);
      params["weight"][5][0] = -50.0;
    }
  }
  at::Generator gen = make_generator(5);
  at::Tensor h = at::empty({n_tokens, d_model}).normal_(0, 1, gen);
  h.select(1, 0).abs_();  // with weight[5] = −50·e0, expert 5 always loses
  at::Tensor grad_out = at::empty({n_tokens, d_model}).normal_(0, 1, gen);
  at::Tensor noise = at::empty({n_tokens, n_expert}).normal_(0, 1, gen);

  std::vector<at::Tensor> outputs, input_grads;
  std::vector<std::vector<at::Tensor>> param_grads;
  for (MoELayer* layer : {&fast, &reference}) {
    (*layer)->train();
    at::Tensor x = h.clone().requires_grad_();
    MoEOutput out = (*layer)->forward(x, MoEInputs{at::Tensor(), noise, at::Tensor()});
    ((out.output * grad_out).sum() + out.aux_loss).backward();
    outputs.push_back(out.output.detach());
    input_grads.push_back(x.grad());
    std::vector<at::Tensor> grads;
    for (const auto& p : (*layer)->parameters()) {
      grads.push_back(p.grad().defined() ? p.grad() : at::zeros_like(p));
    }
    param_grads.push_back(grads);
    EXPECT_EQ(out.routing.stats.path, layer == &fast ? "fast" : "reference");
    if (c.router == "dot") {
      EXPECT_EQ(out.routing.stats.tokens_per_expert[5].item<int64_t>(), 0);
    }
  }
  EXPECT_TRUE(at::allclose(outputs[0], outputs[1], 1e-4, 1e-5))
      << (outputs[0] - outputs[1]).abs().max();
  EXPECT_TRUE(at::allclose(input_grads[0], input_grads[1], 1e-4, 1e-5))
      << (input_grads[0] - input_grads[1]).abs().max();
  auto names = fast->named_parameters();
  ASSERT_EQ(param_grads[0].size(), param_grads[1].size());
  for (size_t i = 0; i < param_grads[0].size(); ++i) {
    EXPECT_TRUE(at::allclose(param_grads[0][i], param_grads[1][i], 1e-4, 1e-5))
        << names[i].key() << ": max diff " << (param_grads[0][i] - param_grads[1][i]).abs().max();
  }
}

INSTANTIATE_TEST_SUITE_P(
    Routers, FastPathEqualsReference,
    ::testing::Values(FastCase{"dot", 1, 0.0, 1, Activation::kGelu},
                      FastCase{"dot", 2, 0.0, 1, Activation::kGelu},
                      FastCase{"dot", 3, 0.0, 1, Activation::kRelu},
                      FastCase{"dot", 1, 1.0, 1, Activation::kGelu},
                      FastCase{"dot", 2, 0.5, 1, Activation::kGelu},
                      FastCase{"dot", 2, 0.0, 3, Activation::kGelu},
                      FastCase{"noisy_topk", 2, 0.0, 1, Activation::kGelu},
                      FastCase{"noisy_topk", 2, 1.0, 2, Activation::kRelu},
                      FastCase{"xmoe", 1, 0.0, 1, Activation::kGelu},
                      FastCase{"xmoe", 2, 1.25, 3, Activation::kGelu},
                      FastCase{"xmoe_torchscale", 1, 0.0, 1, Activation::kGelu}),
    fast_case_name);

TEST(FastPath, DoubleAndReferenceRequestsUseTheReferencePath) {
  MoELayer layer(MoELayerOptions(4, 6, 3).seed(1));
  layer->to(at::kDouble);
  MoEOutput out = layer->forward(at::randn({5, 4}, at::kDouble));
  EXPECT_EQ(out.routing.stats.path, "reference");
}

// oneDNN's sgemm against the ATen product it falls back to, and both against a float64 product:
// every transpose combination, padded row strides, beta = 0 over NaN garbage and beta = 1.
TEST(FastPathKernels, SgemmEqualsTheAtenProductForEveryLayout) {
  const int64_t m = 7, n = 5, k = 9, pad = 3;
  at::Generator gen = xmoe::make_generator(3);
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      for (float beta : {0.0f, 1.0f}) {
        SCOPED_TRACE(testing::Message() << "trans_a " << ta << " trans_b " << tb << " beta " << beta);
        at::Tensor a = at::randn({ta ? k : m, (ta ? m : k) + pad}, gen);  // row stride = cols + pad
        at::Tensor b = at::randn({tb ? n : k, (tb ? k : n) + pad}, gen);
        at::Tensor c0 = beta == 0.0f ? at::full({m, n + pad}, NAN) : at::randn({m, n + pad}, gen);
        at::Tensor c1 = c0.clone(), c2 = c0.clone();
        auto call = [&](auto gemm, at::Tensor& c) {
          gemm(ta, tb, m, n, k, 0.5f, a.data_ptr<float>(), a.size(1), b.data_ptr<float>(), b.size(1),
               beta, c.data_ptr<float>(), c.size(1));
        };
        call(xmoe::kernels::sgemm, c1);
        call(xmoe::kernels::sgemm_aten, c2);
        at::Tensor op_a = (ta ? a.narrow(1, 0, m).t() : a.narrow(1, 0, k)).to(at::kDouble);
        at::Tensor op_b = (tb ? b.narrow(1, 0, k).t() : b.narrow(1, 0, n)).to(at::kDouble);
        at::Tensor expected = 0.5 * op_a.mm(op_b);
        if (beta != 0.0f) expected += c0.narrow(1, 0, n).to(at::kDouble);
        EXPECT_TRUE(c1.narrow(1, 0, n).to(at::kDouble).allclose(expected, 1e-5, 1e-5));
        EXPECT_TRUE(c2.narrow(1, 0, n).to(at::kDouble).allclose(expected, 1e-5, 1e-5));
        for (const at::Tensor* c : {&c1, &c2}) {  // the padding columns are never written
          const at::Tensor padding = c->narrow(1, n, pad);
          EXPECT_TRUE(beta == 0.0f ? padding.isnan().all().item<bool>()
                                   : padding.equal(c0.narrow(1, n, pad)));
        }
      }
    }
  }
}

// Aᵀ·B with a wide operand whose row stride is a multiple of 2 KiB and a narrow other side: sgemm
// copies the wide operand into padded rows first (oneDNN is twice as slow on such strides). Only
// the first m (or n) columns of each row are operands; the padding must not leak into C.
TEST(FastPathKernels, SgemmWithAliasedRowStridesEqualsTheFloat64Product) {
  at::Generator gen = xmoe::make_generator(6);
  const int64_t k = 33, narrow = 7;
  for (bool wide_a : {true, false}) {
    for (int64_t wide : {512, 600}) {
      for (int64_t ld : {512, 1024}) {
        if (ld < wide) continue;
        SCOPED_TRACE(testing::Message() << "wide " << (wide_a ? "A" : "B") << " " << wide << " ld "
                                        << ld);
        const int64_t m = wide_a ? wide : narrow, n = wide_a ? narrow : wide;
        const int64_t lda = wide_a ? ld : m, ldb = wide_a ? n : ld;
        at::Tensor a = at::randn({k, lda}, gen), b = at::randn({k, ldb}, gen);
        at::Tensor c0 = at::randn({m, n}, gen);
        at::Tensor c = c0.clone();
        xmoe::kernels::sgemm(true, false, m, n, k, 0.5f, a.data_ptr<float>(), lda,
                             b.data_ptr<float>(), ldb, 1.0f, c.data_ptr<float>(), n);
        at::Tensor op_a = a.narrow(1, 0, m).t().to(at::kDouble);
        at::Tensor op_b = b.narrow(1, 0, n).to(at::kDouble);
        const at::Tensor expected = 0.5 * op_a.mm(op_b) + c0.to(at::kDouble);
        EXPECT_TRUE(c.to(at::kDouble).allclose(expected, 1e-5, 1e-5));
      }
    }
  }
}

// The scheduling policy: every non-empty block exactly once with its own rows; a block with more
// than 1/(2·threads) of the rows runs outside any parallel region (its GEMMs use every thread),
// the others inside one, unless only one of them is left; one thread runs everything serially;
// an exception reaches the caller.
TEST(FastPathKernels, ExpertBlocksRunOnceEachLargeOnesOnAllThreads) {
  // 60 of 100 rows in block 0, block 1 empty
  const std::vector<int64_t> offsets = {0, 60, 60, 64, 70, 78, 79, 100};
  for (int threads : {1, 2}) {
    SCOPED_TRACE(testing::Message() << threads << " threads");
    at::set_num_threads(threads);
    std::vector<int> visits(offsets.size() - 1, 0), in_parallel(offsets.size() - 1, -1);
    xmoe::kernels::for_each_expert_block(offsets, [&](int64_t e, int64_t row0, int64_t rows) {
      EXPECT_EQ(row0, offsets[e]);
      EXPECT_EQ(rows, offsets[e + 1] - offsets[e]);
#pragma omp critical
      {
        ++visits[e];
        in_parallel[e] = omp_in_parallel() ? 1 : 0;
      }
    });
    EXPECT_EQ(visits, (std::vector<int>{1, 0, 1, 1, 1, 1, 1}));
    for (size_t e = 2; e < visits.size(); ++e) EXPECT_EQ(in_parallel[e], threads == 2 ? 1 : 0) << e;
    EXPECT_EQ(in_parallel[0], 0);  // the large block
    auto throw_in_block_4 = [](int64_t e, int64_t, int64_t) {
      if (e == 4) throw std::runtime_error("block 4");
    };
    EXPECT_THROW(xmoe::kernels::for_each_expert_block(offsets, throw_in_block_4), std::runtime_error);
    // One large block and one small one: the small one alone would idle a thread, so it too
    // runs outside a parallel region.
    std::vector<int> lone_in_parallel(2, -1);
    xmoe::kernels::for_each_expert_block({0, 90, 100}, [&](int64_t e, int64_t, int64_t) {
      lone_in_parallel[e] = omp_in_parallel() ? 1 : 0;
    });
    EXPECT_EQ(lone_in_parallel, (std::vector<int>{0, 0}));
  }
  at::set_num_threads(1);
}

TEST(FastPathKernels, GroupedFFNHandlesManyExpertsAcrossThreads) {
  // Many small blocks take the across-experts branch when more than one thread is available.
  at::Generator gen = make_generator(3);
  const int64_t n_expert = 40, d = 8, f = 16;
  std::vector<int64_t> offsets(n_expert + 1, 0);
  for (int64_t e = 0; e < n_expert; ++e) offsets[e + 1] = offsets[e] + (e % 3);  // some empty
  const int64_t n = offsets.back();
  at::Tensor xs = at::empty({n, d}).normal_(0, 1, gen).requires_grad_();
  at::Tensor w1 = at::empty({n_expert, f, d}).normal_(0, 0.3, gen).requires_grad_();
  at::Tensor b1 = at::empty({n_expert, f}).normal_(0, 0.3, gen).requires_grad_();
  at::Tensor w2 = at::empty({n_expert, d, f}).normal_(0, 0.3, gen).requires_grad_();
  at::Tensor b2 = at::empty({n_expert, d}).normal_(0, 0.3, gen).requires_grad_();
  for (int threads : {1, 2}) {
    at::set_num_threads(threads);
    at::Tensor ys = kernels::grouped_ffn(xs, w1, b1, w2, b2, offsets, Activation::kGelu);
    for (int64_t e = 0; e < n_expert; ++e) {
      const int64_t rows = offsets[e + 1] - offsets[e];
      if (rows == 0) continue;
      at::Tensor x_e = xs.narrow(0, offsets[e], rows);
      at::Tensor expected = at::addmm(b2[e], at::gelu(at::addmm(b1[e], x_e, w1[e].t())), w2[e].t());
      EXPECT_TRUE(at::allclose(ys.narrow(0, offsets[e], rows), expected, 1e-5, 1e-5)) << e;
    }
  }
  at::set_num_threads(1);
}

TEST(FastPathKernels, GemmWeightsStartAtThePlacementForThisCpu) {
  const int64_t offset = kernels::gemm_weight_offset_bytes();
  ASSERT_TRUE(offset == 0 || offset == 16) << offset;
  auto bytes_past_32 = [](const at::Tensor& t) {
    return static_cast<int64_t>(reinterpret_cast<std::uintptr_t>(t.data_ptr<float>()) % 32);
  };
  for (int repeat = 0; repeat < 8; ++repeat) {  // fresh allocations land at different addresses
    at::Tensor w = kernels::empty_gemm_weight({3, 16, 8});
    EXPECT_EQ(w.sizes(), at::IntArrayRef({3, 16, 8}));
    EXPECT_TRUE(w.is_contiguous());
    EXPECT_FALSE(w.is_view());
    EXPECT_EQ(bytes_past_32(w), offset);
    EXPECT_EQ(bytes_past_32(w[2]), offset);  // every expert's matrix, not just the first
    w.fill_(2.f);
    EXPECT_EQ(w.sum().item<float>(), 2.f * 3 * 16 * 8);
  }
  // The experts' weights are placed so, as trainable leaves with their usual initial values.
  ExpertSublayer placed(4, 8, 16, false, 11);
  at::Generator gen = make_generator(11);
  const at::Tensor w1_plain = uniform_init({4, 16, 8}, 1.0 / std::sqrt(8.0), gen);
  for (const at::Tensor& w : {placed->w1, placed->w2}) {
    EXPECT_EQ(bytes_past_32(w), offset);
    EXPECT_TRUE(w.is_leaf() && w.requires_grad() && w.is_contiguous());
  }
  EXPECT_TRUE(at::equal(placed->w1, w1_plain));
}

TEST(FastPathKernels, GatherAndCombineAreAdjoint) {
  // <combine(gather(x)), g> checks forward; gradients against index ops check backward.
  at::Generator gen = make_generator(4);
  at::Tensor ids = at::tensor({2, 0, 1, 2, 2, 1, 0, 0}, at::kLong).reshape({4, 2});
  DispatchPlan plan = make_dispatch_plan(ids, {}, 3, /*capacity=*/2);
  at::Tensor x = at::empty({4, 5}).normal_(0, 1, gen).requires_grad_();
  at::Tensor gates = at::empty({4, 2}).uniform_(0.1, 1, gen).requires_grad_();
  at::Tensor ys = kernels::gather_rows(x, plan.token_index, plan.row_of_slot) * 2.0;
  at::Tensor y = kernels::combine_rows(ys.contiguous(), gates, plan.row_of_slot);
  at::Tensor g = at::empty({4, 5}).normal_(0, 1, gen);
  (y * g).sum().backward();

  at::Tensor x2 = x.detach().clone().requires_grad_();
  at::Tensor gates2 = gates.detach().clone().requires_grad_();
  at::Tensor kept = plan.kept.to(at::kFloat);
  at::Tensor expected = (2.0 * x2.unsqueeze(1) * (gates2 * kept).unsqueeze(2)).sum(1);
  (expected * g).sum().backward();
  EXPECT_TRUE(at::allclose(y, expected, 1e-6, 1e-6));
  EXPECT_TRUE(at::allclose(x.grad(), x2.grad(), 1e-6, 1e-6));
  EXPECT_TRUE(at::allclose(gates.grad(), gates2.grad(), 1e-6, 1e-6));
}

}  // namespace
}  // namespace xmoe
