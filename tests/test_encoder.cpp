// The MoE Transformer encoder: shapes, padding, tied head, MoE placement, and a toy masked-LM
// task it must learn.
#include "xmoe/model/encoder.h"
#include "xmoe/util/init.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/optim/adamw.h>

namespace xmoe {
namespace {

EncoderOptions tiny(int64_t vocab, std::vector<int64_t> moe_layers, std::string router = "xmoe") {
  return EncoderOptions(vocab, 32, 2, 4, 64)
      .max_len(16)
      .dropout(0.0)
      .attention_dropout(0.0)
      .moe_layers(std::move(moe_layers))
      .moe(MoELayerOptions(32, 64, 4).router(router))
      .seed(3);
}

TEST(Encoder, ShapesMoEPlacementAndAuxLoss) {
  MoEEncoder model(tiny(20, {1}));
  at::Tensor ids = at::randint(5, 20, {3, 10}, at::kLong);
  EncoderOutput out = model->encode(ids);
  EXPECT_EQ(out.hidden.sizes(), (std::vector<int64_t>{3, 10, 32}));
  ASSERT_EQ(out.moe.size(), 1u);
  EXPECT_EQ(out.moe_layer_index[0], 1);
  EXPECT_EQ(out.moe_input[0].sizes(), (std::vector<int64_t>{30, 32}));
  EXPECT_GT(out.aux_loss.item<double>(), 0.0);
  EXPECT_FALSE(model->layers()[0]->is_moe());
  MoEEncoder dense(tiny(20, {}));
  EXPECT_EQ(dense->encode(ids).aux_loss.item<double>(), 0.0);
}

TEST(Encoder, PaddingIsNeitherAttendedNorRouted) {
  MoEEncoder model(tiny(20, {0, 1}, "dot"));
  model->eval();
  at::Tensor ids = at::randint(5, 20, {2, 8}, at::kLong);
  at::Tensor padded = at::cat({ids, at::zeros({2, 4}, at::kLong)}, 1);
  EncoderOutput a = model->encode(ids), b = model->encode(padded);
  EXPECT_TRUE(at::allclose(a.hidden, b.hidden.narrow(1, 0, 8), 1e-4, 1e-5));
  EXPECT_EQ(b.moe[0].routing.expert_ids.size(0), 16);  // only the 16 real tokens were routed
}

TEST(Encoder, HeadIsTiedToTheTokenEmbedding) {
  MoEEncoder model(tiny(20, {}));
  auto params = model->named_parameters();
  EXPECT_EQ(params.find("head.weight"), nullptr);
  EXPECT_NE(params.find("tokens.weight"), nullptr);
  at::Tensor ids = at::randint(5, 20, {2, 6}, at::kLong);
  at::Tensor labels = at::full({2, 6}, -100, at::kLong);
  labels[0][2] = 7;
  labels[1][5] = 9;
  MlmOutput out = model->mlm(ids, labels);
  EXPECT_EQ(out.n_predicted, 2);
  EXPECT_EQ(out.logits.sizes(), (std::vector<int64_t>{2, 20}));
  out.loss.backward();
  EXPECT_GT(params["tokens.weight"].grad().abs().sum().item<double>(), 0.0);
}

// mlm() runs the last layer after its attention only at the labelled positions. That must be
// exact: the same loss, logits, aux loss, routing statistics and every parameter gradient as the
// full last layer, for a dense and an MoE last layer (dropless and with capacity), pre- and
// post-LN, with padding in the batch.
TEST(Encoder, PrunedLastLayerEqualsFullLastLayer) {
  struct Case {
    std::vector<int64_t> moe_layers;
    bool pre_norm;
    const char* router;
    int64_t top_k;
    double capacity_factor;
  };
  for (const Case& c : {Case{{}, true, "dot", 1, 0.0}, Case{{1}, true, "dot", 2, 1.0},
                        Case{{0, 1}, true, "xmoe", 1, 0.0}, Case{{}, false, "dot", 1, 0.0},
                        Case{{1}, false, "xmoe", 2, 0.0}}) {
    SCOPED_TRACE(std::string(c.pre_norm ? "pre-LN" : "post-LN") + " moe layers " +
                 std::to_string(c.moe_layers.size()) + " router " + c.router);
    auto make = [&](bool prune) {
      EncoderOptions o = tiny(20, c.moe_layers, c.router).pre_norm(c.pre_norm).prune_last_layer(prune);
      o.moe()->top_k(c.top_k).capacity_factor(c.capacity_factor);
      MoEEncoder m(o);
      m->train();
      return m;
    };
    MoEEncoder full = make(false), pruned = make(true);
    at::Generator gen = make_generator(21);
    at::Tensor ids = at::randint(5, 20, {3, 12}, gen, at::kLong);
    ids.narrow(1, 9, 3).select(0, 1).fill_(0);  // sequence 1 ends in padding
    at::Tensor labels = at::where(at::rand({3, 12}, gen) < 0.3, ids, at::full_like(ids, -100));
    labels.masked_fill_(ids.eq(0), -100);
    labels[0][0] = 7;

    MlmOutput a = full->mlm(ids, labels), b = pruned->mlm(ids, labels);
    ASSERT_GT(a.n_predicted, 0);
    EXPECT_EQ(b.n_predicted, a.n_predicted);
    EXPECT_EQ(b.encoder.hidden.sizes(), (std::vector<int64_t>{a.n_predicted, 32}));
    EXPECT_TRUE(at::allclose(b.logits, a.logits, 1e-4, 1e-5));
    EXPECT_NEAR(b.loss.item<double>(), a.loss.item<double>(), 1e-5);
    EXPECT_NEAR(b.encoder.aux_loss.item<double>(), a.encoder.aux_loss.item<double>(), 1e-6);
    ASSERT_EQ(b.encoder.moe.size(), a.encoder.moe.size());
    for (size_t i = 0; i < a.encoder.moe.size(); ++i) {
      EXPECT_TRUE(at::equal(b.encoder.moe[i].routing.stats.tokens_per_expert,
                            a.encoder.moe[i].routing.stats.tokens_per_expert));
    }
    (a.loss + a.encoder.aux_loss).backward();
    (b.loss + b.encoder.aux_loss).backward();
    auto pa = full->named_parameters(), pb = pruned->named_parameters();
    for (const auto& item : pa) {
      SCOPED_TRACE(item.key());
      const at::Tensor ga = item.value().grad(), gb = pb[item.key()].grad();
      ASSERT_EQ(ga.defined(), gb.defined());
      if (!ga.defined()) continue;
      const double scale = ga.abs().max().item<double>();
      EXPECT_LE((ga - gb).abs().max().item<double>(), 1e-4 * scale + 1e-7);
    }
  }
}

TEST(Encoder, BadOptionsNameTheField) {
  EXPECT_THROW(MoEEncoder(EncoderOptions(20, 30, 2, 4, 64)), std::invalid_argument);  // 30 % 4
  EXPECT_THROW(MoEEncoder(tiny(20, {2})), std::invalid_argument);                     // no layer 2
  try {
    MoEEncoder model(EncoderOptions(20, 32, 2, 4, 64).moe_layers({1}));
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("MoE options"), std::string::npos) << e.what();
  }
  for (const EncoderOptions& huge : {EncoderOptions(20, 32, 2, 4, 64).max_len(int64_t{1} << 40),
                                     EncoderOptions(20, 32, int64_t{1} << 33, 4, 64)}) {
    try {
      MoEEncoder model(huge);  // must fail before building 2^33 layers or a 2^40-row table
      FAIL();
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("limit of 2^34"), std::string::npos) << e.what();
    }
  }
}

