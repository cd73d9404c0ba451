#include "xmoe/train/checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <regex>
#include <stdexcept>

namespace xmoe {

namespace fs = std::filesystem;

std::string checkpoint_path(const std::string& dir, int64_t step) {
  char name[64];
  std::snprintf(name, sizeof(name), "step-%06lld.safetensors", static_cast<long long>(step));
  return (fs::path(dir) / name).string();
}

std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& dir) {
  static const std::regex pattern(R"(step-(\d+)\.safetensors)");
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return found;
  for (const auto& entry : fs::directory_iterator(dir)) {
    std::smatch m;
    const std::string name = entry.path().filename().string();
    if (entry.is_regular_file() && std::regex_match(name, m, pattern))
      found.emplace_back(std::stoll(m[1].str()), entry.path().string());
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
  try {
    if (step == c.metadata.end()) throw std::invalid_argument("missing");
    c.step = std::stoll(step->second);
  } catch (const std::exception&) {
    throw FileFormatError(path + ": checkpoint metadata 'step' is missing or not a number");
  }
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
