// layer.json parsing (SPEC §8): defaults, every key, every error, and the to_json round trip.
#include "test_util.h"

#include "xmoe/io/layer_config.h"
#include "xmoe/io/safetensors.h"  // FileFormatError

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <initializer_list>
#include <string>

namespace {

using nlohmann::json;
using xmoe::Activation;
using xmoe::FileFormatError;
using xmoe::GateKind;
using xmoe::MoELayerOptions;
using xmoe::SecondExpertPolicy;
using xmoe::parse_layer_config;
using xmoe_test::Contains;

const char* const kSource = "configs/my_layer.json";

json base_config() { return {{"d_model", 8}, {"d_ff", 16}, {"n_expert", 6}, {"top_k", 1}}; }

// Parses `text` expecting a FileFormatError whose message contains the source and every needle.
void expect_config_error(const std::string& text, std::initializer_list<std::string> needles) {
  SCOPED_TRACE(text);
  try {
    parse_layer_config(text, kSource);
    ADD_FAILURE() << "parse_layer_config accepted: " << text;
  } catch (const FileFormatError& e) {
    const std::string message = e.what();
    EXPECT_TRUE(Contains(message, kSource));
    for (const std::string& needle : needles) EXPECT_TRUE(Contains(message, needle));
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected xmoe::FileFormatError, got another exception: " << e.what();
  }
}

// `base_config()` with key = value.
std::string with(const std::string& key, const json& value) {
  json j = base_config();
  j[key] = value;
  return j.dump();
}

TEST(LayerConfig, RequiredKeysAndDefaults) {
  const MoELayerOptions o = parse_layer_config(base_config().dump(), kSource);
  EXPECT_EQ(o.d_model(), 8);
  EXPECT_EQ(o.d_ff(), 16);
  EXPECT_EQ(o.n_expert(), 6);
  EXPECT_EQ(o.top_k(), 1);
  EXPECT_EQ(o.router(), "dot");
  EXPECT_EQ(o.gate(), GateKind::kSoftmax);
  EXPECT_TRUE(o.normalize_topk());
  EXPECT_EQ(o.second_expert_policy(), SecondExpertPolicy::kAll);
  EXPECT_EQ(o.capacity_factor(), 0.0);
  EXPECT_EQ(o.activation(), Activation::kGelu);
  EXPECT_EQ(o.expert_depth(), 1);
  EXPECT_FALSE(o.d_e().has_value());
  EXPECT_EQ(o.router_options().resolved_d_e(), 3);  // max(2, 6 / 2)
  EXPECT_EQ(o.expert_norm(), 1.5);
  EXPECT_FALSE(o.temperature_init().has_value());
  EXPECT_DOUBLE_EQ(o.router_options().resolved_temperature_init(), 0.3);
  EXPECT_DOUBLE_EQ(o.balance_temperature(), 0.07);
  EXPECT_TRUE(o.normalize_tokens());
  EXPECT_TRUE(o.dim_reduction());
  EXPECT_TRUE(o.l2_norm());
  EXPECT_DOUBLE_EQ(o.balance_coef(), 0.01);
  EXPECT_DOUBLE_EQ(o.importance_coef(), 0.01);
  EXPECT_DOUBLE_EQ(o.load_coef(), 0.01);
  EXPECT_EQ(o.z_loss_coef(), 0.0);
  EXPECT_DOUBLE_EQ(o.noise_epsilon(), 1e-2);
}

TEST(LayerConfig, DefaultRoutingDimIsHalfTheExpertsAtLeastTwo) {
  for (const auto& [experts, d_e] : {std::pair<int, int>{2, 2}, {3, 2}, {4, 2}, {5, 2}, {9, 4},
                                     {32, 16}}) {
    json j = base_config();
    j["n_expert"] = experts;
    const MoELayerOptions o = parse_layer_config(j.dump(), kSource);
    EXPECT_EQ(o.router_options().resolved_d_e(), d_e) << "n_expert " << experts;
  }
}

TEST(LayerConfig, DefaultTemperatureDependsOnGate) {
  const MoELayerOptions soft = parse_layer_config(with("gate", "softmax"), kSource);
  EXPECT_DOUBLE_EQ(soft.router_options().resolved_temperature_init(), 0.3);
  const MoELayerOptions sig = parse_layer_config(with("gate", "sigmoid"), kSource);
  EXPECT_EQ(sig.gate(), GateKind::kSigmoid);
  EXPECT_DOUBLE_EQ(sig.router_options().resolved_temperature_init(), 0.07);
  // An explicit value wins over both defaults.
  json j = base_config();
  j["gate"] = "sigmoid";
  j["temperature_init"] = 0.5;
  EXPECT_DOUBLE_EQ(parse_layer_config(j.dump(), kSource).router_options().resolved_temperature_init(),
                   0.5);
}

json all_keys_config() {
  return {{"d_model", 12},
          {"d_ff", 20},
          {"n_expert", 8},
          {"top_k", 2},
          {"router", "xmoe"},
          {"gate", "sigmoid"},
          {"normalize_topk", false},
          {"second_expert_policy", "sampling"},
          {"capacity_factor", 1.25},
          {"eval_capacity_factor", 2.0},
          {"activation", "relu"},
          {"expert_depth", 3},
          {"d_e", 5},
          {"expert_norm", 2.5},
          {"temperature_init", 0.11},
          {"balance_temperature", 0.2},
          {"normalize_tokens", false},
          {"dim_reduction", false},
          {"l2_norm", false},
          {"balance_coef", 0.02},
          {"importance_coef", 0.03},
          {"load_coef", 0.04},
          {"z_loss_coef", 0.001},
          {"noise_epsilon", 0.05}};
}

TEST(LayerConfig, EveryKeySet) {
  const MoELayerOptions o = parse_layer_config(all_keys_config().dump(), kSource);
  EXPECT_EQ(o.d_model(), 12);
  EXPECT_EQ(o.d_ff(), 20);
  EXPECT_EQ(o.n_expert(), 8);
  EXPECT_EQ(o.top_k(), 2);
  EXPECT_EQ(o.router(), "xmoe");
  EXPECT_EQ(o.gate(), GateKind::kSigmoid);
  EXPECT_FALSE(o.normalize_topk());
  EXPECT_EQ(o.second_expert_policy(), SecondExpertPolicy::kSampling);
  EXPECT_DOUBLE_EQ(o.capacity_factor(), 1.25);
  ASSERT_TRUE(o.eval_capacity_factor().has_value());
  EXPECT_DOUBLE_EQ(*o.eval_capacity_factor(), 2.0);
  EXPECT_EQ(o.activation(), Activation::kRelu);
  EXPECT_EQ(o.expert_depth(), 3);
  ASSERT_TRUE(o.d_e().has_value());
  EXPECT_EQ(*o.d_e(), 5);
  EXPECT_EQ(o.router_options().resolved_d_e(), 5);
  EXPECT_DOUBLE_EQ(o.expert_norm(), 2.5);
  ASSERT_TRUE(o.temperature_init().has_value());
  EXPECT_DOUBLE_EQ(*o.temperature_init(), 0.11);
  EXPECT_DOUBLE_EQ(o.router_options().resolved_temperature_init(), 0.11);
  EXPECT_DOUBLE_EQ(o.balance_temperature(), 0.2);
  EXPECT_FALSE(o.normalize_tokens());
  EXPECT_FALSE(o.dim_reduction());
  EXPECT_FALSE(o.l2_norm());
  EXPECT_DOUBLE_EQ(o.balance_coef(), 0.02);
  EXPECT_DOUBLE_EQ(o.importance_coef(), 0.03);
  EXPECT_DOUBLE_EQ(o.load_coef(), 0.04);
  EXPECT_DOUBLE_EQ(o.z_loss_coef(), 0.001);
  EXPECT_DOUBLE_EQ(o.noise_epsilon(), 0.05);
  // The router options the layer hands to its router carry the same values.
  const xmoe::RouterOptions r = o.router_options();
  EXPECT_EQ(r.kind(), "xmoe");
  EXPECT_EQ(r.top_k(), 2);
  EXPECT_EQ(r.d_model(), 12);
  EXPECT_EQ(r.n_expert(), 8);
  EXPECT_FALSE(r.dim_reduction());
  EXPECT_DOUBLE_EQ(r.noise_epsilon(), 0.05);
}

TEST(LayerConfig, EveryRouterGateAndPolicyValueIsAccepted) {
  for (const char* router : {"dot", "noisy_topk", "xmoe", "xmoe_torchscale"}) {
    EXPECT_EQ(parse_layer_config(with("router", router), kSource).router(), router);
  }
  EXPECT_EQ(parse_layer_config(with("activation", "gelu"), kSource).activation(), Activation::kGelu);
  EXPECT_EQ(parse_layer_config(with("second_expert_policy", "random"), kSource).second_expert_policy(),
            SecondExpertPolicy::kRandom);
  EXPECT_EQ(parse_layer_config(with("second_expert_policy", "all"), kSource).second_expert_policy(),
            SecondExpertPolicy::kAll);
  // An integer is a valid number for a float key.
  EXPECT_DOUBLE_EQ(parse_layer_config(with("capacity_factor", 2), kSource).capacity_factor(), 2.0);
}

TEST(LayerConfig, MissingRequiredKey) {
  for (const char* key : {"d_model", "d_ff", "n_expert", "top_k"}) {
    json j = base_config();
    j.erase(key);
    expect_config_error(j.dump(), {std::string("'") + key + "'", "missing"});
  }
}

TEST(LayerConfig, DuplicateKeyIsAnError) {
  expect_config_error(R"({"d_model": 8, "d_ff": 16, "n_expert": 4, "top_k": 1, "top_k": 2})",
                      {"'top_k'", "more than once"});
}

TEST(LayerConfig, UnknownKeyListsKnownKeys) {
  expect_config_error(with("temprature_init", 0.3),
                      {"'temprature_init'", "unknown", "temperature_init", "d_model", "noise_epsilon",
                       "second_expert_policy", "z_loss_coef"});
}

TEST(LayerConfig, WrongTypes) {
  expect_config_error(with("d_model", "8"), {"'d_model'", "integer"});       // string for int
  expect_config_error(with("d_ff", 16.0), {"'d_ff'", "integer"});            // float for int
  expect_config_error(with("top_k", 1.5), {"'top_k'", "integer"});
  expect_config_error(with("expert_depth", true), {"'expert_depth'", "integer"});
  expect_config_error(with("l2_norm", 1), {"'l2_norm'"});                    // int for bool
  expect_config_error(with("normalize_topk", "true"), {"'normalize_topk'"}); // string for bool
  expect_config_error(with("capacity_factor", "1.0"), {"'capacity_factor'", "number"});
  expect_config_error(with("expert_norm", false), {"'expert_norm'", "number"});
  expect_config_error(with("router", 1), {"'router'", "string"});
  expect_config_error(with("gate", json::array({"softmax"})), {"'gate'", "string"});
  expect_config_error(with("d_e", json::object()), {"'d_e'", "integer"});
}

TEST(LayerConfig, InvalidValues) {
  expect_config_error(with("top_k", 7), {"top_k", "7"});  // n_expert = 6
  expect_config_error(with("top_k", 0), {"top_k"});
  expect_config_error(with("capacity_factor", -0.5), {"capacity_factor"});
  expect_config_error(with("eval_capacity_factor", -1), {"eval_capacity_factor"});
  // Validation errors name the key, not the C++ option class that checks it.
  expect_config_error(with("top_k", 7), {std::string(kSource) + ": top_k = 7 must be in [1, n_expert = 6]"});
  expect_config_error(with("d_e", 0), {"d_e"});
  expect_config_error(with("d_ff", 0), {"d_ff"});
  expect_config_error(with("d_model", -3), {"d_model"});
  expect_config_error(with("n_expert", 0), {"n_expert"});
  expect_config_error(with("expert_depth", 0), {"expert_depth"});
  expect_config_error(with("expert_norm", 0.0), {"expert_norm"});
  expect_config_error(with("temperature_init", -0.1), {"temperature_init"});
  expect_config_error(with("balance_temperature", 0), {"balance_temperature"});
  expect_config_error(with("noise_epsilon", 0.0), {"noise_epsilon"});
  expect_config_error(with("balance_coef", -1), {"balance_coef"});
  expect_config_error(with("z_loss_coef", -1e-3), {"z_loss_coef"});
  // Values that become float32 weights must fit in float32: 1e300 would be inf, 1e-300 zero.
  expect_config_error(with("expert_norm", 1e300), {"expert_norm = 1e+300", "fit in float32"});
  expect_config_error(with("temperature_init", 1e-300), {"temperature_init = 1e-300", "fit in float32"});
  // Sizes beyond any machine fail at once, before modules or weights are built.
  expect_config_error(with("expert_depth", 100000000000LL),
                      {"n_expert × expert_depth × 2 × d_model × d_ff", "limit of 2^34"});
  expect_config_error(with("d_ff", 4000000000LL), {"limit of 2^34"});
}

TEST(LayerConfig, UnknownEnumValuesListAllowedValues) {
  expect_config_error(with("router", "switch"),
                      {"router", "'switch'", "dot", "noisy_topk", "xmoe", "xmoe_torchscale"});
  expect_config_error(with("gate", "tanh"), {"gate", "'tanh'", "softmax", "sigmoid"});
  expect_config_error(with("activation", "silu"), {"activation", "'silu'", "gelu", "relu"});
  expect_config_error(with("second_expert_policy", "best"),
                      {"second_expert_policy", "'best'", "all", "random", "sampling"});
}

TEST(LayerConfig, MalformedJsonAndNonObjectRoot) {
  expect_config_error("{\"d_model\": 8, \"d_ff\": 16,", {"JSON"});
  expect_config_error("", {"JSON"});
  expect_config_error("{\"d_model\": 8} trailing", {"JSON"});
  expect_config_error("[1, 2, 3]", {"object", "array"});
  expect_config_error("42", {"object"});
  expect_config_error("\"d_model\"", {"object"});
}

TEST(LayerConfig, LoadNamesTheMissingFile) {
  xmoe_test::TempDir dir;
  const std::string path = dir.file("absent.json");
  try {
    xmoe::load_layer_config(path);
    ADD_FAILURE() << "load_layer_config accepted a missing file";
  } catch (const FileFormatError& e) {
    EXPECT_TRUE(Contains(e.what(), path));
  }
  // A file on disk: errors name its path.
  const std::string bad = dir.file("layer.json");
  xmoe_test::write_file(bad, with("gate", "tanh"));
  try {
    xmoe::load_layer_config(bad);
    ADD_FAILURE() << "load_layer_config accepted gate = tanh";
  } catch (const FileFormatError& e) {
    EXPECT_TRUE(Contains(e.what(), bad));
    EXPECT_TRUE(Contains(e.what(), "gate"));
  }
  xmoe_test::write_file(bad, all_keys_config().dump());
  EXPECT_EQ(xmoe::load_layer_config(bad).expert_depth(), 3);
}

// Every key of the config, compared with resolved optional values.
void expect_same_options(const MoELayerOptions& a, const MoELayerOptions& b) {
  EXPECT_EQ(a.d_model(), b.d_model());
  EXPECT_EQ(a.d_ff(), b.d_ff());
  EXPECT_EQ(a.n_expert(), b.n_expert());
  EXPECT_EQ(a.top_k(), b.top_k());
  EXPECT_EQ(a.router(), b.router());
  EXPECT_EQ(a.gate(), b.gate());
  EXPECT_EQ(a.normalize_topk(), b.normalize_topk());
  EXPECT_EQ(a.second_expert_policy(), b.second_expert_policy());
  EXPECT_EQ(a.capacity_factor(), b.capacity_factor());
  EXPECT_EQ(a.eval_capacity_factor(), b.eval_capacity_factor());
  EXPECT_EQ(a.activation(), b.activation());
  EXPECT_EQ(a.expert_depth(), b.expert_depth());
  EXPECT_EQ(a.router_options().resolved_d_e(), b.router_options().resolved_d_e());
  EXPECT_EQ(a.expert_norm(), b.expert_norm());
  EXPECT_EQ(a.router_options().resolved_temperature_init(),
            b.router_options().resolved_temperature_init());
  EXPECT_EQ(a.balance_temperature(), b.balance_temperature());
  EXPECT_EQ(a.normalize_tokens(), b.normalize_tokens());
  EXPECT_EQ(a.dim_reduction(), b.dim_reduction());
  EXPECT_EQ(a.l2_norm(), b.l2_norm());
  EXPECT_EQ(a.balance_coef(), b.balance_coef());
  EXPECT_EQ(a.importance_coef(), b.importance_coef());
  EXPECT_EQ(a.load_coef(), b.load_coef());
  EXPECT_EQ(a.z_loss_coef(), b.z_loss_coef());
  EXPECT_EQ(a.noise_epsilon(), b.noise_epsilon());
}

TEST(LayerConfig, ToJsonRoundTrip) {
  // Non-default values everywhere, including doubles that are not exact in decimal.
  MoELayerOptions o = MoELayerOptions(10, 7, 5)
                          .top_k(3)
                          .router("noisy_topk")
                          .gate(GateKind::kSigmoid)
                          .normalize_topk(false)
                          .capacity_factor(1.0 / 3.0)
                          .eval_capacity_factor(2.5)
                          .activation(Activation::kRelu)
                          .expert_depth(2)
                          .d_e(3)
                          .expert_norm(0.1 + 0.2)
                          .temperature_init(0.123456789012345)
                          .balance_temperature(0.7)
                          .normalize_tokens(false)
                          .dim_reduction(false)
                          .l2_norm(false)
                          .balance_coef(1e-3)
                          .importance_coef(2e-3)
                          .load_coef(3e-3)
                          .z_loss_coef(4e-3)
                          .noise_epsilon(5e-3);
  const std::string text = xmoe::layer_config_to_json(o);
  const MoELayerOptions back = parse_layer_config(text, "round-trip");
  expect_same_options(o, back);
  EXPECT_EQ(xmoe::layer_config_to_json(back), text);

  // Every key is written, defaults resolved; eval_capacity_factor only when set (unset, it
  // follows capacity_factor).
  const json j = json::parse(text);
  const json all = all_keys_config();
  for (const auto& item : all.items()) EXPECT_TRUE(j.contains(item.key())) << item.key();
  EXPECT_EQ(j.size(), all.size());

  // Defaults: the written d_e and temperature are the resolved ones.
  const MoELayerOptions d = parse_layer_config(base_config().dump(), kSource);
  const json dj = json::parse(xmoe::layer_config_to_json(d));
  EXPECT_EQ(dj.at("d_e").get<int64_t>(), 3);
  EXPECT_FALSE(dj.contains("eval_capacity_factor"));
  EXPECT_DOUBLE_EQ(dj.at("temperature_init").get<double>(), 0.3);
  expect_same_options(d, parse_layer_config(dj.dump(), "defaults"));

  // The all-keys config survives a round trip too.
  const MoELayerOptions a = parse_layer_config(all.dump(), kSource);
  expect_same_options(a, parse_layer_config(xmoe::layer_config_to_json(a), "all"));
  EXPECT_EQ(json::parse(xmoe::layer_config_to_json(a)), all);
}

}  // namespace
