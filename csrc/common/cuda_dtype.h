// Element types of the CUDA kernels' activations, outputs and biases, and their device-side conversions, shared
// by every method's framework-free .cu (the enum is host-visible for the launchers' signatures).
#pragma once

namespace slimformer {

enum class CudaDType { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

}  // namespace slimformer

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace slimformer {

__device__ __forceinline__ float load_as_float(const void* p, int64_t i, CudaDType dt) {
  switch (dt) {
    case CudaDType::kFloat16: return __half2float(static_cast<const __half*>(p)[i]);
    case CudaDType::kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

__device__ __forceinline__ void store_from_float(void* p, int64_t i, float v, CudaDType dt) {
  switch (dt) {
    case CudaDType::kFloat16: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
    case CudaDType::kBFloat16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
    default: static_cast<float*>(p)[i] = v;
  }
}

}  // namespace slimformer
#endif
