#include "xmoe/io/safetensors.h"

#include "xmoe/util/atomic_file.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <vector>

// Tensor bytes are copied verbatim between memory and the (little-endian) file.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "xmoe safetensors I/O assumes a little-endian host");

namespace xmoe {
namespace {

using json = nlohmann::json;

constexpr const char* kMetadataKey = "__metadata__";
// Far above any real header; guards against allocating whatever a corrupt length says.
constexpr std::uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;

struct DTypeInfo {
  const char* name;
  at::ScalarType type;
  std::uint64_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {"F32", at::kFloat, 4},
    {"F64", at::kDouble, 8},
    {"I64", at::kLong, 8},
};

const DTypeInfo* find_dtype(const std::string& name) {
  for (const auto& d : kDTypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

const DTypeInfo* find_dtype(at::ScalarType type) {
  for (const auto& d : kDTypes) {
    if (type == d.type) return &d;
  }
  return nullptr;
}

std::string supported_dtypes() {
  std::string out;
  for (const auto& d : kDTypes) out += std::string(out.empty() ? "" : ", ") + d.name;
  return out;
}

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw FileFormatError(path + ": " + what);
}

[[noreturn]] void fail_tensor(const std::string& path, const std::string& name,
                              const std::string& what) {
  fail(path, "tensor '" + name + "': " + what);
}

// A validated header entry.
struct Entry {
  std::string name;
  const DTypeInfo* dtype;
  std::vector<std::int64_t> shape;
  std::uint64_t begin;
  std::uint64_t end;
};

// Reads a JSON integer that must be >= 0 and fit in int64; `what` names it in errors.
std::uint64_t non_negative_integer(const json& v, const std::string& path,
                                   const std::string& name, const std::string& what) {
  if (!v.is_number_integer()) {
    fail_tensor(path, name, what + " must be an integer, got " + v.dump());
  }
  if (v.is_number_unsigned()) {
    const auto u = v.get<std::uint64_t>();
    if (u > static_cast<std::uint64_t>(INT64_MAX)) {
      fail_tensor(path, name, what + " " + v.dump() + " is too large");
    }
    return u;
  }
  const auto s = v.get<std::int64_t>();
  if (s < 0) fail_tensor(path, name, what + " must not be negative, got " + v.dump());
  return static_cast<std::uint64_t>(s);
}

const json& required_field(const json& entry, const char* key, const std::string& path,
                           const std::string& name) {
  const auto it = entry.find(key);
  if (it == entry.end()) fail_tensor(path, name, std::string("missing \"") + key + "\"");
  return *it;
}

Entry parse_entry(const std::string& path, const std::string& name, const json& entry,
                  std::uint64_t data_size) {
  if (!entry.is_object()) {
    fail_tensor(path, name, std::string("entry must be a JSON object, got ") + entry.type_name());
  }
  // Unknown extra fields are ignored, as the reference implementation does.
  Entry e{name, nullptr, {}, 0, 0};

  const json& dtype = required_field(entry, "dtype", path, name);
  if (!dtype.is_string()) fail_tensor(path, name, "\"dtype\" must be a string, got " + dtype.dump());
  e.dtype = find_dtype(dtype.get<std::string>());
  if (e.dtype == nullptr) {
    fail_tensor(path, name,
                "unsupported dtype " + dtype.dump() + " (supported: " + supported_dtypes() + ")");
  }

  const json& shape = required_field(entry, "shape", path, name);
  if (!shape.is_array()) fail_tensor(path, name, "\"shape\" must be an array, got " + shape.dump());
  std::uint64_t numel = 1;
  for (const json& dim : shape) {
    const std::uint64_t d = non_negative_integer(dim, path, name, "shape dimension");
    if (__builtin_mul_overflow(numel, d, &numel) || numel > static_cast<std::uint64_t>(INT64_MAX)) {
      fail_tensor(path, name, "shape " + shape.dump() + " has too many elements");
    }
    e.shape.push_back(static_cast<std::int64_t>(d));
  }
  std::uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, e.dtype->size, &nbytes)) {
    fail_tensor(path, name, "shape " + shape.dump() + " is too large in bytes");
  }

