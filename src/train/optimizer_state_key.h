// The key under which torch::optim keeps a parameter's state: a string made from the
// TensorImpl address in LibTorch 1.x, the pointer itself in later versions. Private to src/train.
#pragma once

#include <ATen/Tensor.h>

#include <sstream>
#include <string>
#include <type_traits>

namespace xmoe {

template <typename Map>
typename Map::key_type optimizer_state_key(const at::Tensor& p) {
  using Key = typename Map::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream key;  // what LibTorch 1.x makes with c10::guts::to_string (internal)
    key << p.unsafeGetTensorImpl();
    return key.str();
  } else {
    return static_cast<Key>(p.unsafeGetTensorImpl());
  }
}

}  // namespace xmoe
