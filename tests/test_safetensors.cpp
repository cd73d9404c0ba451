#include "xmoe/io/safetensors.h"
#include "xmoe/util/atomic_file.h"
#include "test_util.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using xmoe::FileFormatError;
using xmoe::TensorMap;

std::string le64(std::uint64_t n) {
  std::string out(8, '\0');
  for (char& b : out) {
    b = static_cast<char>(n & 0xff);
    n >>= 8;
  }
  return out;
}

// The in-memory bytes of `values` (the host is little-endian, like the format).
template <typename T>
std::string raw_bytes(std::initializer_list<T> values) {
  std::string out;
  for (const T& v : values) out.append(reinterpret_cast<const char*>(&v), sizeof(T));
  return out;
}

std::string file_bytes(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

using xmoe_test::Contains;
using xmoe_test::read_file;
using xmoe_test::write_file;

std::uint64_t header_length(const std::string& bytes) {
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes.at(i));
  return n;
}

nlohmann::json read_header(const std::string& path) {
  const std::string bytes = read_file(path);
  return nlohmann::json::parse(bytes.substr(8, header_length(bytes)));
}

// Expects load_safetensors(path) to throw a FileFormatError whose message starts with the
// path and contains every needle.
void expect_format_error(const std::string& path, const std::vector<std::string>& needles) {
  try {
    xmoe::load_safetensors(path);
    ADD_FAILURE() << "no FileFormatError for " << path;
  } catch (const FileFormatError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind(path, 0), 0u) << "message does not start with the path: " << msg;
    for (const auto& needle : needles) {
      EXPECT_TRUE(Contains(msg, needle));
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type for " << path << ": " << e.what();
  }
}

// Same dtype, shape and bytes (NaN payloads and -0.0 included).
void expect_bit_equal(const at::Tensor& expected, const at::Tensor& actual,
                      const std::string& name) {
  SCOPED_TRACE(name);
  ASSERT_TRUE(actual.defined());
  EXPECT_EQ(actual.scalar_type(), expected.scalar_type());
  ASSERT_EQ(actual.sizes(), expected.sizes());
  EXPECT_TRUE(actual.is_contiguous());
  EXPECT_TRUE(actual.device().is_cpu());
  const at::Tensor e = expected.contiguous();
  ASSERT_EQ(actual.nbytes(), e.nbytes());
  if (e.nbytes() > 0) {
    EXPECT_EQ(std::memcmp(actual.data_ptr(), e.data_ptr(), e.nbytes()), 0);
  }
}

