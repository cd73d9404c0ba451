// The real `xmoe` binary (SPEC §8): layer-init + layer-forward against the same layer run
// in-process, malformed inputs, help and demo.
//
// Every launch of the binary pays LibTorch's start-up (~0.8 s of CPU), so independent
// invocations of one test run two at a time from a single shell script.
#include "test_data_util.h"
#include "test_util.h"

#include "xmoe/data/tokenizer_trainer.h"
#include "xmoe/io/layer_config.h"
#include "xmoe/io/safetensors.h"
#include "xmoe/moe/moe_layer.h"
#include "xmoe/util/init.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <stdexcept>
#include <sstream>
#include <string>
#include <vector>

#ifndef XMOE_CLI_PATH
#error "XMOE_CLI_PATH must name the xmoe binary (see CMakeLists.txt)"
#endif

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using xmoe::TensorMap;
using xmoe_test::Contains;
using xmoe_test::TempDir;

constexpr int64_t kTokens = 7;
constexpr int64_t kModel = 6;
constexpr int64_t kFF = 8;
constexpr int64_t kExperts = 4;
constexpr int64_t kRouteDim = 2;  // max(2, kExperts / 2)

// ---- running the binary ---------------------------------------------------------------------

struct CliResult {
  std::string args;
  bool exited = false;  // false: killed by a signal (crash)
  int code = -1;        // exit status when exited
  std::string out, err;
};

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += (c == '\'') ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Runs `xmoe <args>` for each entry (args are already shell words), in `dir`, two at a time.
std::vector<CliResult> run_cli_all(const TempDir& dir, const std::vector<std::string>& args) {
  std::vector<CliResult> results(args.size());
  std::ostringstream script;
  script << "cd " << quote(dir.path()) << " || exit 99\n";
  for (int chain = 0; chain < 2; ++chain) {
    script << "(\n  :\n";
    for (std::size_t i = chain; i < args.size(); i += 2) {
      const std::string job = dir.file(".job" + std::to_string(i));
      script << "  " << quote(XMOE_CLI_PATH) << " " << args[i] << " >" << quote(job + ".out")
             << " 2>" << quote(job + ".err") << "\n"
             << "  echo $? >" << quote(job + ".rc") << "\n";
    }
    script << ") &\n";
  }
  script << "wait\n";
  const std::string script_path = dir.file(".jobs.sh");
  xmoe_test::write_file(script_path, script.str());
  const int status = std::system(("sh " + quote(script_path)).c_str());
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "job script failed: " << status;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string job = dir.file(".job" + std::to_string(i));
    CliResult& r = results[i];
    r.args = args[i];
    r.out = xmoe_test::read_file(job + ".out");
    r.err = xmoe_test::read_file(job + ".err");
    const std::string rc = xmoe_test::read_file(job + ".rc");
    if (!rc.empty()) {
      const int shell_status = std::stoi(rc);
      r.exited = shell_status < 128;  // the shell reports death by signal n as 128 + n
      r.code = shell_status;
    }
    fs::remove(job + ".out");
    fs::remove(job + ".err");
    fs::remove(job + ".rc");
  }
  return results;
}

