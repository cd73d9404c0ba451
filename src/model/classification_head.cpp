#include "xmoe/model/classification_head.h"

#include "xmoe/kernels/dropout.h"
#include "xmoe/util/init.h"

#include <ATen/ATen.h>

#include <stdexcept>
#include <string>

namespace xmoe {

ClassificationHeadImpl::ClassificationHeadImpl(int64_t d_model, int64_t n_classes, double dropout,
                                               uint64_t seed)
    : dropout_(dropout) {
  if (d_model <= 0 || n_classes < 2)
    throw std::invalid_argument("classification head: d_model must be > 0 and n_classes >= 2, "
                                "got " + std::to_string(d_model) + " and " +
                                std::to_string(n_classes));
  if (!(dropout >= 0.0 && dropout < 1.0))
    throw std::invalid_argument("classification head: dropout must be in [0, 1), got " +
                                std::to_string(dropout));
  out_ = register_module("out", torch::nn::Linear(d_model, n_classes));
  at::Generator gen = make_generator(seed);
  at::NoGradGuard no_grad;
  out_->weight.normal_(0.0, 0.02, gen);
  out_->bias.zero_();
}

at::Tensor ClassificationHeadImpl::forward(const at::Tensor& h) {
  return out_->forward(kernels::dropout(h, dropout_, is_training()));
}

}  // namespace xmoe