std::vector<std::string> directory_entries(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

class SafetensorsTest : public ::testing::Test {
 protected:
  std::string file(const std::string& name) const { return tmp_.file(name); }

  xmoe_test::TempDir tmp_{"xmoe_safetensors"};
  fs::path dir_{tmp_.path()};
};

TEST_F(SafetensorsTest, RoundTripIsBitExact) {
  at::Tensor f32 = at::randn({3, 4}, at::kFloat);
  f32[0][0] = std::numeric_limits<float>::quiet_NaN();
  f32[0][1] = -0.0f;
  f32[0][2] = std::numeric_limits<float>::infinity();
  f32[0][3] = std::numeric_limits<float>::denorm_min();
  TensorMap tensors{
      {"f32", f32},
      {"f64", at::randn({5}, at::kDouble)},
      {"i64", at::tensor(std::vector<std::int64_t>{std::numeric_limits<std::int64_t>::min(), -1, 0,
                                                   std::numeric_limits<std::int64_t>::max()})},
      {"scalar", at::scalar_tensor(3.25, at::kFloat)},
      {"empty", at::empty({0, 3}, at::kDouble)},
      {"transposed", at::arange(12, at::kLong).reshape({3, 4}).t()},
      {"grad", at::ones({2}, at::kDouble).requires_grad_()},
  };
  const std::string path = file("model.safetensors");
  xmoe::save_safetensors(path, tensors);

  const TensorMap loaded = xmoe::load_safetensors(path);
  ASSERT_EQ(loaded.size(), tensors.size());
  for (const auto& [name, tensor] : tensors) {
    ASSERT_EQ(loaded.count(name), 1u) << name;
    expect_bit_equal(tensor, loaded.at(name), name);
  }
  EXPECT_EQ(loaded.at("scalar").dim(), 0);
  EXPECT_EQ(loaded.at("empty").numel(), 0);
  EXPECT_FALSE(loaded.at("grad").requires_grad());
  EXPECT_EQ(directory_entries(dir_), std::vector<std::string>{"model.safetensors"});
}

TEST_F(SafetensorsTest, WritesMetadataAndNameOrderedLayout) {
  const std::string path = file("meta.safetensors");
  const std::map<std::string, std::string> metadata{{"format", "pt"}, {"note", "h\xc3\xa9llo"}};
  xmoe::save_safetensors(path,
                         {{"b", at::ones({2}, at::kFloat)}, {"a", at::zeros({3}, at::kLong)}},
                         metadata);
  const nlohmann::json header = read_header(path);
  using StringMap = std::map<std::string, std::string>;
  EXPECT_EQ(header.at("__metadata__").get<StringMap>(), metadata);
  EXPECT_EQ(header.at("a").at("dtype"), "I64");
  EXPECT_EQ(header.at("a").at("data_offsets"), nlohmann::json({0, 24}));
  EXPECT_EQ(header.at("b").at("dtype"), "F32");
  EXPECT_EQ(header.at("b").at("shape"), nlohmann::json({2}));
  EXPECT_EQ(header.at("b").at("data_offsets"), nlohmann::json({24, 32}));
  StringMap read_back;
  EXPECT_EQ(xmoe::load_safetensors(path, &read_back).size(), 2u);
  EXPECT_EQ(read_back, metadata);
}

TEST_F(SafetensorsTest, HeaderIsPaddedToEightBytes) {
  // Names of every length mod 8 exercise every padding amount.
  for (int len = 1; len <= 8; ++len) {
    const std::string name(len, 'x');
    const std::string path = file("pad" + std::to_string(len) + ".safetensors");
    const at::Tensor t = at::arange(3, at::kDouble);
    xmoe::save_safetensors(path, {{name, t}});
    const std::string bytes = read_file(path);
    const std::uint64_t n = header_length(bytes);
    EXPECT_EQ((8 + n) % 8, 0u) << name;
    EXPECT_EQ(bytes.size(), 8 + n + 24) << name;
    expect_bit_equal(t, xmoe::load_safetensors(path).at(name), name);
  }
}

TEST_F(SafetensorsTest, SaveEmptyMapAndOverwrite) {
  const std::string path = file("m.safetensors");
  xmoe::save_safetensors(path, {});
  EXPECT_TRUE(xmoe::load_safetensors(path).empty());
  xmoe::save_safetensors(path, {{"w", at::full({2}, 7, at::kLong)}});
  const TensorMap loaded = xmoe::load_safetensors(path);
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_EQ(loaded.at("w")[1].item<std::int64_t>(), 7);
}

TEST_F(SafetensorsTest, ParsesHandWrittenFile) {
  // Unpadded header, entries out of name order, metadata, a scalar and an empty tensor.
  const std::string header =
      R"({"b":{"dtype":"I64","shape":[],"data_offsets":[8,16]},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("c":{"dtype":"F64","shape":[1,1],"data_offsets":[16,24]},)"
      R"("e":{"dtype":"F64","shape":[2,0],"data_offsets":[24,24]},)"
      R"("__metadata__":{"format":"pt"}})";
  const std::string data =
      raw_bytes<float>({1.5f, -2.0f}) + raw_bytes<std::int64_t>({-42}) + raw_bytes<double>({0.1});
  const std::string path = file("hand.safetensors");
  write_file(path, file_bytes(header, data));

  const TensorMap t = xmoe::load_safetensors(path);
  ASSERT_EQ(t.size(), 4u);
  EXPECT_EQ(t.at("a").scalar_type(), at::kFloat);
  EXPECT_EQ(t.at("a").sizes(), at::IntArrayRef({2}));
  EXPECT_EQ(t.at("a")[0].item<float>(), 1.5f);
  EXPECT_EQ(t.at("a")[1].item<float>(), -2.0f);
  EXPECT_EQ(t.at("b").scalar_type(), at::kLong);
  EXPECT_EQ(t.at("b").dim(), 0);
  EXPECT_EQ(t.at("b").item<std::int64_t>(), -42);
  EXPECT_EQ(t.at("c").scalar_type(), at::kDouble);
  EXPECT_EQ(t.at("c").sizes(), at::IntArrayRef({1, 1}));
  EXPECT_EQ(t.at("c")[0][0].item<double>(), 0.1);
  EXPECT_EQ(t.at("e").sizes(), at::IntArrayRef({2, 0}));
}

TEST_F(SafetensorsTest, RejectsBadFileFraming) {
  expect_format_error(file("missing.safetensors"), {"does not exist"});
  expect_format_error(dir_.string(), {"not a regular file"});

  const std::string empty = file("empty.safetensors");
  write_file(empty, "");
  expect_format_error(empty, {"too short"});
  const std::string tiny = file("tiny.safetensors");
  write_file(tiny, "abc");
  expect_format_error(tiny, {"too short"});

  const std::string longer = file("longer.safetensors");
  write_file(longer, le64(100) + "{}");
  expect_format_error(longer, {"exceeds the file size"});
  const std::string absurd = file("absurd.safetensors");
  write_file(absurd, le64(std::uint64_t{1} << 40) + "{}");
  expect_format_error(absurd, {"not a safetensors file", "exceeds the limit"});
  const std::string max = file("max.safetensors");
  write_file(max, le64(std::numeric_limits<std::uint64_t>::max()) + "{}");
  expect_format_error(max, {"exceeds the limit"});
}

TEST_F(SafetensorsTest, RejectsCorruptHeaders) {
  struct Case {
    const char* label;
    std::string header;
    std::string data;
    std::vector<std::string> needles;
  };
  const std::string eight(8, '\0');
  const std::vector<Case> cases{
      {"invalid_json", R"({"t":)", "", {"not valid JSON"}},
      {"invalid_utf8", "{\"t\xff\":{}}", "", {"not valid JSON"}},
      {"empty_header", "", "", {"not valid JSON"}},
      {"not_object", "[1,2]", "", {"JSON object", "array"}},
      {"entry_not_object", R"({"t":[1]})", "", {"'t'", "JSON object"}},
      {"missing_dtype", R"({"t":{"shape":[2],"data_offsets":[0,8]}})", eight, {"'t'", "dtype"}},
      {"dtype_not_string", R"({"t":{"dtype":3,"shape":[2],"data_offsets":[0,8]}})", eight,
       {"'t'", "dtype"}},
      {"unknown_dtype", R"({"t":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]}})", eight,
       {"'t'", "BF16", "F32, F64, I64"}},
      {"missing_shape", R"({"t":{"dtype":"F32","data_offsets":[0,8]}})", eight, {"'t'", "shape"}},
      {"shape_not_array", R"({"t":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", eight,
       {"'t'", "shape"}},
      {"negative_dim", R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight,
       {"'t'", "negative"}},
      {"float_dim", R"({"t":{"dtype":"F32","shape":[1.5],"data_offsets":[0,8]}})", eight,
       {"'t'", "integer"}},
      {"string_dim", R"({"t":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", eight,
       {"'t'", "integer"}},
      {"huge_dim", R"({"t":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]}})",
       eight, {"'t'", "too large"}},
      {"numel_overflow",
       R"({"t":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", eight,
       {"'t'", "too many elements"}},
      {"nbytes_overflow",
       R"({"t":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,8]}})", eight,
       {"'t'", "too large in bytes"}},
      {"missing_offsets", R"({"t":{"dtype":"F32","shape":[2]}})", eight, {"'t'", "data_offsets"}},
      {"offsets_not_array", R"({"t":{"dtype":"F32","shape":[2],"data_offsets":8}})", eight,
       {"'t'", "data_offsets"}},
      {"offsets_three", R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})", eight,
       {"'t'", "data_offsets"}},
      {"offsets_negative", R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", eight,
       {"'t'", "negative"}},
      {"offsets_float", R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8.0]}})", eight,
       {"'t'", "integer"}},
      {"offsets_huge",
       R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551615]}})", eight,
       {"'t'", "too large"}},
      {"end_before_begin", R"({"t":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", eight,
       {"'t'", "end before begin"}},
      {"end_beyond_data", R"({"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", eight,
       {"'t'", "beyond the data section"}},
      {"size_mismatch", R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight,
       {"'t'", "need 12"}},
      {"overlap",
       R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
       R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       std::string(12, '\0'), {"'a'", "'b'", "overlap"}},
      {"same_range",
       R"({"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},)"
       R"("b":{"dtype":"F64","shape":[],"data_offsets":[0,8]}})",
       eight, {"'a'", "'b'", "overlap"}},
      {"duplicate_tensor",
       R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
       R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
       eight, {"duplicate", "'t'"}},
      {"metadata_not_object", R"({"__metadata__":[1]})", "", {"__metadata__", "JSON object"}},
      {"metadata_value_not_string", R"({"__metadata__":{"k":1}})", "", {"__metadata__", "'k'"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    const std::string path = file(std::string(c.label) + ".safetensors");
    write_file(path, file_bytes(c.header, c.data));
    expect_format_error(path, c.needles);
  }
}

