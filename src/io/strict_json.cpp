#include "xmoe/io/strict_json.h"

#include "xmoe/io/safetensors.h"  // FileFormatError

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
  }
  if (!duplicate.empty())
    throw FileFormatError(source + ": key '" + duplicate + "' appears more than once");
  if (!root.is_object())
    throw FileFormatError(source + ": must be a JSON object, got " + root.type_name());
  return root;
}

std::string read_text_file(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FileFormatError(path + ": cannot open " + what);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace xmoe