::testing::AssertionResult Succeeded(const CliResult& r) {
  if (r.exited && r.code == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "xmoe " << r.args << "\n exited " << r.exited
                                       << " code " << r.code << "\n stdout: " << r.out
                                       << "\n stderr: " << r.err;
}

// ---- files --------------------------------------------------------------------------------

at::Tensor normal(at::IntArrayRef shape, uint64_t seed, at::ScalarType dtype, double std = 1.0) {
  return at::empty(shape, at::kDouble).normal_(0.0, std, xmoe::make_generator(seed)).to(dtype);
}

std::string write_json(const TempDir& dir, const std::string& name, const json& j) {
  const std::string path = dir.file(name);
  xmoe_test::write_file(path, j.dump(2));
  return path;
}

std::string write_tensors(const TempDir& dir, const std::string& name, const TensorMap& tensors) {
  const std::string path = dir.file(name);
  xmoe::save_safetensors(path, tensors);
  return path;
}

json layer_json(const std::string& router, int64_t top_k) {
  return {{"d_model", kModel}, {"d_ff", kFF}, {"n_expert", kExperts}, {"top_k", top_k},
          {"router", router}};
}

// SPEC §8 weight names and shapes of a layer.
std::map<std::string, std::vector<int64_t>> spec_weights(const std::string& router,
                                                         int64_t depth) {
  std::map<std::string, std::vector<int64_t>> w;
  if (router == "dot") {
    w["router.weight"] = {kExperts, kModel};
  } else if (router == "noisy_topk") {
    w["router.w_gate"] = {kModel, kExperts};
    w["router.w_noise"] = {kModel, kExperts};
  } else {
    w["router.proj"] = {kRouteDim, kModel};
    w["router.expert_embed"] = {kExperts, kRouteDim};
    w["router.temperature"] = {1};
  }
  for (int64_t j = 0; j < depth; ++j) {
    const std::string p = "experts." + std::to_string(j) + ".";
    w[p + "w1"] = {kExperts, kFF, kModel};
    w[p + "b1"] = {kExperts, kFF};
    w[p + "w2"] = {kExperts, kModel, kFF};
    w[p + "b2"] = {kExperts, kModel};
    if (depth > 1) {
      w[p + "ln_weight"] = {kExperts, kModel};
      w[p + "ln_bias"] = {kExperts, kModel};
    }
  }
  return w;
}

std::set<std::string> keys_of(const TensorMap& m) {
  std::set<std::string> out;
  for (const auto& item : m) out.insert(item.first);
  return out;
}

// The same layer in-process: config and weights from the files, run the way SPEC §8 says.
TensorMap reference_forward(const std::string& config_path, const TensorMap& weights,
                            const at::Tensor& input, const at::Tensor& noise,
                            const at::Tensor& grad_output, bool train) {
  xmoe::MoELayer layer(xmoe::load_layer_config(config_path));
  layer->to(input.scalar_type());
  {
    at::NoGradGuard no_grad;
    for (auto& item : layer->named_parameters()) {
      const at::Tensor& w = weights.at(item.key());
      if (w.sizes() != item.value().sizes()) throw std::invalid_argument("shape of " + item.key());
      item.value().copy_(w);
    }
  }
  layer->train(train);
  at::Tensor x = input.clone().requires_grad_(grad_output.defined());
  xmoe::MoEOutput out = layer->forward(x, xmoe::MoEInputs{at::Tensor(), noise, at::Tensor()});
  TensorMap r;
  r["output"] = out.output.detach();
  r["expert_ids"] = out.routing.expert_ids;
  r["gates"] = out.routing.gates.detach();
  r["scores"] = out.routing.scores.detach();
  for (const auto& item : out.routing.aux) r["aux." + item.first] = item.second.detach();
  if (grad_output.defined()) {
    (out.output * grad_output).sum().backward();
    r["grad.input"] = x.grad().detach();
    for (auto& item : layer->named_parameters()) {
      const at::Tensor& g = item.value().grad();
      r["grad." + item.key()] = g.defined() ? g.detach() : at::zeros_like(item.value());
    }
  }
  return r;
}

// ---- the layer-forward matrix -----------------------------------------------------------------

struct ForwardCase {
  std::string label;
  std::string config;   // path
  std::string weights;  // path
  std::string router;
  int64_t top_k = 1;
  int64_t depth = 1;
  bool train = false;
  at::ScalarType dtype = at::kFloat;
  bool with_grad = true;
  bool with_noise = false;
  uint64_t seed = 1;
  // filled by prepare()
  std::string input_path = {}, grad_path = {}, out_path = {};
  at::Tensor input = {}, noise = {}, grad_output = {};
};

std::string prepare(const TempDir& dir, ForwardCase& c, int index) {
  const std::string stem = "case" + std::to_string(index);
  c.input = normal({kTokens, kModel}, c.seed, c.dtype);
  TensorMap in{{"input", c.input}};
  if (c.with_noise) {
    c.noise = normal({kTokens, kExperts}, c.seed + 100, c.dtype);
    in["noise"] = c.noise;
  }
  c.input_path = write_tensors(dir, stem + "_input.safetensors", in);
  c.out_path = dir.file(stem + "_out.safetensors");
  std::string args = "--threads 1 layer-forward --config " + quote(c.config) + " --weights " +
                     quote(c.weights) + " --input " + quote(c.input_path) + " --out " +
                     quote(c.out_path);
  if (c.with_grad) {
    c.grad_output = normal({kTokens, kModel}, c.seed + 200, c.dtype);
    c.grad_path = write_tensors(dir, stem + "_grad.safetensors", {{"grad_output", c.grad_output}});
    args += " --grad-output " + quote(c.grad_path);
  }
  if (c.train) args += " --train";
  return args;
}

void expect_close(const at::Tensor& got, const at::Tensor& want, at::ScalarType dtype,
                  const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  const double rtol = dtype == at::kDouble ? 1e-10 : 1e-4;
  const double atol = dtype == at::kDouble ? 1e-12 : 1e-5;
  EXPECT_TRUE(at::allclose(got.to(at::kDouble), want.to(at::kDouble), rtol, atol))
      << what << ": max |diff| " << (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>();
}

void check_forward_case(const ForwardCase& c) {
  SCOPED_TRACE(c.label);
  ASSERT_TRUE(fs::exists(c.out_path));
  const TensorMap got = xmoe::load_safetensors(c.out_path);
  const TensorMap weights = xmoe::load_safetensors(c.weights);

  // Names exactly as SPEC §8.
  std::set<std::string> expected = {"output", "expert_ids", "gates", "scores", "aux.balance", "aux.z"};
  if (c.router == "noisy_topk") {
    expected.insert("aux.importance");
    expected.insert("aux.load");
  }
  if (c.with_grad) {
    expected.insert("grad.input");
    for (const auto& item : spec_weights(c.router, c.depth)) expected.insert("grad." + item.first);
  }
  EXPECT_EQ(keys_of(got), expected);

  // Shapes and dtypes.
  const auto shape = [&](const std::string& name) { return got.at(name).sizes().vec(); };
  EXPECT_EQ(shape("output"), (std::vector<int64_t>{kTokens, kModel}));
  EXPECT_EQ(shape("expert_ids"), (std::vector<int64_t>{kTokens, c.top_k}));
  EXPECT_EQ(shape("gates"), (std::vector<int64_t>{kTokens, c.top_k}));
  EXPECT_EQ(shape("scores"), (std::vector<int64_t>{kTokens, kExperts}));
  for (const auto& item : got) {
    if (item.first.rfind("aux.", 0) == 0) {
      EXPECT_EQ(item.second.dim(), 0) << item.first;
    }
    if (item.first == "expert_ids") {
      EXPECT_EQ(item.second.scalar_type(), at::kLong);
    } else {
      EXPECT_EQ(item.second.scalar_type(), c.dtype) << item.first;
    }
  }
  at::Tensor ids = got.at("expert_ids");
  EXPECT_TRUE(ids.ge(0).all().item<bool>() && ids.lt(kExperts).all().item<bool>());
  if (c.with_grad) {
    EXPECT_EQ(shape("grad.input"), (std::vector<int64_t>{kTokens, kModel}));
    for (const auto& item : spec_weights(c.router, c.depth)) {
      if (got.count("grad." + item.first)) {
        EXPECT_EQ(shape("grad." + item.first), item.second);
      }
    }
  }

  // The same numbers as the layer in-process.
  const TensorMap want =
      reference_forward(c.config, weights, c.input, c.noise, c.grad_output, c.train);
  for (const auto& item : want) {
    if (got.count(item.first) == 0) continue;  // reported by the name check
    if (item.first == "expert_ids") {
      EXPECT_TRUE(at::equal(got.at(item.first), item.second)) << got.at(item.first) << item.second;
    } else {
      expect_close(got.at(item.first), item.second, c.dtype, item.first);
    }
  }
  if (c.with_grad) {
    EXPECT_GT(got.at("grad.input").abs().max().item<double>(), 0.0);
  }
}

// Weights written by layer-init: SPEC names, shapes, floating dtype, finite.
void check_init_weights(const std::string& path, const std::string& router, int64_t depth) {
  SCOPED_TRACE(path);
  const TensorMap w = xmoe::load_safetensors(path);
  const auto spec = spec_weights(router, depth);
  std::set<std::string> names;
  for (const auto& item : spec) names.insert(item.first);
  ASSERT_EQ(keys_of(w), names);
  for (const auto& item : spec) {
    const at::Tensor& t = w.at(item.first);
    EXPECT_EQ(t.sizes().vec(), item.second) << item.first;
    EXPECT_TRUE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble) << item.first;
    EXPECT_TRUE(at::isfinite(t).all().item<bool>()) << item.first;
  }
}

TEST(CliLayerForward, EveryRouterMatchesTheLayerInProcess) {
  TempDir dir("xmoe_cli");
  const std::string dot = write_json(dir, "dot.json", layer_json("dot", 1));
  json dot_sigmoid = layer_json("dot", 1);
  dot_sigmoid["gate"] = "sigmoid";
  const std::string dot_sig = write_json(dir, "dot_sigmoid.json", dot_sigmoid);
  json gshard = layer_json("dot", 2);
  gshard["capacity_factor"] = 0.75;  // C = ceil(0.75 · 2 · 7 / 4) = 3 of 14 slots per expert
  gshard["z_loss_coef"] = 1e-3;
  const std::string gshard_path = write_json(dir, "gshard.json", gshard);
  const std::string noisy = write_json(dir, "noisy.json", layer_json("noisy_topk", 2));
  const std::string xmoe_soft = write_json(dir, "xmoe.json", layer_json("xmoe", 1));
  json xs = layer_json("xmoe", 2);
  xs["gate"] = "sigmoid";
  xs["expert_depth"] = 2;
  xs["activation"] = "relu";
  const std::string xmoe_sig = write_json(dir, "xmoe_sigmoid.json", xs);

  const std::string w_dot = dir.file("dot.safetensors");
  const std::string w_noisy_init = dir.file("noisy_init.safetensors");
  const std::string w_xmoe = dir.file("xmoe.safetensors");
  const std::string w_xmoe_sig = dir.file("xmoe_sigmoid.safetensors");
  const auto init = [&](const std::string& config, const std::string& out, int seed) {
    return "--threads 1 layer-init --config " + quote(config) + " --out " + quote(out) +
           " --seed " + std::to_string(seed);
  };
  const std::vector<CliResult> inits = run_cli_all(
      dir, {init(dot, w_dot, 5), init(noisy, w_noisy_init, 5), init(xmoe_soft, w_xmoe, 5),
            init(xmoe_sig, w_xmoe_sig, 5)});
  for (const CliResult& r : inits) ASSERT_TRUE(Succeeded(r));

  check_init_weights(w_dot, "dot", 1);
  check_init_weights(w_noisy_init, "noisy_topk", 1);
  check_init_weights(w_xmoe, "xmoe", 1);
  check_init_weights(w_xmoe_sig, "xmoe", 2);
  {
    // The seed decides the weights: the in-process layer with that seed has the same ones.
    const TensorMap a = xmoe::load_safetensors(w_dot);
    xmoe::MoELayer same(xmoe::load_layer_config(dot).seed(5));
    for (const auto& item : same->named_parameters()) {
      EXPECT_TRUE(at::equal(item.value(), a.at(item.key()))) << item.key();
    }
    // X-MoE: τ starts at 0.3 (softmax) / 0.07 (sigmoid), every ‖e_i‖ = expert_norm = 1.5.
    const TensorMap xw = xmoe::load_safetensors(w_xmoe), xsw = xmoe::load_safetensors(w_xmoe_sig);
    EXPECT_NEAR(xw.at("router.temperature").item<double>(), 0.3, 1e-7);
    EXPECT_NEAR(xsw.at("router.temperature").item<double>(), 0.07, 1e-7);
    at::Tensor norms = xw.at("router.expert_embed").to(at::kDouble).norm(2, {1});
    EXPECT_TRUE(at::allclose(norms, at::full_like(norms, 1.5), 1e-6, 1e-6)) << norms;
    // Noisy top-k weights start at zero (Shazeer 2017).
    const TensorMap nw = xmoe::load_safetensors(w_noisy_init);
    EXPECT_EQ(nw.at("router.w_gate").abs().max().item<double>(), 0.0);
  }
  // The noisy router needs a signal to route by: random W_g, W_noise, rest from layer-init.
  TensorMap nw = xmoe::load_safetensors(w_noisy_init);
  nw["router.w_gate"] = normal({kModel, kExperts}, 31, at::kFloat, 0.7);
  nw["router.w_noise"] = normal({kModel, kExperts}, 32, at::kFloat, 0.5);
  const std::string w_noisy = write_tensors(dir, "noisy.safetensors", nw);

  // Every router kind in both modes, float32 and float64 inputs for each kind (the dot router's
  // sigmoid gate, which has no training-only behaviour, runs once).
  std::vector<ForwardCase> cases = {
      {"dot softmax eval f32, no grad", dot, w_dot, "dot", 1, 1, false, at::kFloat, false},
      {"dot softmax train f64", dot, w_dot, "dot", 1, 1, true, at::kDouble},
      {"dot sigmoid train f32", dot_sig, w_dot, "dot", 1, 1, true, at::kFloat},
      {"gshard top-2 capacity eval f32", gshard_path, w_dot, "dot", 2, 1, false, at::kFloat},
      {"gshard top-2 capacity train f64", gshard_path, w_dot, "dot", 2, 1, true, at::kDouble},
      {"noisy top-2 eval f32", noisy, w_noisy, "noisy_topk", 2, 1, false, at::kFloat},
      {"noisy top-2 train f64 + noise", noisy, w_noisy, "noisy_topk", 2, 1, true, at::kDouble,
       true, true},
      {"noisy top-2 train f64 + noise (again)", noisy, w_noisy, "noisy_topk", 2, 1, true,
       at::kDouble, true, true},
      {"xmoe softmax eval f64", xmoe_soft, w_xmoe, "xmoe", 1, 1, false, at::kDouble},
      {"xmoe softmax train f32", xmoe_soft, w_xmoe, "xmoe", 1, 1, true, at::kFloat},
      {"xmoe sigmoid top-2 depth 2 eval f32", xmoe_sig, w_xmoe_sig, "xmoe", 2, 2, false,
       at::kFloat},
      {"xmoe sigmoid top-2 depth 2 train f64", xmoe_sig, w_xmoe_sig, "xmoe", 2, 2, true,
       at::kDouble},
  };
  std::vector<std::string> args;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    // The noisy cases share one input so that eval and train see the same tokens.
    if (cases[i].router == "noisy_topk") cases[i].seed = 77;
    args.push_back(prepare(dir, cases[i], static_cast<int>(i)));
  }
  const std::vector<CliResult> results = run_cli_all(dir, args);
  for (std::size_t i = 0; i < cases.size(); ++i) {
    ASSERT_TRUE(Succeeded(results[i])) << cases[i].label;
    EXPECT_TRUE(Contains(results[i].out, cases[i].out_path));
    check_forward_case(cases[i]);
  }

  const auto out = [&](int i) { return xmoe::load_safetensors(cases[i].out_path); };
  {
    // Independent of the library: Switch top-1 by hand from the weight file.
    const TensorMap w = xmoe::load_safetensors(w_dot);
    const TensorMap o = out(0);
    at::Tensor x = cases[0].input.to(at::kDouble);
    at::Tensor scores = at::matmul(x, w.at("router.weight").to(at::kDouble).t());
    at::Tensor probs = at::softmax(scores, 1);
    at::Tensor expected = at::zeros({kTokens, kModel}, at::kDouble);
    for (int64_t t = 0; t < kTokens; ++t) {
      const int64_t e = scores[t].argmax().item<int64_t>();
      EXPECT_EQ(o.at("expert_ids")[t][0].item<int64_t>(), e);
      at::Tensor hidden = at::gelu(at::matmul(w.at("experts.0.w1")[e].to(at::kDouble), x[t]) +
                                   w.at("experts.0.b1")[e].to(at::kDouble));
      expected[t] = probs[t][e] * (at::matmul(w.at("experts.0.w2")[e].to(at::kDouble), hidden) +
                                   w.at("experts.0.b2")[e].to(at::kDouble));
    }
    EXPECT_TRUE(at::allclose(o.at("output").to(at::kDouble), expected, 1e-4, 1e-5));
    EXPECT_TRUE(at::allclose(o.at("scores").to(at::kDouble), scores, 1e-4, 1e-5));
  }
  {
    // Capacity mode dropped slots (and reported them with a zero gate).
    const TensorMap o = out(4);
    EXPECT_GE(o.at("gates").eq(0).sum().item<int64_t>(), 2);
  }
  {
    // Noisy top-k in training with a supplied noise tensor: reproducible, and not the eval run.
    const TensorMap train = out(6), again = out(7), eval32 = out(5);
    for (const auto& item : train) {
      EXPECT_TRUE(at::equal(item.second, again.at(item.first))) << item.first;
    }
    // Same tokens (f32 vs f64 of the same values), but H(x) has the noise only in training.
    EXPECT_FALSE(at::allclose(train.at("scores").to(at::kFloat), eval32.at("scores"), 1e-3, 1e-3));
    EXPECT_FALSE(at::allclose(train.at("aux.load").to(at::kFloat), eval32.at("aux.load"), 1e-3, 1e-3));
    EXPECT_GT(train.at("grad.router.w_noise").abs().max().item<double>(), 0.0);
    EXPECT_EQ(eval32.at("grad.router.w_noise").abs().max().item<double>(), 0.0);
  }
}

