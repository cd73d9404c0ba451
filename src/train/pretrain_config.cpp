#include "xmoe/train/pretrain_config.h"

#include "xmoe/data/packing.h"
#include "xmoe/io/layer_config.h"
#include "xmoe/io/safetensors.h"  // FileFormatError
#include "xmoe/io/strict_json.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <set>
#include <sstream>

namespace xmoe {

namespace {

using nlohmann::json;

// Thrown by the field readers; parse_pretrain_config prefixes the source.
struct KeyError {
  std::string key, message;
};

[[noreturn]] void key_error(const std::string& key, const std::string& message) {
  throw KeyError{key, message};
}

std::string describe(const json& v) { return std::string(v.type_name()) + " " + v.dump(); }

// Typed reads: the JSON type must match the field's.
void read_value(const json& v, const std::string& key, int64_t* out) {
  if (!v.is_number_integer()) key_error(key, "must be an integer, got " + describe(v));
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t{INT64_MAX})
    key_error(key, "is too large: " + v.dump());
  *out = v.get<int64_t>();
}
void read_value(const json& v, const std::string& key, uint64_t* out) {
  if (!v.is_number_integer() || (v.is_number_integer() && !v.is_number_unsigned() && v.get<int64_t>() < 0))
    key_error(key, "must be a non-negative integer, got " + describe(v));
  *out = v.get<uint64_t>();
}
void read_value(const json& v, const std::string& key, double* out) {
  if (!v.is_number()) key_error(key, "must be a number, got " + describe(v));
  *out = v.get<double>();
}
void read_value(const json& v, const std::string& key, bool* out) {
  if (!v.is_boolean()) key_error(key, "must be true or false, got " + describe(v));
  *out = v.get<bool>();
}
void read_value(const json& v, const std::string& key, std::string* out) {
  if (!v.is_string()) key_error(key, "must be a string, got " + describe(v));
  *out = v.get<std::string>();
}
template <typename T>
void read_value(const json& v, const std::string& key, std::vector<T>* out) {
  if (!v.is_array()) key_error(key, "must be a list, got " + describe(v));
  out->clear();
  for (size_t i = 0; i < v.size(); ++i) {
    T item{};
    read_value(v[i], key + "[" + std::to_string(i) + "]", &item);
    out->push_back(item);
  }
}

// One config key: where it lives in PretrainConfig and what values it allows.
struct Field {
  std::string section, name;
  std::function<void(PretrainConfig&, const json&)> read;
  std::function<json(const PretrainConfig&)> write;
};

template <typename T>
using Check = std::function<std::string(const T&)>;  // "" = valid, else what is wrong

template <typename S, typename T>
Field field(const char* section, const char* name, S PretrainConfig::*sec, T S::*member,
            Check<T> check = nullptr) {
  const std::string key = std::string(section) + "." + name;
  return Field{section, name,
               [=](PretrainConfig& c, const json& v) {
                 T value{};
                 read_value(v, key, &value);
                 if (check) {
                   const std::string problem = check(value);
                   if (!problem.empty()) key_error(key, problem + ", got " + v.dump());
                 }
                 (c.*sec).*member = value;
               },
               [=](const PretrainConfig& c) { return json((c.*sec).*member); }};
}

Check<int64_t> at_least(int64_t lo) {
  return [lo](const int64_t& v) {
    return v >= lo ? std::string() : "must be >= " + std::to_string(lo);
  };
}
// Upper bounds keep a typo from allocating without end (a batch of 1e12 tokens).
Check<int64_t> between(int64_t lo, int64_t hi) {
  return [lo, hi](const int64_t& v) {
    if (v >= lo && v <= hi) return std::string();
    return "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  };
}
Check<double> in_range(double lo, double hi, bool lo_open, bool hi_open) {
  return [=](const double& v) {
    const bool ok = std::isfinite(v) && (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
    if (ok) return std::string();
    std::ostringstream range;
    range << (lo_open ? "(" : "[") << lo << ", " << hi << (hi_open ? ")" : "]");
    return "must be in " + range.str();
  };
}
// Valid when `parse` (one of the library's parse_* functions) accepts the value; else its message.
template <typename Parse>
Check<std::string> accepted_by(Parse parse) {
  return [parse](const std::string& v) {
    try {
      parse(v);
      return std::string();
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
  };
}

Check<std::string> not_empty() {
  return [](const std::string& v) { return v.empty() ? std::string("must not be empty") : ""; };
}

constexpr double kInf = std::numeric_limits<double>::infinity();

const std::vector<Field>& fields() {
  using P = PretrainConfig;
  static const std::vector<Field> all = {
      field("data", "corpus", &P::data, &DataConfig::corpus, not_empty()),
      field("data", "tokenizer", &P::data, &DataConfig::tokenizer, not_empty()),
      field("data", "languages", &P::data, &DataConfig::languages),
      field("data", "max_len", &P::data, &DataConfig::max_len, between(3, 1 << 16)),
      field("data", "packing", &P::data, &DataConfig::packing, accepted_by(parse_line_packing)),
      field("data", "batch_tokens", &P::data, &DataConfig::batch_tokens, between(3, 1 << 24)),
      field("data", "alpha", &P::data, &DataConfig::alpha, in_range(0, 1, true, false)),
      field("data", "mask_prob", &P::data, &DataConfig::mask_prob, in_range(0, 1, true, false)),
      field("model", "d_model", &P::model, &ModelConfig::d_model, at_least(1)),
      field("model", "n_layers", &P::model, &ModelConfig::n_layers, at_least(1)),
      field("model", "n_heads", &P::model, &ModelConfig::n_heads, at_least(1)),
      field("model", "d_ff", &P::model, &ModelConfig::d_ff, at_least(1)),
      field("model", "dropout", &P::model, &ModelConfig::dropout, in_range(0, 1, false, true)),
      field("model", "attention_dropout", &P::model, &ModelConfig::attention_dropout,
            in_range(0, 1, false, true)),
      field("model", "pre_norm", &P::model, &ModelConfig::pre_norm),
      field("model", "moe_layers", &P::model, &ModelConfig::moe_layers),
      field("model", "init_seed", &P::model, &ModelConfig::init_seed),
      field("train", "steps", &P::train, &TrainConfig::steps, at_least(1)),
      field("train", "lr", &P::train, &TrainConfig::lr, in_range(0, kInf, true, true)),
      field("train", "warmup_steps", &P::train, &TrainConfig::warmup_steps, at_least(0)),
      field("train", "final_lr_ratio", &P::train, &TrainConfig::final_lr_ratio,
            in_range(0, 1, false, false)),
      field("train", "weight_decay", &P::train, &TrainConfig::weight_decay,
            in_range(0, kInf, false, true)),
      field("train", "beta1", &P::train, &TrainConfig::beta1, in_range(0, 1, false, true)),
      field("train", "beta2", &P::train, &TrainConfig::beta2, in_range(0, 1, false, true)),
      field("train", "eps", &P::train, &TrainConfig::eps, in_range(0, kInf, true, true)),
      field("train", "clip_norm", &P::train, &TrainConfig::clip_norm, in_range(0, kInf, false, true)),
      field("train", "accumulate", &P::train, &TrainConfig::accumulate, between(1, 1 << 16)),
      field("train", "seed", &P::train, &TrainConfig::seed),
      field("log", "every", &P::log, &LogConfig::every, at_least(1)),
      field("eval", "every", &P::eval, &EvalConfig::every, at_least(1)),
      field("eval", "max_batches", &P::eval, &EvalConfig::max_batches, at_least(0)),
      field("eval", "probe_tokens", &P::eval, &EvalConfig::probe_tokens, between(0, 1 << 24)),
      field("checkpoint", "every", &P::checkpoint, &CheckpointConfig::every, at_least(1)),
      field("checkpoint", "keep", &P::checkpoint, &CheckpointConfig::keep, at_least(1)),
  };
  return all;
}

const std::vector<std::string>& sections() {
  static const std::vector<std::string> names = {"data", "model", "train", "log", "eval",
                                                 "checkpoint"};
  return names;
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& s : items) out += (out.empty() ? "" : ", ") + s;
  return out;
}

// --set a.b=value: value is JSON, or a plain string when it does not parse as JSON.
void apply_override(json& root, const std::string& assignment) {
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    key_error("--set", "expected key=value (e.g. train.lr=3e-4), got '" + assignment + "'");
  const std::string key = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  json value = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) value = text;
  json* node = &root;
  size_t start = 0;
  while (true) {
    const size_t dot = key.find('.', start);
    const std::string part = key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (part.empty()) key_error(key, "malformed key in --set '" + assignment + "'");
    if (node->is_null()) *node = json::object();
    if (!node->is_object())
      key_error(key, "--set cannot go inside a " + std::string(node->type_name()));
    if (dot == std::string::npos) {
      (*node)[part] = value;
      return;
    }
    node = &(*node)[part];
    start = dot + 1;
  }
}

// The moe section: a layer.json object without d_model (taken from model.d_model); d_ff
// defaults to model.d_ff.
c10::optional<MoELayerOptions> read_moe(const json& moe, const ModelConfig& model,
                                        const std::string& source) {
  if (moe.is_null()) return c10::nullopt;
  if (!moe.is_object()) key_error("moe", "must be an object or null, got " + describe(moe));
  json layer = moe;
  if (layer.contains("d_model") && layer["d_model"] != json(model.d_model))
    key_error("moe.d_model", "must equal model.d_model (" + std::to_string(model.d_model) +
                                 ") or be left out, got " + layer["d_model"].dump());
  layer["d_model"] = model.d_model;
  if (!layer.contains("d_ff")) layer["d_ff"] = model.d_ff;
  for (const char* key : {"n_expert", "top_k"})
    if (!layer.contains(key)) key_error(std::string("moe.") + key, "is required in the moe section");
  return parse_layer_config(layer.dump(), source + ": moe");
}

void check_whole(const PretrainConfig& c) {
  if (c.data.corpus.empty()) key_error("data.corpus", "is required (the corpus directory)");
  if (c.data.tokenizer.empty()) key_error("data.tokenizer", "is required (a SentencePiece .model)");
  if (c.model.d_model % c.model.n_heads != 0)
    key_error("model.n_heads", "must divide model.d_model (" + std::to_string(c.model.d_model) +
                                   "), got " + std::to_string(c.model.n_heads));
  std::set<int64_t> seen;
  for (int64_t layer : c.model.moe_layers) {
    if (layer < 0 || layer >= c.model.n_layers)
      key_error("model.moe_layers", "index " + std::to_string(layer) + " is outside [0, " +
                                        std::to_string(c.model.n_layers) + ")");
    if (!seen.insert(layer).second)
      key_error("model.moe_layers", "index " + std::to_string(layer) + " appears twice");
  }
  if (!c.model.moe_layers.empty() && !c.moe)
    key_error("moe", "is null but model.moe_layers places MoE layers; give the moe section");
  if (c.model.moe_layers.empty() && c.moe)
    key_error("model.moe_layers", "is empty but a moe section is given (dense model: moe null)");
  if (c.train.warmup_steps > c.train.steps)
    key_error("train.warmup_steps", "must be <= train.steps (" + std::to_string(c.train.steps) + ")");
  if (c.data.batch_tokens < c.data.max_len)
    key_error("data.batch_tokens", "must be >= data.max_len (" + std::to_string(c.data.max_len) +
                                       ") so that every sequence fits");
  std::set<std::string> languages;
  for (const auto& l : c.data.languages)
    if (l.empty() || !languages.insert(l).second)
      key_error("data.languages", "entries must be non-empty and distinct, got '" + l + "'");
}

}  // namespace

std::string PretrainConfig::to_json() const {
  json root = json::object();
  root["name"] = name;
  for (const Field& f : fields()) root[f.section][f.name] = f.write(*this);
  root["moe"] = moe ? json::parse(layer_config_to_json(*moe)) : json(nullptr);
  return root.dump(2);
}

PretrainConfig parse_pretrain_config(const std::string& json_text, const std::string& source,
                                     const std::vector<std::string>& overrides) {
  PretrainConfig config;
  try {
    json root = parse_json_object(json_text, source);
    for (const auto& assignment : overrides) apply_override(root, assignment);

    for (const auto& [key, value] : root.items()) {
      const bool section = std::count(sections().begin(), sections().end(), key) > 0;
      if (key != "name" && key != "moe" && !section)
        key_error(key, "unknown key (known: name, moe, " + join(sections()) + ")");
      if (section && !value.is_object()) key_error(key, "must be an object, got " + describe(value));
    }
    if (root.contains("name")) {
      read_value(root["name"], "name", &config.name);
      if (config.name.empty() || config.name.find('/') != std::string::npos)
        key_error("name", "must be a non-empty name without '/', got '" + config.name + "'");
    }
    for (const std::string& section : sections()) {
      if (!root.contains(section)) continue;
      std::vector<std::string> known;
      for (const Field& f : fields())
        if (f.section == section) known.push_back(f.name);
      for (const auto& item : root[section].items()) {
        // Named references, not a structured binding: C++17 does not let a lambda capture one
        // (GCC accepts it, Clang refuses).
        const std::string& key = item.key();
        const json& value = item.value();
        auto it = std::find_if(fields().begin(), fields().end(), [&](const Field& f) {
          return f.section == section && f.name == key;
        });
        if (it == fields().end())
          key_error(section + "." + key, "unknown key (known in " + section + ": " + join(known) + ")");
        it->read(config, value);
      }
    }
    config.moe = read_moe(root.value("moe", json(nullptr)), config.model, source);
    check_whole(config);
  } catch (const KeyError& e) {
    // A value that came from the command line is blamed on it, not on the file.
    std::string from_set;
    for (const std::string& assignment : overrides) {
      const std::string key = assignment.substr(0, assignment.find('='));
      if (e.key == key || e.key.rfind(key + ".", 0) == 0)
        from_set = " (from --set " + assignment + ")";
    }
    throw FileFormatError(source + ": " + e.key + ": " + e.message + from_set);
  }
  return config;
}

PretrainConfig load_pretrain_config(const std::string& path,
                                    const std::vector<std::string>& overrides) {
  return parse_pretrain_config(read_text_file(path, "pre-training config"), path, overrides);
}

void make_data_paths_absolute(PretrainConfig& config) {
  namespace fs = std::filesystem;
  config.data.corpus = fs::absolute(config.data.corpus).lexically_normal().string();
  config.data.tokenizer = fs::absolute(config.data.tokenizer).lexically_normal().string();
}

nlohmann::json run_identity(const std::string& resolved_config_json) {
  json c = json::parse(resolved_config_json);
  if (c.contains("train") && c["train"].is_object()) {
    c["train"].erase("steps");
    for (const char* key : kScheduleKeys) c["train"].erase(key);
  }
  for (const char* key : {"log", "eval", "checkpoint", "name"}) c.erase(key);
  // Where the data lives may change (a moved corpus, another working directory): the checkpoint's
  // data state checks that the corpus holds the same lines, and resume trains with the run's own
  // tokenizer copy.
  if (c.contains("data") && c["data"].is_object()) {
    c["data"].erase("corpus");
    c["data"].erase("tokenizer");
  }
  return c;
}

}  // namespace xmoe