  const json& offsets = required_field(entry, "data_offsets", path, name);
  if (!offsets.is_array() || offsets.size() != 2) {
    fail_tensor(path, name, "\"data_offsets\" must be an array [begin, end], got " + offsets.dump());
  }
  e.begin = non_negative_integer(offsets[0], path, name, "data_offsets begin");
  e.end = non_negative_integer(offsets[1], path, name, "data_offsets end");
  if (e.end < e.begin) {
    fail_tensor(path, name, "data_offsets " + offsets.dump() + " end before begin");
  }
  if (e.end > data_size) {
    fail_tensor(path, name,
                "data_offsets " + offsets.dump() + " end beyond the data section of " +
                    std::to_string(data_size) + " bytes (file truncated?)");
  }
  if (e.end - e.begin != nbytes) {
    fail_tensor(path, name,
                "data_offsets " + offsets.dump() + " span " + std::to_string(e.end - e.begin) +
                    " bytes, but dtype " + e.dtype->name + " and shape " + shape.dump() +
                    " need " + std::to_string(nbytes));
  }
  return e;
}

void check_metadata(const std::string& path, const json& metadata) {
  if (!metadata.is_object()) {
    fail(path, std::string("\"") + kMetadataKey + "\" must be a JSON object, got " +
                   metadata.type_name());
  }
  for (const auto& [key, value] : metadata.items()) {
    if (!value.is_string()) {
      fail(path, std::string("\"") + kMetadataKey + "\" value for key '" + key +
                     "' must be a string, got " + value.dump());
    }
  }
}

// Parses the header, rejecting duplicate keys in any object (nlohmann would silently keep
// the last one, hiding a conflicting tensor definition).
json parse_header(const std::string& path, const std::string& text) {
  std::vector<std::set<std::string>> open_objects;
  const json::parser_callback_t reject_duplicates = [&](int /*depth*/, json::parse_event_t event,
                                                         json& parsed) {
    if (event == json::parse_event_t::object_start) {
      open_objects.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      open_objects.pop_back();
    } else if (event == json::parse_event_t::key) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!open_objects.back().insert(key).second) {
        fail(path, "header has duplicate key '" + key + "'");
      }
    }
    return true;
  };
  try {
    return json::parse(text, reject_duplicates);
  } catch (const json::exception& e) {
    fail(path, std::string("header is not valid JSON: ") + e.what());
  }
}

}  // namespace

