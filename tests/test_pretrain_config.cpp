// The pre-training config: defaults, overrides, every kind of config error, the round trip of
// the resolved config, and the learning-rate schedule.
#include "xmoe/io/safetensors.h"  // FileFormatError
#include "xmoe/train/lr_schedule.h"
#include "xmoe/train/pretrain_config.h"
#include "xmoe/train/trainer.h"  // encoder_options

#include <filesystem>

#include <gtest/gtest.h>

#include "test_util.h"

namespace {

using xmoe::FileFormatError;
using xmoe::parse_pretrain_config;
using xmoe_test::Contains;

const char* kMinimal = R"({
  "data": {"corpus": "c", "tokenizer": "t.model"},
  "model": {"d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64, "moe_layers": [1]},
  "moe": {"n_expert": 4, "top_k": 1, "router": "xmoe"},
  "train": {"steps": 10, "warmup_steps": 2}
})";

// The message of the FileFormatError that parsing `text` with `overrides` throws.
std::string error_of(const std::string& text, const std::vector<std::string>& overrides = {}) {
  try {
    parse_pretrain_config(text, "cfg.json", overrides);
  } catch (const FileFormatError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(PretrainConfig, FillsDefaultsAndTakesTheMoESizesFromTheModel) {
  const auto c = parse_pretrain_config(kMinimal, "cfg.json");
  EXPECT_EQ(c.name, "run");
  EXPECT_EQ(c.data.max_len, 128);
  EXPECT_EQ(c.data.packing, "whole");  // what configs without the key were trained with
  EXPECT_DOUBLE_EQ(c.train.beta2, 0.98);
  EXPECT_DOUBLE_EQ(c.train.eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.train.weight_decay, 0.01);
  ASSERT_TRUE(c.moe.has_value());
  EXPECT_EQ(c.moe->d_model(), 32);
  EXPECT_EQ(c.moe->d_ff(), 64);  // moe.d_ff defaults to model.d_ff
  EXPECT_EQ(c.moe->router(), "xmoe");
}

TEST(PretrainConfig, OverridesSetNestedKeysWithJsonOrStringValues) {
  const auto c = parse_pretrain_config(
      kMinimal, "cfg.json",
      {"train.lr=3e-4", "data.corpus=some/dir", "moe.top_k=2", "model.moe_layers=[0,1]", "name=x"});
  EXPECT_DOUBLE_EQ(c.train.lr, 3e-4);
  EXPECT_EQ(c.data.corpus, "some/dir");
  EXPECT_EQ(c.moe->top_k(), 2);
  EXPECT_EQ(c.model.moe_layers, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(c.name, "x");
}

TEST(PretrainConfig, DenseModelHasNoMoESection) {
  const auto c = parse_pretrain_config(kMinimal, "cfg.json", {"moe=null", "model.moe_layers=[]"});
  EXPECT_FALSE(c.moe.has_value());
}

TEST(PretrainConfig, ResolvedConfigParsesBackToItself) {
  const auto c = parse_pretrain_config(kMinimal, "cfg.json", {"train.clip_norm=0.5"});
  const std::string resolved = c.to_json();
  EXPECT_EQ(parse_pretrain_config(resolved, "resolved").to_json(), resolved);
}

TEST(PretrainConfig, EveryErrorNamesTheSourceAndTheKey) {
  EXPECT_TRUE(Contains(error_of(R"({"data": {"corpus": "c"}, "nonsense": 1})"),
                       "cfg.json: nonsense: unknown key"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"train.learning_rate=1"}),
                       "train.learning_rate: unknown key (known in train: steps, lr"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"train.steps=\"ten\""}),
                       "train.steps: must be an integer, got string \"ten\""));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"train.steps=2.5"}), "train.steps: must be an integer"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"train.lr=-1"}), "train.lr: must be in (0, inf), got -1"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"train.beta2=1"}), "train.beta2: must be in [0, 1)"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"data.alpha=0"}), "data.alpha: must be in (0, 1]"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"model.pre_norm=1"}), "model.pre_norm: must be true or false"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"model.init_seed=-3"}), "model.init_seed: must be a non-negative integer"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"model.n_heads=5"}), "model.n_heads: must divide model.d_model (32)"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"model.moe_layers=[2]"}), "model.moe_layers: index 2 is outside [0, 2)"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"model.moe_layers=[1,1]"}), "appears twice"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"moe=null"}), "moe: is null but model.moe_layers places MoE layers"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"model.moe_layers=[]"}), "model.moe_layers: is empty but a moe section"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"moe.n_expert=0"}), "cfg.json: moe: "));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"moe.top_k=9"}), "cfg.json: moe: top_k = 9 must be in [1, n_expert = 4]"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"train.steps=ten"}),
                       "train.steps: must be an integer, got string \"ten\" (from --set train.steps=ten)"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"moe.router=\"nope\""}), "nope"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"moe.colour=1"}), "moe: unknown key 'colour'"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"moe.d_model=16"}), "moe.d_model: must equal model.d_model (32)"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"train.warmup_steps=11"}), "train.warmup_steps: must be <= train.steps (10)"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"data.batch_tokens=64"}), "data.batch_tokens: must be >= data.max_len (128)"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"data.batch_tokens=1000000000000"}),
                       "data.batch_tokens: must be in [3, 16777216], got 1000000000000"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"model.d_ff=10000000000"}), "limit of 2^34"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"data.corpus=\"\""}), "data.corpus: must not be empty"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"data.packing=tight"}), "data.packing: unknown line packing 'tight' (known: whole, fill), got \"tight\""));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"data.languages=[\"en\",\"en\"]"}), "data.languages: entries must be non-empty and distinct"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"train=3"}), "train: must be an object"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"name=a/b"}), "name: must be a non-empty name without '/'"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"train.lr"}), "--set: expected key=value"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"train..lr=1"}), "malformed key"));
  EXPECT_TRUE(Contains(error_of(R"({"train": {"steps": 1, "steps": 2}})"), "key 'steps' appears more than once"));
  EXPECT_TRUE(Contains(error_of("{\"train\": "), "cfg.json: not valid JSON"));
  EXPECT_TRUE(Contains(error_of(R"({"train": {"lr": 1e999}})"), "cfg.json: "));
  EXPECT_TRUE(Contains(error_of(R"({"train": {"lr": 1e999}})"), "number overflow parsing '1e999'"));
  EXPECT_TRUE(Contains(error_of(kMinimal, {"train.steps=9223372036854775808"}),
                       "train.steps: is too large: 9223372036854775808"));
  EXPECT_TRUE(Contains(error_of(R"({"model": {"d_model": 8}})"), "data.corpus: is required"));
}

