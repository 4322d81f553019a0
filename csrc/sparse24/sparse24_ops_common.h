// Argument checks shared by the CPU and CUDA glue of slimformer::sparse24_gemm and sparse24_int4_gemm.
#pragma once
#include <ATen/ATen.h>

#include <vector>

#include "sparse24/sparse24_cpu.h"

namespace slimformer {
namespace sparse24 {

// x, the bitmask and bias of a weight with N rows; K checked
inline void check_common(const at::Tensor& x, const at::Tensor& bitmask, const c10::optional<at::Tensor>& bias,
                         int64_t K, int64_t N) {
  TORCH_CHECK(bitmask.scalar_type() == at::kByte, "bitmask must be uint8, got ", c10::toString(bitmask.scalar_type()));
  TORCH_CHECK(bitmask.dim() == 2 && bitmask.size(0) == N && bitmask.size(1) == (K + 7) / 8,
              "bitmask must be [out_features, ceil(in_features / 8)] = [", N, ", ", (K + 7) / 8, "], got ",
              bitmask.sizes());
  TORCH_CHECK(bitmask.device() == x.device(), "the bitmask must be on x's device (", x.device(), "), got ",
              bitmask.device());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->device() == x.device(), "bias must be on x's device (", x.device(), "), got ", bias->device());
    TORCH_CHECK(bias->is_floating_point() && bias->dim() == 1 && bias->size(0) == N,
                "bias must be a floating-point [out_features] = [", N, "] tensor, got ",
                c10::toString(bias->scalar_type()), " ", bias->sizes());
  }
}

// The shape of y: x's with the last dimension N.
inline std::vector<int64_t> output_shape(const at::Tensor& x, int64_t N) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  return shape;
}

inline void check_x(const at::Tensor& x, int64_t K) {
  TORCH_CHECK(K > 0 && K % 4 == 0, "2:4 sparsity groups 4 inputs: in_features must be a positive multiple of 4, got ",
              K);
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == K, "x must end in in_features=", K, ", got shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
              "x must be float32, bfloat16 or float16, got ", c10::toString(x.scalar_type()));
}

// half_values: the device's kernels also read fp16 values (CUDA); the CPU kernels read fp32 and bf16
inline void check_inputs(const at::Tensor& x, const at::Tensor& values, const at::Tensor& bitmask,
                         const c10::optional<at::Tensor>& bias, int64_t K, bool half_values = false) {
  check_x(x, K);
  TORCH_CHECK(values.scalar_type() == at::kFloat || values.scalar_type() == at::kBFloat16 ||
                  (half_values && values.scalar_type() == at::kHalf),
              "values must be float32 or bfloat16", half_values ? " or float16" : "", " (the kernels' layouts), got ",
              c10::toString(values.scalar_type()));
  TORCH_CHECK(values.dim() == 2 && values.size(1) == K / 2, "values must be [out_features, in_features / 2] = [N, ",
              K / 2, "], got ", values.sizes());
  TORCH_CHECK(values.device() == x.device(), "values must be on x's device (", x.device(), "), got ", values.device());
  check_common(x, bitmask, bias, K, values.size(0));
}

// 2:4 + int4 in the kernel layout (sparse24_cpu.h: tiles); returns the group size in input columns (-1 -> K)
inline int64_t check_int4_inputs(const at::Tensor& x, const at::Tensor& tiles, const at::Tensor& scales,
                                 const at::Tensor& zeros, const c10::optional<at::Tensor>& bias, int64_t K,
                                 int64_t group_size) {
  check_x(x, K);
  const int64_t gs = group_size == -1 ? K : group_size;
  TORCH_CHECK(gs > 0 && gs % 4 == 0, "2:4 + int4 groups must be a positive multiple of 4 input columns (or -1), got ",
              group_size);
  TORCH_CHECK(scales.scalar_type() == at::kFloat || scales.scalar_type() == at::kBFloat16 ||
                  scales.scalar_type() == at::kHalf,
              "scales must be float32, bfloat16 or float16, got ", c10::toString(scales.scalar_type()));
  const int64_t G = (K + gs - 1) / gs;
  TORCH_CHECK(scales.dim() == 2 && scales.size(0) > 0 && scales.size(1) == G,
              "scales must be [out_features, groups] with groups = ", G, " (group_size ", gs, "), got ",
              scales.sizes());
  const int64_t N = scales.size(0);
  TORCH_CHECK(tiles.scalar_type() == at::kByte && tiles.dim() == 2 && tiles.size(0) == (N + kTileRows - 1) / kTileRows &&
                  tiles.size(1) == tile_bytes(K),
              "tiles must be uint8 [ceil(out_features / 4), ceil(in_features / 128) * 192] = [",
              (N + kTileRows - 1) / kTileRows, ", ", tile_bytes(K), "], got ", c10::toString(tiles.scalar_type()), " ",
              tiles.sizes());
  TORCH_CHECK(zeros.scalar_type() == at::kByte && zeros.dim() == 2 && zeros.size(0) == N && zeros.size(1) == G,
              "zeros must be uint8 [out_features, groups] = [", N, ", ", G, "], got ", c10::toString(zeros.scalar_type()),
              " ", zeros.sizes());
  for (const at::Tensor* t : {&tiles, &scales, &zeros})
    TORCH_CHECK(t->device() == x.device(), "sparse24_int4_gemm needs every tensor on x's device (", x.device(),
                "), got one on ", t->device());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->device() == x.device(), "bias must be on x's device (", x.device(), "), got ", bias->device());
    TORCH_CHECK(bias->is_floating_point() && bias->dim() == 1 && bias->size(0) == N,
                "bias must be a floating-point [out_features] = [", N, "] tensor, got ",
                c10::toString(bias->scalar_type()), " ", bias->sizes());
  }
  return gs;
}

}  // namespace sparse24
}  // namespace slimformer
