#include "xmoe/train/checkpoint.h"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <regex>
#include <stdexcept>

namespace xmoe {

namespace fs = std::filesystem;

std::string checkpoint_path(const std::string& dir, int64_t step) {
  char name[64];
  std::snprintf(name, sizeof(name), "step-%06lld.safetensors", static_cast<long long>(step));
  return (fs::path(dir) / name).string();
}

namespace {
const std::regex& checkpoint_name_pattern() {
  static const std::regex pattern(R"(step-(\d+)\.safetensors)");
  return pattern;
}

// The whole of `text` as a non-negative step number.
std::optional<int64_t> parse_step(const std::string& text) {
  int64_t value = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || ptr != end || value < 0) return std::nullopt;
  return value;
}

// The step of a file named step-N.safetensors; nullopt for any other name.
std::optional<int64_t> step_of_file_name(const std::string& path) {
  std::smatch m;
  const std::string name = fs::path(path).filename().string();
  if (!std::regex_match(name, m, checkpoint_name_pattern())) return std::nullopt;
  return parse_step(m[1].str());
}
}  // namespace

std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return found;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::optional<int64_t> step = step_of_file_name(entry.path().string());
    if (step && entry.is_regular_file()) found.emplace_back(*step, entry.path().string());
  }
  std::sort(found.begin(), found.end());
  return found;
}

std::string write_checkpoint(const std::string& dir, int64_t step, const TensorMap& tensors,
                             std::map<std::string, std::string> metadata, int64_t keep) {
  fs::create_directories(dir);
  metadata["step"] = std::to_string(step);
  metadata["format"] = kCheckpointFormat;
  const std::string path = checkpoint_path(dir, step);
  save_safetensors(path, tensors, metadata);
  auto all = list_checkpoints(dir);
  for (size_t i = 0; i + static_cast<size_t>(keep) < all.size(); ++i) {
    std::error_code ec;
    fs::remove(all[i].second, ec);  // an old checkpoint that will not go away is harmless
  }
  return path;
}

Checkpoint read_checkpoint(const std::string& path) {
  Checkpoint c;
  c.path = path;
  c.tensors = load_safetensors(path, &c.metadata);
  const auto format = c.metadata.find("format");
  if (format == c.metadata.end() || format->second != kCheckpointFormat)
    throw FileFormatError(path + ": not an xmoe checkpoint (metadata 'format' is not '" +
                          std::string(kCheckpointFormat) + "')");
  const auto step = c.metadata.find("step");
  const std::optional<int64_t> parsed =
      step == c.metadata.end() ? std::nullopt : parse_step(step->second);
  if (!parsed)
    throw FileFormatError(path + ": checkpoint metadata 'step' is missing or not a step number");
  c.step = *parsed;
  // Resume, eval and analysis order checkpoints by the step in the file name; a renamed file
  // would resume at one step and be overwritten as another.
  const std::optional<int64_t> named = step_of_file_name(path);
  if (named && *named != c.step)
    throw FileFormatError(path + ": the file name says step " + std::to_string(*named) +
                          ", its metadata says step " + std::to_string(c.step) +
                          " (a renamed checkpoint: give it its own step's name)");
  return c;
}

std::string resolve_checkpoint(const std::string& run_dir_or_file) {
  std::error_code ec;
  if (fs::is_regular_file(run_dir_or_file, ec)) return run_dir_or_file;
  if (!fs::exists(run_dir_or_file, ec))
    throw std::runtime_error(run_dir_or_file + ": no such checkpoint file or run directory");
  const auto all = list_checkpoints((fs::path(run_dir_or_file) / "checkpoints").string());
  if (all.empty())
    throw std::runtime_error(run_dir_or_file + ": no checkpoint in " +
                             (fs::path(run_dir_or_file) / "checkpoints").string());
  return all.back().second;
}

}  // namespace xmoe