// Each sequence repeats one random token; a masked position is predictable only through
// attention to the other positions. The model must get far below the uniform loss log(V).
TEST(Encoder, LearnsAToyMaskedLMTask) {
  const int64_t vocab = 16, offset = 5, n = vocab - offset, batch = 32, len = 12;
  MoEEncoder model(tiny(vocab, {1}));
  model->train();
  torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(3e-3).weight_decay(0.0));
  at::Generator gen = make_generator(9);
  double last = 0;
  for (int step = 0; step < 150; ++step) {
    at::Tensor start = at::randint(0, n, {batch, 1}, gen, at::kLong);
    at::Tensor ids = (start + offset).expand({batch, len}).contiguous();
    at::Tensor chosen = at::rand({batch, len}, gen) < 0.15;
    at::Tensor labels = at::where(chosen, ids, at::full_like(ids, -100));
    at::Tensor input = at::where(chosen, at::full_like(ids, 4), ids);  // 4 = [MASK]
    MlmOutput out = model->mlm(input, labels);
    at::Tensor loss = out.loss + out.encoder.aux_loss;
    opt.zero_grad();
    loss.backward();
    opt.step();
    last = 0.9 * last + 0.1 * out.loss.item<double>();
  }
  EXPECT_LT(last, 0.5) << "uniform guessing gives " << std::log(static_cast<double>(n));
}

}  // namespace
}  // namespace xmoe