TensorMap load_safetensors(const std::string& path, std::map<std::string, std::string>* metadata) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (status.type() == fs::file_type::not_found) fail(path, "file does not exist");
  if (ec) fail(path, "cannot access file: " + ec.message());
  if (!fs::is_regular_file(status)) fail(path, "not a regular file");
  const std::uintmax_t file_size = fs::file_size(path, ec);
  if (ec) fail(path, "cannot determine file size: " + ec.message());

  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, std::string("cannot open file: ") + std::strerror(errno));

  if (file_size < 8) {
    fail(path, "file is " + std::to_string(file_size) +
                   " bytes, too short for the 8-byte header length");
  }
  unsigned char length_bytes[8];
  if (!in.read(reinterpret_cast<char*>(length_bytes), 8)) fail(path, "cannot read header length");
  std::uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | length_bytes[i];
  if (header_size > kMaxHeaderBytes) {
    fail(path, "not a safetensors file, or a corrupt one: header length " +
                   std::to_string(header_size) + " exceeds the limit of " +
                   std::to_string(kMaxHeaderBytes) + " bytes");
  }
  if (header_size > file_size - 8) {
    fail(path, "not a safetensors file, or a truncated one: header length " +
                   std::to_string(header_size) + " exceeds the file size of " +
                   std::to_string(file_size) + " bytes");
  }
  const std::uint64_t data_start = 8 + header_size;
  const std::uint64_t data_size = file_size - data_start;

  std::string header_text(header_size, '\0');
  if (!in.read(header_text.data(), static_cast<std::streamsize>(header_size))) {
    fail(path, "cannot read the " + std::to_string(header_size) + "-byte header");
  }
  const json header = parse_header(path, header_text);
  if (!header.is_object()) {
    fail(path, std::string("header must be a JSON object, got ") + header.type_name());
  }

  std::vector<Entry> entries;
  for (const auto& [name, value] : header.items()) {
    if (name == kMetadataKey) {
      check_metadata(path, value);
      if (metadata != nullptr) {
        for (const auto& [key, text] : value.items()) (*metadata)[key] = text.get<std::string>();
      }
    } else {
      entries.push_back(parse_entry(path, name, value, data_size));
    }
  }

  // Two tensors may not share bytes. Empty ranges hold no bytes, so they never overlap.
  std::vector<const Entry*> by_offset;
  for (const auto& e : entries) {
    if (e.end > e.begin) by_offset.push_back(&e);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const Entry* a, const Entry* b) { return a->begin < b->begin; });
  for (std::size_t i = 1; i < by_offset.size(); ++i) {
    const Entry& prev = *by_offset[i - 1];
    const Entry& cur = *by_offset[i];
    if (cur.begin < prev.end) {
      fail_tensor(path, cur.name, "data_offsets overlap those of tensor '" + prev.name + "'");
    }
  }

  TensorMap tensors;
  for (const auto& e : entries) {
    at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(e.dtype->type));
    const std::uint64_t nbytes = e.end - e.begin;
    if (nbytes > 0) {
      in.seekg(static_cast<std::streamoff>(data_start + e.begin));
      if (!in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(nbytes))) {
        fail_tensor(path, e.name, "cannot read " + std::to_string(nbytes) + " bytes of data");
      }
    }
    tensors.emplace(e.name, std::move(t));
  }
  return tensors;
}

void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // Validate and convert everything before touching the file system.
  std::vector<at::Tensor> cpu;
  cpu.reserve(tensors.size());
  json header = json::object();
  std::uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name == kMetadataKey) {
      throw std::invalid_argument(std::string("save_safetensors: tensor name '") + kMetadataKey +
                                  "' is reserved");
    }
    if (!tensor.defined()) {
      throw std::invalid_argument("save_safetensors: tensor '" + name + "' is undefined");
    }
    const DTypeInfo* dtype = find_dtype(tensor.scalar_type());
    if (dtype == nullptr) {
      throw std::invalid_argument("save_safetensors: tensor '" + name + "' has unsupported dtype " +
                                  std::string(c10::toString(tensor.scalar_type())) +
                                  " (supported: Float, Double, Long)");
    }
    at::Tensor t = tensor.detach().to(at::kCPU);
    if (t.layout() != at::kStrided) t = t.to_dense();
    t = t.contiguous();
    const auto nbytes = static_cast<std::uint64_t>(t.numel()) * dtype->size;
    header[name] = {{"dtype", dtype->name},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    cpu.push_back(std::move(t));
  }
  if (!metadata.empty()) header[kMetadataKey] = metadata;

  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const json::exception& e) {
    throw std::invalid_argument("save_safetensors: " + path +
                                ": tensor names and metadata must be valid UTF-8: " + e.what());
  }
  // Trailing spaces are valid JSON and make the data section 8-byte aligned.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  write_file_atomically(path, [&](std::ostream& out) {
    char length_bytes[8];
    std::uint64_t n = header_text.size();
    for (char& b : length_bytes) {
      b = static_cast<char>(n & 0xff);
      n >>= 8;
    }
    out.write(length_bytes, 8);
    out.write(header_text.data(), static_cast<std::streamsize>(header_text.size()));
    for (const at::Tensor& t : cpu) {
      out.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
    }
  });
}

const at::Tensor& require_tensor(const TensorMap& tensors, const std::string& name,
                                 const std::string& path) {
  const auto it = tensors.find(name);
  if (it == tensors.end()) fail(path, "missing tensor '" + name + "'");
  return it->second;
}

}  // namespace xmoe
