// Argument checks shared by the CPU and CUDA glue of slimformer::sparse24_gemm.
#pragma once
#include <ATen/ATen.h>

namespace slimformer {
namespace sparse24 {

inline void check_inputs(const at::Tensor& x, const at::Tensor& values, const at::Tensor& bitmask,
                         const c10::optional<at::Tensor>& bias, int64_t K) {
  TORCH_CHECK(K > 0 && K % 4 == 0, "2:4 sparsity groups 4 inputs: in_features must be a positive multiple of 4, got ",
              K);
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == K, "x must end in in_features=", K, ", got shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
              "x must be float32, bfloat16 or float16, got ", c10::toString(x.scalar_type()));
  TORCH_CHECK(values.scalar_type() == at::kFloat || values.scalar_type() == at::kBFloat16,
              "values must be float32 or bfloat16 (the kernels' layouts), got ", c10::toString(values.scalar_type()));
  TORCH_CHECK(values.dim() == 2 && values.size(1) == K / 2, "values must be [out_features, in_features / 2] = [N, ",
              K / 2, "], got ", values.sizes());
  const int64_t N = values.size(0);
  TORCH_CHECK(bitmask.scalar_type() == at::kByte, "bitmask must be uint8, got ", c10::toString(bitmask.scalar_type()));
  TORCH_CHECK(bitmask.dim() == 2 && bitmask.size(0) == N && bitmask.size(1) == (K + 7) / 8,
              "bitmask must be [out_features, ceil(in_features / 8)] = [", N, ", ", (K + 7) / 8, "], got ",
              bitmask.sizes());
  for (const at::Tensor* t : {&values, &bitmask})
    TORCH_CHECK(t->device() == x.device(), "sparse24_gemm needs every tensor on x's device (", x.device(),
                "), got one on ", t->device());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->device() == x.device(), "bias must be on x's device (", x.device(), "), got ", bias->device());
    TORCH_CHECK(bias->is_floating_point() && bias->dim() == 1 && bias->size(0) == N,
                "bias must be a floating-point [out_features] = [", N, "] tensor, got ",
                c10::toString(bias->scalar_type()), " ", bias->sizes());
  }
}

}  // namespace sparse24
}  // namespace slimformer