// ---- malformed input --------------------------------------------------------------------------

// Header length, header JSON and data section of a safetensors file.
struct RawSafetensors {
  json header;
  std::string data;
};

RawSafetensors read_raw(const std::string& path) {
  const std::string bytes = xmoe_test::read_file(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  return {json::parse(bytes.substr(8, n)), bytes.substr(8 + n)};
}

void write_raw(const std::string& path, const RawSafetensors& raw) {
  const std::string header = raw.header.dump();
  std::string bytes(8, '\0');
  uint64_t n = header.size();
  for (char& b : bytes) {
    b = static_cast<char>(n & 0xff);
    n >>= 8;
  }
  xmoe_test::write_file(path, bytes + header + raw.data);
}

struct BadCase {
  std::string label;
  std::string args;
  std::vector<std::string> needles;  // all must appear in stderr
  std::string out_path;
};

// A valid dot-router layer (config, weights, input) in a fresh directory, and bad variants of
// it, each run through `xmoe layer-forward`.
class BadInputBatch {
 public:
  BadInputBatch()
      : dir("xmoe_cli_bad"),
        config(write_json(dir, "layer.json", layer_json("dot", 1))),
        x(normal({kTokens, kModel}, 9, at::kFloat)) {
    xmoe::MoELayer layer(xmoe::MoELayerOptions(kModel, kFF, kExperts));
    for (const auto& item : layer->named_parameters()) weights[item.key()] = item.value().detach();
    good_weights = write_tensors(dir, "weights.safetensors", weights);
    good_input = write_tensors(dir, "input.safetensors", {{"input", x}});
  }

  void add(const std::string& label, const std::string& cfg, const std::string& w,
           const std::string& in, std::vector<std::string> needles) {
    BadCase c;
    c.label = label;
    c.out_path = dir.file("out" + std::to_string(cases.size()) + ".safetensors");
    c.args = "--threads 1 layer-forward --config " + quote(cfg) + " --weights " + quote(w) +
             " --input " + quote(in) + " --out " + quote(c.out_path);
    c.needles = std::move(needles);
    cases.push_back(c);
  }

  // Each case must exit with status 1 (not a signal), name its needles on stderr and write
  // no output file.
  void run_and_check() {
    // The unmodified files are a valid layer (so each failure is due to its one defect).
    ASSERT_NO_THROW(reference_forward(config, xmoe::load_safetensors(good_weights),
                                      xmoe::load_safetensors(good_input).at("input"),
                                      at::Tensor(), at::Tensor(), false));
    std::vector<std::string> args;
    for (const auto& c : cases) args.push_back(c.args);
    const std::vector<CliResult> results = run_cli_all(dir, args);
    for (std::size_t i = 0; i < cases.size(); ++i) {
      SCOPED_TRACE(cases[i].label);
      const CliResult& r = results[i];
      EXPECT_TRUE(r.exited) << "killed by a signal (crash): status " << r.code << "\n" << r.err;
      EXPECT_EQ(r.code, 1) << r.err;
      for (const std::string& needle : cases[i].needles) EXPECT_TRUE(Contains(r.err, needle));
      EXPECT_FALSE(fs::exists(cases[i].out_path)) << "an output file was written despite the error";
    }
  }

  TempDir dir;
  std::string config;
  at::Tensor x;
  TensorMap weights;
  std::string good_weights, good_input;
  std::vector<BadCase> cases;
};

TEST(CliLayerForward, BadInputsFailCleanlyNamingFileAndTensor) {
  BadInputBatch batch;
  const TempDir& dir = batch.dir;
  const std::string& config = batch.config;
  const std::string& good_weights = batch.good_weights;
  const std::string& good_input = batch.good_input;
  const TensorMap& weights = batch.weights;
  const auto weights_with = [&](const std::string& name,
                                const std::function<void(TensorMap&)>& edit) {
    TensorMap w = weights;
    edit(w);
    return write_tensors(dir, name, w);
  };

  {
    // Truncated: the tensor whose bytes end last loses them.
    RawSafetensors raw = read_raw(good_weights);
    std::string last;
    uint64_t last_end = 0;
    for (const auto& item : raw.header.items()) {
      if (item.key() == "__metadata__") continue;
      const uint64_t end = item.value().at("data_offsets")[1].get<uint64_t>();
      if (end >= last_end) {
        last_end = end;
        last = item.key();
      }
    }
    const std::string path = dir.file("truncated.safetensors");
    const std::string bytes = xmoe_test::read_file(good_weights);
    xmoe_test::write_file(path, bytes.substr(0, bytes.size() - 16));
    batch.add("truncated weights", config, path, good_input, {path, last});
  }
  {
    const std::string path =
        weights_with("missing.safetensors", [](TensorMap& w) { w.erase("experts.0.b2"); });
    batch.add("weights missing a tensor", config, path, good_input, {path, "experts.0.b2", "missing"});
  }
  {
    const std::string path = weights_with("shape.safetensors", [](TensorMap& w) {
      w["router.weight"] = at::zeros({kExperts, kModel + 1});
    });
    batch.add("wrong weight shape", config, path, good_input, {path, "router.weight", "shape"});
  }
  {
    const std::string path = weights_with("dtype.safetensors", [](TensorMap& w) {
      w["experts.0.w1"] = at::zeros({kExperts, kFF, kModel}, at::kLong);
    });
    batch.add("I64 weight", config, path, good_input, {path, "experts.0.w1"});
  }
  {
    const std::string path = weights_with("extra.safetensors", [](TensorMap& w) {
      w["router.bias"] = at::zeros({kExperts});
    });
    batch.add("extra tensor", config, path, good_input, {path, "router.bias"});
  }
  {
    // Offsets that lie about the size of a tensor.
    RawSafetensors raw = read_raw(good_weights);
    json& offsets = raw.header.at("experts.0.b1").at("data_offsets");
    offsets[1] = offsets[1].get<uint64_t>() - 4;
    const std::string path = dir.file("lying_size.safetensors");
    write_raw(path, raw);
    batch.add("offsets with the wrong span", config, path, good_input, {path, "experts.0.b1"});
  }
  {
    json j = layer_json("dot", 1);
    j["top_kk"] = 1;
    const std::string path = write_json(dir, "unknown_key.json", j);
    batch.add("config with an unknown key", path, good_weights, good_input, {path, "top_kk"});
  }
  {
    json j = layer_json("dot", 1);
    j["top_k"] = "1";
    const std::string path = write_json(dir, "wrong_type.json", j);
    batch.add("config with a wrong type", path, good_weights, good_input, {path, "top_k"});
  }
  {
    const std::string path = dir.file("no_such_layer.json");
    batch.add("missing config file", path, good_weights, good_input, {path});
  }
  {
    const std::string path = write_tensors(dir, "wide_input.safetensors",
                                           {{"input", normal({kTokens, kModel + 1}, 3, at::kFloat)}});
    batch.add("input with the wrong d_model", config, good_weights, path, {path, "'input'"});
  }
  {
    const std::string path = dir.file("overflow.json");
    json j = layer_json("dot", 1);
    j["balance_coef"] = 0.5;
    std::string text = j.dump();
    text.replace(text.find("0.5"), 3, "1e999");
    xmoe_test::write_file(path, text);
    batch.add("config number beyond double", path, good_weights, good_input, {path, "number overflow"});
  }
  {
    json j = layer_json("dot", 1);
    j["top_k"] = uint64_t{1} << 63;  // would wrap to a negative int64
    const std::string path = write_json(dir, "huge_int.json", j);
    batch.add("config integer beyond int64", path, good_weights, good_input, {path, "'top_k' is too large"});
  }
  {
    const std::string path = weights_with("f64_overflow.safetensors", [](TensorMap& w) {
      w["router.weight"] = at::full({kExperts, kModel}, 1e300, at::kDouble);
    });
    batch.add("F64 weight beyond the F32 input's range", config, path, good_input,
              {path, "'router.weight'", "beyond the range of Float"});
  }
  {
    // Finite weights whose products overflow float32 inside the layer.
    const std::string path = weights_with("overflowing.safetensors", [](TensorMap& w) {
      w["experts.0.w2"] = at::full({kExperts, kModel, kFF}, 3e38, at::kFloat);
    });
    batch.add("weights that overflow inside the layer", config, path, good_input,
              {"the layer's result 'output' has", "non-finite", "nothing written"});
  }

  batch.run_and_check();
}

// A NaN in the input is refused naming the file and the tensor, like every other bad input.
TEST(CliLayerForward, NonFiniteInputNamesTheFile) {
  BadInputBatch batch;
  at::Tensor bad = batch.x.clone();
  bad[2][3] = std::nan("");
  const std::string path = write_tensors(batch.dir, "nan_input.safetensors", {{"input", bad}});
  batch.add("input containing NaN", batch.config, batch.good_weights, path,
            {"non-finite", path, "'input'"});
  batch.run_and_check();
}

// The output is written atomically over its path: it must never replace an input file, a
// directory or a special file. Through a symbolic link the file it points to is replaced.
TEST(CliLayerForward, OutputNeverReplacesAnInputOrASpecialFile) {
  BadInputBatch batch;
  const TempDir& dir = batch.dir;
  const std::string weights_before = xmoe_test::read_file(batch.good_weights);
  fs::create_directory(dir.file("a_directory"));
  ASSERT_EQ(::mkfifo(dir.file("a_fifo").c_str(), 0600), 0);
  xmoe_test::write_file(dir.file("target.safetensors"), "old");
  fs::create_symlink(dir.file("target.safetensors"), dir.file("link.safetensors"));
  const auto forward_to = [&](const std::string& out) {
    return "--threads 1 layer-forward --config " + quote(batch.config) + " --weights " +
           quote(batch.good_weights) + " --input " + quote(batch.good_input) + " --out " + quote(out);
  };
  const std::vector<CliResult> r = run_cli_all(
      dir, {forward_to(batch.good_weights), forward_to(dir.file("a_directory")),
            forward_to(dir.file("a_fifo")), forward_to(dir.file("link.safetensors")),
            "layer-init --config " + quote(batch.config) + " --out " + quote(batch.config)});
  const std::vector<std::string> refused = {"is the --weights file", "a directory is already there",
                                            "not a regular file is already there"};
  for (std::size_t i = 0; i < refused.size(); ++i) {
    EXPECT_TRUE(r[i].exited && r[i].code == 1) << r[i].args << "\n" << r[i].err;
    EXPECT_TRUE(Contains(r[i].err, refused[i]));
  }
  EXPECT_EQ(xmoe_test::read_file(batch.good_weights), weights_before);
  EXPECT_TRUE(fs::is_directory(dir.file("a_directory")));
  EXPECT_TRUE(fs::is_fifo(dir.file("a_fifo")));
  ASSERT_TRUE(Succeeded(r[3]));
  EXPECT_TRUE(fs::is_symlink(dir.file("link.safetensors")));
  EXPECT_EQ(xmoe::load_safetensors(dir.file("target.safetensors")).count("output"), 1u);
  EXPECT_TRUE(Contains(r[4].err, "is the --config file"));
  EXPECT_TRUE(Contains(xmoe_test::read_file(batch.config), "d_model"));
}

// ---- help and demo ------------------------------------------------------------------------

TEST(CliHelpAndDemo, HelpAndDemoRun) {
  TempDir dir("xmoe_cli_help");
  const std::vector<CliResult> r =
      run_cli_all(dir, {"--help", "layer-forward --help", "--threads 1 demo --tokens 256",
                        "finetune --help",
                        "finetune --checkpoint " + quote(dir.file("none")) + " --out " +
                            quote(dir.file("ft"))});
  ASSERT_TRUE(Succeeded(r[0]));
  for (const char* cmd : {"layer-init", "layer-forward", "demo", "pretrain", "finetune"})
    EXPECT_TRUE(Contains(r[0].out, cmd));
  ASSERT_TRUE(Succeeded(r[3]));
  for (const char* opt : {"--checkpoint", "--train-language", "--no-freeze-routing", "--aux-coef",
                          "--pooling"})
    EXPECT_TRUE(Contains(r[3].out, opt));
  EXPECT_TRUE(r[4].exited && r[4].code == 1) << r[4].err;
  EXPECT_TRUE(Contains(r[4].err, dir.file("none") + ": no such checkpoint file or run directory"));
  EXPECT_FALSE(fs::exists(dir.file("ft")));
  ASSERT_TRUE(Succeeded(r[1]));
  for (const char* opt : {"--config", "--weights", "--input", "--out", "--grad-output", "--train"}) {
    EXPECT_TRUE(Contains(r[1].out, opt));
  }

  ASSERT_TRUE(Succeeded(r[2]));
  const std::string& demo = r[2].out;
  EXPECT_TRUE(Contains(demo, "256 random tokens"));
  // One "loads [...]" line per router; each token is counted k times (top-1 or top-2).
  std::istringstream lines(demo);
  std::string line;
  std::set<std::string> kinds;
  int load_lines = 0;
  while (std::getline(lines, line)) {
    const auto open = line.find("loads [");
    if (open == std::string::npos) continue;
    ++load_lines;
    const auto close = line.find(']', open);
    ASSERT_NE(close, std::string::npos) << line;
    std::istringstream numbers(line.substr(open + 7, close - open - 7));
    int64_t total = 0, v = 0, count = 0;
    while (numbers >> v) total += v, ++count;
    EXPECT_EQ(count, 8) << line;
    EXPECT_TRUE(total == 256 || total == 512) << line;
    for (const char* kind : {"dot", "noisy", "x-moe"}) {
      if (line.find(kind) != std::string::npos) kinds.insert(kind);
    }
  }
  EXPECT_GE(load_lines, 3);
  EXPECT_EQ(kinds, (std::set<std::string>{"dot", "noisy", "x-moe"}));
  EXPECT_EQ(demo.find("nan"), std::string::npos);
}

// --threads is a global option, accepted before the subcommand and, as the fast-path issue writes
// it (`xmoe bench layer ... --threads N`), after it; both take effect.
TEST(CliHelpAndDemo, ThreadsAfterTheSubcommandTakeEffect) {
  TempDir dir("xmoe_cli_threads");
  const std::string layer = " --tokens 64 --d-model 8 --d-ff 8 --experts 2 --iters 1 --warmup 0";
  const std::vector<CliResult> r = run_cli_all(
      dir, {"bench layer --threads 1" + layer, "--threads 1 bench layer" + layer,
            "bench layer --threads 3" + layer, "demo --threads 0", "bench layer --thread 1"});
  for (int i : {0, 1, 2}) ASSERT_TRUE(Succeeded(r[i])) << r[i].args << "\n" << r[i].err;
  EXPECT_TRUE(Contains(r[0].out, "\"threads\":1")) << r[0].out;
  EXPECT_TRUE(Contains(r[1].out, "\"threads\":1")) << r[1].out;
  EXPECT_TRUE(Contains(r[2].out, "\"threads\":3")) << r[2].out;
  EXPECT_NE(r[3].code, 0);
  EXPECT_TRUE(Contains(r[3].err, "--threads: must be in [1, 256] (got 0)")) << r[3].err;
  EXPECT_NE(r[4].code, 0);  // a misspelt option still fails, after falling through every parent
  EXPECT_TRUE(Contains(r[4].err, "--thread")) << r[4].err;
  const std::vector<CliResult> unknown = run_cli_all(dir, {"--threads 1 bogus", "bench bogus"});
  for (const CliResult& u : unknown) EXPECT_TRUE(u.exited && u.code != 0) << u.args;
  EXPECT_TRUE(Contains(unknown[0].err, "xmoe: unknown command 'bogus' (known: analyze, bench"));
  EXPECT_TRUE(Contains(unknown[1].err, "xmoe bench: unknown command 'bogus' (known: train, layer"));
}

// --resume into a directory that holds no run says so and how to start one.
TEST(CliHelpAndDemo, ResumeWithoutARunSaysSo) {
  TempDir dir("xmoe_cli_resume");
  const std::vector<CliResult> r = run_cli_all(dir, {"pretrain --resume --out " + quote(dir.file("none"))});
  EXPECT_TRUE(r[0].exited && r[0].code == 1) << r[0].err;
  EXPECT_TRUE(Contains(r[0].err, dir.file("none") + ": no run to resume (no config.json there); "
                                                    "start one with --config FILE"));
}

// `--nproc 2` runs two worker processes (ranks) that split the experts; the run directory is an
// ordinary one (xmoe eval reads it alone), a resume must use as many ranks, and experts that do
// not split evenly are refused before any worker starts. `bench train --nproc 2` reports once,
// for both ranks' tokens.
TEST(CliPretrain, TwoRanksTrainOneRunWithTheExpertsSplit) {
  TempDir dir("xmoe_cli_nproc");
  xmoe_test::write_corpus(dir.file("corpus"), "train",
                          {{"de", 150}, {"en", 300}, {"ru", 60}, {"zh", 30}}, 2);
  xmoe_test::write_corpus(dir.file("corpus"), "valid",
                          {{"de", 10}, {"en", 10}, {"ru", 10}, {"zh", 10}}, 3);
  xmoe::train_tokenizer_from_corpus(dir.file("corpus"), "train", dir.file("spm"),
                                    xmoe_test::tiny_tokenizer_options());
  xmoe_test::write_file(dir.file("c.json"), R"({
    "name": "tiny-ep",
    "data": {"corpus": "corpus", "tokenizer": "spm.model", "max_len": 24, "batch_tokens": 96},
    "model": {"d_model": 16, "n_layers": 2, "n_heads": 2, "d_ff": 32, "moe_layers": [1]},
    "moe": {"n_expert": 4, "top_k": 1, "router": "xmoe", "d_e": 4},
    "train": {"steps": 4, "warmup_steps": 1},
    "eval": {"every": 4, "max_batches": 2, "probe_tokens": 50},
    "checkpoint": {"every": 2}
  })");
  std::vector<CliResult> r = run_cli_all(
      dir, {"--threads 2 pretrain --config c.json --out run --nproc 2",
            "pretrain --config c.json --out odd --nproc 3",
            "bench train --config c.json --vocab 200 --steps 2 --warmup 0 --nproc 2"});
  ASSERT_TRUE(Succeeded(r[0]));
  EXPECT_TRUE(Contains(r[0].err, "2 ranks (batch per rank; experts split over the ranks)"))
      << r[0].err;
  EXPECT_TRUE(Contains(r[0].out, "run run: 4 steps")) << r[0].out;
  EXPECT_TRUE(r[1].exited && r[1].code == 1) << r[1].err;
  EXPECT_TRUE(Contains(r[1].err, "--nproc 3: moe.n_expert = 4 experts do not split evenly over "
                                 "3 ranks")) << r[1].err;
  EXPECT_FALSE(fs::exists(dir.file("odd")));
  ASSERT_TRUE(Succeeded(r[2]));
  const nlohmann::json bench = nlohmann::json::parse(r[2].out);  // rank 0 alone reports
  EXPECT_EQ(bench.at("ranks").get<int>(), 2);
  EXPECT_EQ(bench.at("tokens").get<int64_t>(), 2 * 4 * 24);  // 96-token batches of 24, per rank
  EXPECT_GE(bench.at("gradient_sync_ms").get<double>(), 0.0);

  r = run_cli_all(dir, {"eval --checkpoint run --json --max-batches 2",
                        "pretrain --resume --out run --set train.steps=6"});
  ASSERT_TRUE(Succeeded(r[0]));
  const nlohmann::json eval = nlohmann::json::parse(r[0].out);
  const std::string metrics = xmoe_test::read_file(dir.file("run/metrics.jsonl"));
  const nlohmann::json valid =
      nlohmann::json::parse(metrics.substr(metrics.rfind("{\"analysis_ms\"")));
  EXPECT_NEAR(eval.at("loss").get<double>(), valid.at("valid_loss").get<double>(), 1e-4);
  EXPECT_TRUE(r[1].exited && r[1].code == 1) << r[1].err;
  EXPECT_TRUE(Contains(r[1].err, "written by a run on 2 rank(s)")) << r[1].err;

  // Replicated experts need not divide: plain data parallelism on 3 ranks.
  r = run_cli_all(dir, {"pretrain --resume --out run --set train.steps=6 --nproc 2 --quiet",
                        "pretrain --config c.json --out rep --nproc 3 --experts replicated "
                        "--set train.steps=2"});
  ASSERT_TRUE(Succeeded(r[0]));
  EXPECT_TRUE(fs::exists(dir.file("run/checkpoints/step-000006.safetensors")));
  ASSERT_TRUE(Succeeded(r[1]));
  EXPECT_TRUE(Contains(r[1].err, "3 ranks (batch per rank; experts replicated)")) << r[1].err;
  EXPECT_TRUE(fs::exists(dir.file("rep/checkpoints/step-000002.safetensors")));
}

