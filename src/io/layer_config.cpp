#include "xmoe/io/layer_config.h"

#include "xmoe/io/safetensors.h"  // FileFormatError
#include "xmoe/io/strict_json.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <vector>

namespace xmoe {

namespace {

using nlohmann::json;

[[noreturn]] void config_error(const std::string& source, const std::string& message) {
  throw FileFormatError(source + ": " + message);
}

std::string type_name(const json& v) { return v.type_name(); }

int64_t get_int(const json& v, const std::string& key, const std::string& source) {
  if (!v.is_number_integer())
    config_error(source, "key '" + key + "' must be an integer, got " + type_name(v) + " " + v.dump());
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t{INT64_MAX})
    config_error(source, "key '" + key + "' is too large: " + v.dump());
  return v.get<int64_t>();
}

double get_number(const json& v, const std::string& key, const std::string& source) {
  if (!v.is_number())
    config_error(source, "key '" + key + "' must be a number, got " + type_name(v) + " " + v.dump());
  return v.get<double>();
}

bool get_bool(const json& v, const std::string& key, const std::string& source) {
  if (!v.is_boolean())
    config_error(source, "key '" + key + "' must be true or false, got " + type_name(v) + " " + v.dump());
  return v.get<bool>();
}

std::string get_string(const json& v, const std::string& key, const std::string& source) {
  if (!v.is_string())
    config_error(source, "key '" + key + "' must be a string, got " + type_name(v) + " " + v.dump());
  return v.get<std::string>();
}

using Setter = std::function<void(MoELayerOptions&, const json&, const std::string&)>;

const std::map<std::string, Setter>& optional_keys() {
  // Each key once: how it is read and where it goes. Enum values are checked by the parsers,
  // whose messages list the allowed values.
  static const std::map<std::string, Setter> keys = {
      {"router", [](auto& o, const json& v, auto& s) { o.router(get_string(v, "router", s)); }},
      {"gate", [](auto& o, const json& v, auto& s) { o.gate(parse_gate_kind(get_string(v, "gate", s))); }},
      {"normalize_topk", [](auto& o, const json& v, auto& s) { o.normalize_topk(get_bool(v, "normalize_topk", s)); }},
      {"second_expert_policy", [](auto& o, const json& v, auto& s) {
         o.second_expert_policy(parse_second_expert_policy(get_string(v, "second_expert_policy", s)));
       }},
      {"capacity_factor", [](auto& o, const json& v, auto& s) { o.capacity_factor(get_number(v, "capacity_factor", s)); }},
      {"eval_capacity_factor", [](auto& o, const json& v, auto& s) {
         o.eval_capacity_factor(get_number(v, "eval_capacity_factor", s));
       }},
      {"activation", [](auto& o, const json& v, auto& s) { o.activation(parse_activation(get_string(v, "activation", s))); }},
      {"expert_depth", [](auto& o, const json& v, auto& s) { o.expert_depth(get_int(v, "expert_depth", s)); }},
      {"d_e", [](auto& o, const json& v, auto& s) { o.d_e(get_int(v, "d_e", s)); }},
      {"expert_norm", [](auto& o, const json& v, auto& s) { o.expert_norm(get_number(v, "expert_norm", s)); }},
      {"temperature_init", [](auto& o, const json& v, auto& s) { o.temperature_init(get_number(v, "temperature_init", s)); }},
      {"balance_temperature", [](auto& o, const json& v, auto& s) { o.balance_temperature(get_number(v, "balance_temperature", s)); }},
      {"normalize_tokens", [](auto& o, const json& v, auto& s) { o.normalize_tokens(get_bool(v, "normalize_tokens", s)); }},
      {"dim_reduction", [](auto& o, const json& v, auto& s) { o.dim_reduction(get_bool(v, "dim_reduction", s)); }},
      {"l2_norm", [](auto& o, const json& v, auto& s) { o.l2_norm(get_bool(v, "l2_norm", s)); }},
      {"balance_coef", [](auto& o, const json& v, auto& s) { o.balance_coef(get_number(v, "balance_coef", s)); }},
      {"importance_coef", [](auto& o, const json& v, auto& s) { o.importance_coef(get_number(v, "importance_coef", s)); }},
      {"load_coef", [](auto& o, const json& v, auto& s) { o.load_coef(get_number(v, "load_coef", s)); }},
      {"z_loss_coef", [](auto& o, const json& v, auto& s) { o.z_loss_coef(get_number(v, "z_loss_coef", s)); }},
      {"noise_epsilon", [](auto& o, const json& v, auto& s) { o.noise_epsilon(get_number(v, "noise_epsilon", s)); }},
  };
  return keys;
}

const char* const kRequiredKeys[] = {"d_model", "d_ff", "n_expert", "top_k"};

}  // namespace

