// Training checkpoints: one safetensors file per checkpoint in <run>/checkpoints/, named
// step-NNNNNN.safetensors, holding every tensor of the training state (model, optimizer, RNG,
// data position; docs/run-directory.md) and string metadata (step, format, resolved config).
//
// Writes are atomic (temporary file, fsync, rename, directory fsync): a crash or an error in the
// middle leaves the previous checkpoints as they were, and a left-over temporary file is never
// taken for a checkpoint.
#pragma once

#include "xmoe/io/safetensors.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace xmoe {

inline constexpr const char* kCheckpointFormat = "xmoe-checkpoint-1";

struct Checkpoint {
  std::string path;
  int64_t step = 0;
  TensorMap tensors;
  std::map<std::string, std::string> metadata;
};

/// <dir>/step-NNNNNN.safetensors.
std::string checkpoint_path(const std::string& dir, int64_t step);

/// (step, path) of every checkpoint file in `dir`, by increasing step; empty when `dir` does
/// not exist. Temporary and foreign files are ignored.
std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& dir);

/// Writes the checkpoint of `step` (adding "step" and "format" to the metadata), then deletes
/// all but the newest `keep` checkpoints. Returns the path written.
std::string write_checkpoint(const std::string& dir, int64_t step, const TensorMap& tensors,
                             std::map<std::string, std::string> metadata, int64_t keep);

/// Reads and checks a checkpoint file. Throws xmoe::FileFormatError naming the file for a
/// missing, truncated or corrupt file, or one that is not an xmoe checkpoint.
Checkpoint read_checkpoint(const std::string& path);

/// The newest checkpoint of a run directory (<run>/checkpoints) or the checkpoint file itself.
/// Throws std::runtime_error when there is none.
std::string resolve_checkpoint(const std::string& run_dir_or_file);

}  // namespace xmoe
