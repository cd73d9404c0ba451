// Precompiled header for every xmoe target: the LibTorch headers the library uses.
// (Including <torch/torch.h> costs ~7 s and ~1 GB per translation unit.)
#pragma once
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
