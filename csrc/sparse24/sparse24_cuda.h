// Framework-free launchers of the 2:4 sparse CUDA kernels (raw pointers, sizes and a cudaStream_t; no torch), so
// `make cuda-check` compiles them with plain nvcc on machines whose torch has no CUDA. Layout: csrc/sparse24/
// sparse24_cpu.h (values [N, K/2], bitmask uint8 [N, ceil(K/8)]).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/cuda_dtype.h"

namespace slimformer {
namespace sparse24 {

using ::slimformer::CudaDType;

// Rows up to which the sparse kernel runs; larger M decompresses and calls cuBLAS through the torch glue.
constexpr int64_t kCudaSparseMaxRows = 32;

// y [M, N] (dtype ydt) = x [M, K] @ W^T + bias (bias may be null). A row of W whose mask has a group that is not
// 2:4 gets NaN outputs (no host synchronization per call; Sparse24Linear checks its masks when built or loaded).
cudaError_t launch_gemm(const void* x, CudaDType xdt, const void* values, CudaDType vdt, const uint8_t* bitmask,
                        const void* bias, CudaDType bdt, void* y, CudaDType ydt, int64_t M, int64_t K, int64_t N,
                        cudaStream_t stream);

// dense [N, K] (dtype ddt) = W with its zeros (NaN rows for groups that are not 2:4, as above).
cudaError_t launch_decompress(const void* values, CudaDType vdt, const uint8_t* bitmask, void* dense, CudaDType ddt,
                              int64_t K, int64_t N, cudaStream_t stream);

// values [N, K/2] (dtype odt) = the dequantized kept values of a 2:4 + int4 weight (sparse24_cpu.h, Int4Args):
// (code - zero) * scale in fp32, then stored in odt. scales [N, groups] in sdt, zeros uint8 [N, groups], a group
// being group_size input columns.
cudaError_t launch_dequant_int4(const uint8_t* qvalues, const void* scales, CudaDType sdt, const uint8_t* zeros,
                                void* values, CudaDType odt, int64_t K, int64_t N, int64_t group_size, int64_t groups,
                                cudaStream_t stream);

}  // namespace sparse24
}  // namespace slimformer
