// Private to src/data: the interface of the SentencePiece shim library (libxmoe_spm.so).
//
// Why a shim: Debian's libsentencepiece.so carries its own copy of protobuf-lite (3.14) and
// exports it, while LibTorch loads the system libprotobuf.so.32. Linked into one program the
// two copies bind to each other's symbols and the program crashes before main(). So only the
// shim links SentencePiece, and xmoe loads it with dlopen(RTLD_LOCAL | RTLD_DEEPBIND): its
// protobuf stays private to it and LibTorch's stays private to the rest. No protobuf or
// SentencePiece type crosses this interface; errors come back as strings, never exceptions.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace xmoe::spm {

constexpr int kApiVersion = 1;

/// Trainer flags, as SentencePiece's --name=value pairs.
using Kwargs = std::vector<std::pair<std::string, std::string>>;

/// A loaded model is an opaque handle; functions returning bool fill `error` on failure.
struct Api {
  int version;
  void* (*load)(const std::string& model_bytes, std::string* error);  // nullptr on failure
  void (*destroy)(void* processor);
  bool (*encode)(const void* processor, const std::string& text, std::vector<int>* ids,
                 std::string* error);
  bool (*encode_pieces)(const void* processor, const std::string& text,
                        std::vector<std::string>* pieces, std::string* error);
  bool (*decode)(const void* processor, const std::vector<int>& ids, std::string* text,
                 std::string* error);
  int (*piece_size)(const void* processor);
  std::string (*id_to_piece)(const void* processor, int id);
  int (*piece_to_id)(const void* processor, const std::string& piece);
  float (*score)(const void* processor, int id);
  /// pad, unk, bos, eos ids of the model (−1 = none).
  void (*special_ids)(const void* processor, int* pad, int* unk, int* bos, int* eos);
  /// Trains on `sentences` with `kwargs`; SentencePiece's generator is seeded with `seed` and
  /// its log threshold set to `log_level` (0 info, 1 warning, 2 error) for the call.
  bool (*train)(const Kwargs& kwargs, const std::vector<std::string>& sentences,
                unsigned int seed, int log_level, std::string* model_bytes, std::string* error);
};

/// The loaded shim's function table (dlopen'ed once, on first use). Throws std::runtime_error
/// naming every path tried when the shim cannot be loaded.
const Api& api();

}  // namespace xmoe::spm

/// The one symbol the shim exports.
extern "C" const xmoe::spm::Api* xmoe_spm_api();
