// JSON text → nlohmann::json for configuration files, stricter than the library default:
// nlohmann keeps the last of duplicate keys silently, and a config that says two things is an
// error here.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

namespace xmoe {

/// Parses `text`. Throws xmoe::FileFormatError "<source>: …" for malformed JSON, a key that
/// appears twice in one object (naming it), or a top level that is not an object.
nlohmann::json parse_json_object(const std::string& text, const std::string& source);

/// Reads a whole file; throws xmoe::FileFormatError "<path>: cannot open <what>".
std::string read_text_file(const std::string& path, const std::string& what);

}  // namespace xmoe
