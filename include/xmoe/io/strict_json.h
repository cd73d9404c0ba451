// JSON text → nlohmann::json for configuration files, stricter than the library default:
// nlohmann keeps the last of duplicate keys silently, and a config that says two things is an
// error here.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace xmoe {

/// Parses `text`. Throws xmoe::FileFormatError "<source>: …" for malformed JSON, a key that
/// appears twice in one object (naming it), or a top level that is not an object.
nlohmann::json parse_json_object(const std::string& text, const std::string& source);

/// Reads a whole config file; throws xmoe::FileFormatError naming `path` when it is missing,
/// not a regular file (a directory, device or FIFO), larger than 16 MiB or unreadable.
std::string read_text_file(const std::string& path, const std::string& what);

/// The dotted paths of the keys where `a` and `b` differ, in key order ("model.d_ff"; "(root)"
/// when they differ at the top and are not both objects); empty when they are equal.
std::vector<std::string> json_differences(const nlohmann::json& a, const nlohmann::json& b);

/// The first of json_differences(a, b), or "" when they are equal.
std::string first_json_difference(const nlohmann::json& a, const nlohmann::json& b);

}  // namespace xmoe
