// safetensors files: an 8-byte little-endian header length N, N bytes of JSON header
// ({"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//   optional "__metadata__": {string: string}}), then the raw little-endian tensor bytes.
// Supported dtypes: F32, F64, I64. Every malformed file is rejected with an
// xmoe::FileFormatError naming the file and, where it applies, the tensor.
#pragma once

#include <ATen/Tensor.h>

#include <map>
#include <stdexcept>
#include <string>

namespace xmoe {

/// Thrown for any malformed or inconsistent input file; the message names the file
/// and the offending tensor or key.
class FileFormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Named tensors in a deterministic (sorted by name) order.
using TensorMap = std::map<std::string, at::Tensor>;

/// Reads every tensor of `path` into contiguous CPU tensors.
/// Throws FileFormatError on: a missing or unreadable file, a file shorter than its header,
/// a header that is not a JSON object, an unknown dtype, a shape that is not a list of
/// non-negative integers, data_offsets outside the data section, overlapping or
/// size-mismatched offsets.
/// When `metadata` is given it receives the header's "__metadata__" entries.
TensorMap load_safetensors(const std::string& path,
                           std::map<std::string, std::string>* metadata = nullptr);

/// Writes `tensors` (any device, any layout; converted to contiguous CPU) to `path`
/// atomically: a temporary file beside it, fsync, rename. Throws std::invalid_argument for an
/// unsupported dtype (naming the tensor) and std::runtime_error for I/O failures.
void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata = {});

/// Returns tensors.at(name) or throws FileFormatError "<path>: missing tensor '<name>'".
const at::Tensor& require_tensor(const TensorMap& tensors, const std::string& name,
                                 const std::string& path);

}  // namespace xmoe