TEST_F(SafetensorsTest, RejectsTruncatedFile) {
  const std::string path = file("truncated.safetensors");
  xmoe::save_safetensors(path, {{"weights", at::randn({4, 4}, at::kFloat)}});
  const std::string bytes = read_file(path);
  write_file(path, bytes.substr(0, bytes.size() - 4));
  expect_format_error(path, {"'weights'", "beyond the data section"});
}

// Every truncation of a valid file, and every byte of it replaced by values that matter to a
// JSON parser or to the length prefix, is either read or refused with a FileFormatError naming
// the file: no other exception, no crash (the sanitizer build checks out-of-bounds reads).
TEST_F(SafetensorsTest, EveryTruncationAndByteMutationIsReadOrRefused) {
  const std::string path = file("mutated.safetensors");
  xmoe::save_safetensors(path,
                         {{"a", at::arange(6, at::kFloat).reshape({2, 3})},
                          {"b", at::arange(2, at::kLong)}},
                         {{"k", "v"}});
  const std::string bytes = read_file(path);
  ASSERT_GT(bytes.size(), 64u);

  for (size_t length = 0; length < bytes.size(); ++length) {
    SCOPED_TRACE("truncated to " + std::to_string(length) + " bytes");
    write_file(path, bytes.substr(0, length));
    expect_format_error(path, {});
  }

  int loaded = 0;
  int refused = 0;
  for (size_t at_byte = 0; at_byte < bytes.size(); ++at_byte) {
    const unsigned char original = static_cast<unsigned char>(bytes[at_byte]);
    const unsigned char flipped = original ^ 0x01u;
    for (const unsigned char value : std::initializer_list<unsigned char>{
             0x00, 0x01, 0x20, 0x22, 0x2c, 0x30, 0x39, 0x5b, 0x7d, 0x80, 0xff, flipped}) {
      if (value == original) continue;
      std::string mutated = bytes;
      mutated[at_byte] = static_cast<char>(value);
      write_file(path, mutated);
      try {
        const TensorMap tensors = xmoe::load_safetensors(path);
        for (const auto& [name, tensor] : tensors) {
          ASSERT_TRUE(tensor.is_contiguous()) << name;
        }
        ++loaded;
      } catch (const FileFormatError& e) {
        ASSERT_EQ(std::string(e.what()).rfind(path, 0), 0u) << e.what();
        ++refused;
      } catch (const std::exception& e) {
        FAIL() << "byte " << at_byte << " set to " << int{value} << ": " << e.what();
      }
    }
  }
  // Data bytes may take any value; the length prefix and most header bytes may not.
  EXPECT_GT(loaded, 0);
  EXPECT_GT(refused, loaded);
}