TEST(PretrainConfig, MissingFileIsNamed) {
  try {
    xmoe::load_pretrain_config("/nonexistent/cfg.json");
    ADD_FAILURE() << "no error";
  } catch (const FileFormatError& e) {
    EXPECT_TRUE(Contains(e.what(), "/nonexistent/cfg.json: cannot open"));
  }
  // Not files: a directory would read as nothing, /dev/zero without end.
  for (const char* path : {"/tmp", "/dev/zero"}) {
    SCOPED_TRACE(path);
    EXPECT_TRUE(Contains(xmoe_test::error_message<FileFormatError>(
                             [&] { xmoe::load_pretrain_config(path); }),
                         std::string(path) + ": cannot read pre-training config: not a regular file"));
  }
}

TEST(PretrainConfig, EveryShippedConfigIsValidAndNamedAfterItsFile) {
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator(XMOE_SOURCE_DIR "/configs")) {
    if (entry.path().extension() != ".json") continue;
    SCOPED_TRACE(entry.path().string());
    const auto c = xmoe::load_pretrain_config(entry.path().string());
    EXPECT_EQ(c.name, entry.path().stem().string());
    EXPECT_NO_THROW(xmoe::encoder_options(c, 8000).validate());
    ++n;
  }
  EXPECT_EQ(n, 16);  // 8 variants × {tiny, small}
}

TEST(LearningRateSchedule, WarmsUpLinearlyThenDecaysToTheFinalRatio) {
  // peak 1e-3, W = 4, S = 12, r = 0.1, i = steps done: 1e-3·(i+1)/4 for i < 4, then
  // 1e-3·(0.1 + 0.9·(12 − i)/8).
  EXPECT_DOUBLE_EQ(xmoe::learning_rate_at(0, 1e-3, 4, 12, 0.1), 2.5e-4);
  EXPECT_DOUBLE_EQ(xmoe::learning_rate_at(2, 1e-3, 4, 12, 0.1), 7.5e-4);
  EXPECT_DOUBLE_EQ(xmoe::learning_rate_at(4, 1e-3, 4, 12, 0.1), 1e-3);
  EXPECT_DOUBLE_EQ(xmoe::learning_rate_at(8, 1e-3, 4, 12, 0.1), 1e-3 * (0.1 + 0.9 * 0.5));
  EXPECT_DOUBLE_EQ(xmoe::learning_rate_at(11, 1e-3, 4, 12, 0.1), 1e-3 * (0.1 + 0.9 / 8));
  EXPECT_DOUBLE_EQ(xmoe::learning_rate_at(0, 1e-3, 0, 1, 0.0), 1e-3);  // a single step: the peak
}

}  // namespace
