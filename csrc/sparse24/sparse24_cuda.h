// Framework-free launchers of the 2:4 sparse CUDA kernels (raw pointers, sizes and a cudaStream_t; no torch), so
// `make cuda-check` compiles them with plain nvcc on machines whose torch has no CUDA. Layout: csrc/sparse24/
// sparse24_cpu.h (values [N, K/2], bitmask uint8 [N, ceil(K/8)]).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/cuda_dtype.h"
#include "sparse24/sparse24_cpu.h"

namespace slimformer {
namespace sparse24 {

using ::slimformer::CudaDType;

// Rows up to which the sparse kernels run (the tensor-core one for bf16/fp16, else the warp-per-row one); larger M
// decompresses and calls cuBLAS through the torch glue. Not yet measured on a GPU.
constexpr int64_t kCudaSparseMaxRows = 32;

// y [M, N] (dtype ydt) = x [M, K] @ W^T + bias (bias may be null). A row of W whose mask has a group that is not
// 2:4 gets NaN outputs (no host synchronization per call; Sparse24Linear checks its masks when built or loaded).
cudaError_t launch_gemm(const void* x, CudaDType xdt, const void* values, CudaDType vdt, const uint8_t* bitmask,
                        const void* bias, CudaDType bdt, void* y, CudaDType ydt, int64_t M, int64_t K, int64_t N,
                        cudaStream_t stream);

// The same product on the sparse tensor cores (mma.sp, sm_80+): x and values both bf16 (bf16 = true) or both fp16,
// 4-byte aligned, K a multiple of 4; M up to 65535 x 32. Bad groups give NaN rows as above.
cudaError_t launch_mma_sp(const void* x, const void* values, bool bf16, const uint8_t* bitmask, const void* bias,
                          CudaDType bdt, void* y, CudaDType ydt, int64_t M, int64_t K, int64_t N,
                          cudaStream_t stream);

// dense [N, K] (dtype ddt) = W with its zeros (NaN rows for groups that are not 2:4, as above).
cudaError_t launch_decompress(const void* values, CudaDType vdt, const uint8_t* bitmask, void* dense, CudaDType ddt,
                              int64_t K, int64_t N, cudaStream_t stream);

// From a 2:4 + int4 weight in its kernel layout (sparse24_cpu.h: tiles), the kept values [N, K/2] (dtype odt,
// (code - zero) * scale in fp32) and the bitmask [N, ceil(K/8)] the kernels above read. scales [N, groups] in sdt,
// zeros uint8 [N, groups], a group being group_size input columns. A position nibble that is not a pair of distinct
// columns in order becomes a group keeping 4 (so the row comes out NaN, as for a bad bitmask).
cudaError_t launch_unpack_int4(const uint8_t* tiles, const void* scales, CudaDType sdt, const uint8_t* zeros,
                               void* values, CudaDType odt, uint8_t* bitmask, int64_t K, int64_t N, int64_t group_size,
                               int64_t groups, cudaStream_t stream);

}  // namespace sparse24
}  // namespace slimformer
