// Framework-free launchers of the GPTQ CUDA kernels (raw pointers, sizes and a cudaStream_t; no torch), so that
// `make cuda-check` compiles them with plain nvcc on machines whose torch has no CUDA.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/cuda_dtype.h"

#include "gptq_layout.h"

namespace slimformer {
namespace gptq {

using ::slimformer::CudaDType;

// Rows up to which the fused kernel runs; larger M dequantizes and calls cuBLAS through the torch glue.
constexpr int64_t kCudaFusedMaxRows = 32;

// y32 [M, N] fp32 must be zeroed by the caller: K-slices of the weight accumulate into it atomically.
// x [M, K] (kernel row order, contiguous) in dtype `xdt`.
cudaError_t launch_small_m_gemm(const void* x, CudaDType xdt, const TiledWeight& w, int64_t M, float* y32,
                                cudaStream_t stream);

// y [M, N] (dtype ydt) = y32 + bias (bias may be null; dtype bdt).
cudaError_t launch_finalize(const float* y32, const void* bias, CudaDType bdt, void* y, CudaDType ydt, int64_t M,
                            int64_t N, cudaStream_t stream);

// out [K, N] (dtype odt) = the dequantized weight in kernel row order.
cudaError_t launch_dequantize(const TiledWeight& w, void* out, CudaDType odt, cudaStream_t stream);

}  // namespace gptq
}  // namespace slimformer
