// Validation of the tiled GPTQ weight shared by the CPU and CUDA op implementations.
#pragma once
#include <ATen/ATen.h>

#include <vector>

#include "common/checks.h"
#include "gptq/gptq_cpu.h"
#include "gptq/gptq_decode.h"

namespace slimformer {
namespace gptq {

// Validates bits/group_size/shape arguments and the kernel-layout tensors; returns the raw view.
inline TiledWeight check_tiled_weight(const at::Tensor& qtiles, const at::Tensor& scale_zero, int64_t bits,
                                      int64_t group_size, int64_t in_features, int64_t out_features) {
  TORCH_CHECK(gptq_bits_supported(bits), "bits must be one of ", kGptqBitsText, ", got ", bits);
  TORCH_CHECK(in_features > 0 && out_features > 0, "in_features and out_features must be positive, got ",
              in_features, " and ", out_features);
  const int64_t uv = unit_values(static_cast<int>(bits));
  TORCH_CHECK(in_features % uv == 0, bits, "-bit GPTQ packs ", uv, " rows per unit, so in_features must be a ",
              "multiple of ", uv, ", got ", in_features);
  TORCH_CHECK(group_size > 0, "group_size must be positive (resolve -1 to in_features), got ", group_size);
  TORCH_CHECK(group_size >= in_features || group_size % uv == 0, bits, "-bit kernels need group_size to be a ",
              "multiple of ", uv, " (or per-channel), got ", group_size);
  TiledWeight w{nullptr, nullptr, in_features, out_features, bits, std::min(group_size, in_features)};
  check_tensor(qtiles, "qtiles", at::kInt, {w.n_tiles(), w.k_words(), kTileCols}, qtiles.device());
  check_tensor(scale_zero, "scale_zero", at::kHalf, {w.n_tiles(), w.groups(), 2, kTileCols}, qtiles.device());
  w.qtiles = qtiles.data_ptr<int32_t>();
  w.scale_zero = reinterpret_cast<const uint16_t*>(scale_zero.data_ptr<at::Half>());
  return w;
}

// x as a contiguous tensor whose rows are the kernel-order activation rows: x itself when it is contiguous and
// needs no act-order permutation (no copy and no view), else a permuted [M, K] copy. Checks x and bias against
// the weight. The row count is numel / in_features.
inline at::Tensor prepare_activations(const at::Tensor& x, const c10::optional<at::Tensor>& perm,
                                      const c10::optional<at::Tensor>& bias, int64_t in_features,
                                      int64_t out_features, const at::Device& device) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == in_features, "x must have shape [..., ", in_features, "], got ",
              shape_str(x.sizes()));
  TORCH_CHECK(x.device() == device, "x must be on ", device.str(), " like the weights, got ", x.device().str());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_features, "bias must have shape [", out_features,
                "], got ", shape_str(bias->sizes()));
    TORCH_CHECK(bias->device() == device, "bias must be on ", device.str(), ", got ", bias->device().str());
  }
  if (perm.has_value() && perm->defined()) {
    check_tensor(*perm, "perm", at::kLong, {in_features}, device);
    if (perm->device().is_cpu()) {  // a permutation of [0, K): O(K), small beside the GEMM (no device sync on CPU)
      const int64_t* p = perm->data_ptr<int64_t>();
      std::vector<bool> seen(static_cast<size_t>(in_features), false);
      for (int64_t k = 0; k < in_features; ++k) {
        TORCH_CHECK(p[k] >= 0 && p[k] < in_features, "perm must be a permutation of [0, ", in_features,
                    "): perm[", k, "] = ", p[k], " is out of range");
        TORCH_CHECK(!seen[p[k]], "perm must be a permutation of [0, ", in_features, "): ", p[k],
                    " appears twice");
        seen[p[k]] = true;
      }
    }
    return x.reshape({-1, in_features}).index_select(1, *perm);
  }
  return x.contiguous();
}

inline std::vector<int64_t> output_shape(const at::Tensor& x, int64_t out_features) {
  std::vector<int64_t> s(x.sizes().begin(), x.sizes().end());
  s.back() = out_features;
  return s;
}

}  // namespace gptq
}  // namespace slimformer