TEST_F(SafetensorsTest, RequireTensor) {
  const at::Tensor w = at::ones({2}, at::kFloat);
  const TensorMap tensors{{"w", w}};
  EXPECT_TRUE(xmoe::require_tensor(tensors, "w", "model.safetensors").is_same(w));
  try {
    xmoe::require_tensor(tensors, "bias", "model.safetensors");
    ADD_FAILURE() << "no FileFormatError";
  } catch (const FileFormatError& e) {
    EXPECT_EQ(std::string(e.what()), "model.safetensors: missing tensor 'bias'");
  }
}

TEST_F(SafetensorsTest, SaveRejectsUnsupportedInput) {
  const std::string path = file("bad.safetensors");
  try {
    xmoe::save_safetensors(path, {{"ok", at::ones({1})}, {"ints", at::zeros({2}, at::kInt)}});
    ADD_FAILURE() << "no std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_TRUE(Contains(e.what(), "'ints'"));
    EXPECT_TRUE(Contains(e.what(), "Int"));
  }
  EXPECT_THROW(xmoe::save_safetensors(path, {{"__metadata__", at::ones({1})}}),
               std::invalid_argument);
  EXPECT_THROW(xmoe::save_safetensors(path, {{"undefined", at::Tensor()}}), std::invalid_argument);
  EXPECT_TRUE(directory_entries(dir_).empty());

  const std::string nowhere = file("no/such/dir/x.safetensors");
  try {
    xmoe::save_safetensors(nowhere, {{"w", at::ones({1})}});
    ADD_FAILURE() << "no std::runtime_error";
  } catch (const std::runtime_error& e) {
    EXPECT_TRUE(Contains(e.what(), nowhere));
  }
}