// Out-of-range numbers are named with the rule they break, not CLI11's raw double bounds.
TEST(CliHelpAndDemo, BadNumbersNameTheOptionAndTheRule) {
  TempDir dir("xmoe_cli_numbers");
  // Upper bounds too: a typo must not hang the process or overflow a loop counter.
  const std::vector<std::string> args = {
      "bench layer --tokens 0",          "--threads 0 demo",
      "demo --experts 1",                "bench layer --warmup -1",
      "bench layer --d-model abc",       "corpus build --jobs 2000",
      "--threads 100000 demo",           "bench layer --warmup 2147483647 --iters 2",
      "bench layer --iters 2147483647",  "bench train --config x.json --steps 1000000",
      "corpus build --languages ''",
      "bench train --config x.json --seq-len 100000",
      "bench layer --tokens 500000000",
      "finetune --checkpoint x --out y --batch-size 100000000",
      "finetune --checkpoint x --out y --lr 0",
      "finetune --checkpoint x --out y --warmup-ratio 2",
      "pretrain --config x.json --nproc 0"};
  const std::vector<std::string> expected = {
      "--tokens: must be in [1, 16777216] (got 0)",
      "--threads: must be in [1, 256] (got 0)",
      "--experts: must be in [2, 4096] (got 1)", "--warmup: must be in [0, 100000] (got -1)",
      "--d-model: 'abc' is not a number",       "--jobs: must be in [1, 1024] (got 2000)",
      "--threads: must be in [1, 256] (got 100000)",
      "--warmup: must be in [0, 100000] (got 2147483647)",
      "--iters: must be in [1, 100000] (got 2147483647)",
      "--steps: must be in [1, 10000] (got 1000000)",
      "--languages: must not be empty",
      "--seq-len: must be in [0, 65536] (got 100000)",
      "--tokens: must be in [1, 16777216] (got 500000000)",
      "--batch-size: must be in [1, 65536] (got 100000000)",
      "--lr: must be > 0 (got 0)",
      "--warmup-ratio: must be in [0, 1] (got 2)",
      "--nproc: must be in [1, 64] (got 0)"};
  const std::vector<CliResult> r = run_cli_all(dir, args);
  for (std::size_t i = 0; i < args.size(); ++i) {
    ASSERT_TRUE(r[i].exited) << r[i].args;
    EXPECT_NE(r[i].code, 0) << r[i].args;
    EXPECT_TRUE(Contains(r[i].err, expected[i])) << r[i].args << "\n" << r[i].err;
    EXPECT_FALSE(Contains(r[i].err, "0.000000")) << r[i].err;
  }
}

}  // namespace