MoELayerOptions parse_layer_config(const std::string& json_text, const std::string& source) {
  json root = parse_json_object(json_text, source);

  for (const char* key : kRequiredKeys) {
    if (!root.contains(key)) config_error(source, std::string("missing required key '") + key + "'");
  }
  for (const auto& item : root.items()) {
    const bool required = std::find_if(std::begin(kRequiredKeys), std::end(kRequiredKeys),
                                       [&](const char* k) { return item.key() == k; }) !=
                          std::end(kRequiredKeys);
    if (!required && optional_keys().count(item.key()) == 0) {
      std::string known;
      for (const char* k : kRequiredKeys) known += std::string(known.empty() ? "" : ", ") + k;
      for (const auto& k : optional_keys()) known += ", " + k.first;
      config_error(source, "unknown key '" + item.key() + "' (known: " + known + ")");
    }
  }

  MoELayerOptions options(get_int(root["d_model"], "d_model", source),
                          get_int(root["d_ff"], "d_ff", source),
                          get_int(root["n_expert"], "n_expert", source));
  options.top_k(get_int(root["top_k"], "top_k", source));
  try {
    for (const auto& item : root.items()) {
      auto it = optional_keys().find(item.key());
      if (it != optional_keys().end()) it->second(options, item.value(), source);
    }
    options.validate();
  } catch (const OptionError& e) {  // a config file's reader knows keys, not C++ classes
    config_error(source, e.option_message());
  } catch (const std::invalid_argument& e) {
    config_error(source, e.what());
  }
  return options;
}

MoELayerOptions load_layer_config(const std::string& path) {
  return parse_layer_config(read_text_file(path, "layer config"), path);
}

std::string layer_config_to_json(const MoELayerOptions& o) {
  const RouterOptions r = o.router_options();
  json j = {
      {"d_model", o.d_model()},
      {"d_ff", o.d_ff()},
      {"n_expert", o.n_expert()},
      {"top_k", o.top_k()},
      {"router", o.router()},
      {"gate", to_string(o.gate())},
      {"normalize_topk", o.normalize_topk()},
      {"second_expert_policy", to_string(o.second_expert_policy())},
      {"capacity_factor", o.capacity_factor()},
      {"activation", to_string(o.activation())},
      {"expert_depth", o.expert_depth()},
      {"d_e", r.resolved_d_e()},
      {"expert_norm", o.expert_norm()},
      {"temperature_init", r.resolved_temperature_init()},
      {"balance_temperature", o.balance_temperature()},
      {"normalize_tokens", o.normalize_tokens()},
      {"dim_reduction", o.dim_reduction()},
      {"l2_norm", o.l2_norm()},
      {"balance_coef", o.balance_coef()},
      {"importance_coef", o.importance_coef()},
      {"load_coef", o.load_coef()},
      {"z_loss_coef", o.z_loss_coef()},
      {"noise_epsilon", o.noise_epsilon()},
  };
  if (o.eval_capacity_factor()) j["eval_capacity_factor"] = *o.eval_capacity_factor();
  return j.dump(2);
}

}  // namespace xmoe