TEST_F(SafetensorsTest, AtomicWriteReplacesFile) {
  const std::string path = file("data.txt");
  write_file(path, "old contents");
  xmoe::write_file_atomically(path, [](std::ostream& out) { out << "new contents"; });
  EXPECT_EQ(read_file(path), "new contents");
  EXPECT_EQ(directory_entries(dir_), std::vector<std::string>{"data.txt"});
}

TEST_F(SafetensorsTest, AtomicWriteFailureKeepsOldFile) {
  const std::string path = file("data.txt");
  write_file(path, "old contents");
  try {
    xmoe::write_file_atomically(path, [](std::ostream& out) {
      out << "partial";
      throw std::logic_error("boom");
    });
    ADD_FAILURE() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_TRUE(Contains(e.what(), path));
    EXPECT_TRUE(Contains(e.what(), "boom"));
  }
  EXPECT_THROW(xmoe::write_file_atomically(path, [](std::ostream&) { throw 42; }),
               std::runtime_error);
  EXPECT_EQ(read_file(path), "old contents");
  EXPECT_EQ(directory_entries(dir_), std::vector<std::string>{"data.txt"});

  const std::string nowhere = file("missing_dir/data.txt");
  try {
    xmoe::write_file_atomically(nowhere, [](std::ostream& out) { out << "x"; });
    ADD_FAILURE() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_TRUE(Contains(e.what(), nowhere));
  }
  EXPECT_EQ(directory_entries(dir_), std::vector<std::string>{"data.txt"});
}

}  // namespace
