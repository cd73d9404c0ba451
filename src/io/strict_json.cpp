#include "xmoe/io/strict_json.h"

#include "xmoe/io/safetensors.h"  // FileFormatError

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <vector>

namespace xmoe {

nlohmann::json parse_json_object(const std::string& text, const std::string& source) {
  using nlohmann::json;
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  auto track_keys = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) open_objects.emplace_back();
    if (event == json::parse_event_t::object_end) open_objects.pop_back();
    if (event == json::parse_event_t::key && !open_objects.empty() &&
        !open_objects.back().insert(parsed.get<std::string>()).second && duplicate.empty()) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  json root;
  try {
    root = json::parse(text, track_keys);
  } catch (const json::parse_error& e) {
    throw FileFormatError(source + ": not valid JSON: " + e.what());
  } catch (const json::exception& e) {  // e.g. out_of_range 406: a number like 1e999
    throw FileFormatError(source + ": " + e.what());
  }
  if (!duplicate.empty())
    throw FileFormatError(source + ": key '" + duplicate + "' appears more than once");
  if (!root.is_object())
    throw FileFormatError(source + ": must be a JSON object, got " + root.type_name());
  return root;
}

std::string read_text_file(const std::string& path, const std::string& what) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (status.type() == fs::file_type::not_found)
    throw FileFormatError(path + ": cannot open " + what + ": no such file");
  // A directory, device or FIFO would read as garbage, without end (/dev/zero) or never return.
  if (!fs::is_regular_file(status))
    throw FileFormatError(path + ": cannot read " + what + ": not a regular file");
  constexpr std::uintmax_t kMaxBytes = 16u << 20;
  const std::uintmax_t size = fs::file_size(path, ec);
  if (!ec && size > kMaxBytes)
    throw FileFormatError(path + ": " + what + " is " + std::to_string(size) +
                          " bytes; a config file is at most 16 MiB");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FileFormatError(path + ": cannot open " + what);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

namespace {
void collect_differences(const nlohmann::json& a, const nlohmann::json& b,
                         const std::string& prefix, std::vector<std::string>* out) {
  if (!(a.is_object() && b.is_object())) {
    if (a != b) out->push_back(prefix.empty() ? "(root)" : prefix);
    return;
  }
  const auto path = [&](const std::string& key) {
    return prefix.empty() ? key : prefix + "." + key;
  };
  for (const auto& [key, value] : a.items()) {
    if (b.contains(key)) {
      collect_differences(value, b[key], path(key), out);
    } else {
      out->push_back(path(key));
    }
  }
  for (const auto& item : b.items())
    if (!a.contains(item.key())) out->push_back(path(item.key()));
}
}  // namespace

std::vector<std::string> json_differences(const nlohmann::json& a, const nlohmann::json& b) {
  std::vector<std::string> out;
  collect_differences(a, b, "", &out);
  return out;
}

std::string first_json_difference(const nlohmann::json& a, const nlohmann::json& b) {
  const std::vector<std::string> all = json_differences(a, b);
  return all.empty() ? "" : all.front();
}

}  // namespace xmoe
