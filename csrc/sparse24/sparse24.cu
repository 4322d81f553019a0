// 2:4 sparse GEMM CUDA kernels (framework-free). No GPU has run them yet: they are built to be right by construction,
// share the metadata decode (sparse24_layout.h) with the CPU-tested kernels, and the tensor-core kernel gathers its
// registers with the functions the CPU build tests through an emulation of the instruction (sparse24_mma_layout.h).
// * Tensor cores (bf16/fp16 activations and values of the same dtype, small M): mma.sp.m16n8k32 with W as the
//   sparse operand. A warp owns 16 weight rows and up to kMmaTokenTiles x 8 tokens; per 32 inputs each lane loads
//   its compressed values (4 x 32 bits), converts the rows' bitmask nibbles into the instruction's metadata, loads
//   its activations (4 x 32 bits per 8 tokens) and issues one mma.sp per 8 tokens, accumulating in fp32. Groups
//   whose mask is not 2:4 reach the instruction as padding and their rows come out NaN. Plain global loads, no
//   shared-memory staging or pipelining yet: the first goal is a kernel that is right, the next its speed.
// * Other small-M cases (fp32 activations, mixed dtypes): one warp per output row n; lane l takes the groups l,
//   l + 32, ...: it decodes the group's nibble into its two kept columns and multiplies the two kept values with
//   those activations, for up to kRows activation rows per pass in registers; the warp sums with shuffles and lane 0
//   adds the bias and stores in the output dtype.
// * Large M: a decompress kernel writes the dense W [N, K] and the caller uses cuBLAS.
// * 2:4 + int4: an unpack kernel turns the tiles into kept values [N, K/2] and a bitmask, then the above.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "sparse24_cuda.h"
#include "sparse24_layout.h"
#include "sparse24_mma_layout.h"

namespace slimformer {
namespace sparse24 {
namespace {

constexpr int kWarps = 4;
constexpr int kRows = 8;

__device__ __forceinline__ uint8_t group_pair(const uint8_t* mask_row, int64_t g) {
  return pair_of_nibble(mask_row[g / 2] >> (4 * (g % 2)) & 15);
}

__global__ void gemm_kernel(const void* __restrict__ x, CudaDType xdt, const void* __restrict__ values,
                            CudaDType vdt, const uint8_t* __restrict__ bitmask, const void* __restrict__ bias,
                            CudaDType bdt, void* __restrict__ y, CudaDType ydt, int64_t M, int64_t K, int64_t N) {
  const int lane = threadIdx.x % 32;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (n >= N) return;
  const int64_t G = K / 4, KB = (K + 7) / 8;
  const uint8_t* mask_row = bitmask + n * KB;
  for (int64_t m0 = 0; m0 < M; m0 += kRows) {
    float acc[kRows];
    for (int r = 0; r < kRows; ++r) acc[r] = 0.f;
    bool bad = false;
    for (int64_t g = lane; g < G; g += 32) {
      const uint8_t pair = group_pair(mask_row, g);
      if (pair == kBadNibble) {
        bad = true;
        continue;
      }
      const float v0 = load_as_float(values, n * (K / 2) + 2 * g, vdt);
      const float v1 = load_as_float(values, n * (K / 2) + 2 * g + 1, vdt);
      const int64_t c0 = 4 * g + (pair & 3), c1 = 4 * g + (pair >> 2 & 3);
      for (int r = 0; r < kRows; ++r)
        if (m0 + r < M)
          acc[r] += v0 * load_as_float(x, (m0 + r) * K + c0, xdt) + v1 * load_as_float(x, (m0 + r) * K + c1, xdt);
    }
    const bool any_bad = __any_sync(0xffffffffu, bad);
    for (int r = 0; r < kRows; ++r)
      for (int off = 16; off > 0; off /= 2) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], off);
    if (lane == 0)
      for (int r = 0; r < kRows && m0 + r < M; ++r) {
        float v = any_bad ? __int_as_float(0x7fc00000) : acc[r];
        if (bias != nullptr) v += load_as_float(bias, n, bdt);
        store_from_float(y, (m0 + r) * N + n, v, ydt);
      }
  }
}

constexpr int kMmaWarps = 4;        // warps per block, each with its own 16 weight rows
constexpr int kMmaTokenTiles = 4;   // 8-token tiles per warp: 32 tokens, one grid row

// d += a (16 x 32, 2:4, metadata e, sparsity selector 0) x b (32 x 8), fp32 accumulators. The ordered-metadata form
// (PTX 8.5+) where the toolkit has it: its first position must be below its second, which pair_of_nibble and
// kPadPair always give.
template <bool kBf16>
__device__ __forceinline__ void mma_sp_16832(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4],
                                             uint32_t e) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // sparse tensor cores start at sm_80; the launcher's caller checks the device first
#else
#if (__CUDACC_VER_MAJOR__ > 12) || (__CUDACC_VER_MAJOR__ == 12 && __CUDACC_VER_MINOR__ >= 5)
#define SF_MMA_SP "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32."
#else
#define SF_MMA_SP "mma.sp.sync.aligned.m16n8k32.row.col.f32."
#endif
  if constexpr (kBf16) {
    asm volatile(SF_MMA_SP "bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e));
  } else {
    asm volatile(SF_MMA_SP "f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e));
  }
#undef SF_MMA_SP
#endif
}

template <bool kBf16>
__global__ void mma_sp_kernel(const uint16_t* __restrict__ x, const uint16_t* __restrict__ values,
                              const uint8_t* __restrict__ bitmask, const void* __restrict__ bias, CudaDType bdt,
                              void* __restrict__ y, CudaDType ydt, int64_t M, int64_t K, int64_t N) {
  const int lane = threadIdx.x % 32;
  const int64_t n0 = (static_cast<int64_t>(blockIdx.x) * kMmaWarps + threadIdx.x / 32) * mma::kTileRows;
  if (n0 >= N) return;  // the whole warp: n0 is the same for its 32 lanes
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kMmaTokenTiles * mma::kTileCols;
  float c[kMmaTokenTiles][4] = {};
  bool bad_lo = false, bad_hi = false;
  for (int64_t k0 = 0; k0 < K; k0 += mma::kTileK) {
    const mma::FragA f = mma::gather_a(values, bitmask, N, K, n0, k0, lane);
    bad_lo |= f.bad_lo;
    bad_hi |= f.bad_hi;
#pragma unroll
    for (int tt = 0; tt < kMmaTokenTiles; ++tt)
      if (m0 + tt * mma::kTileCols < M) {  // warp-uniform
        uint32_t b[4];
        mma::gather_b(x, M, K, m0 + tt * mma::kTileCols, k0, lane, b);
        mma_sp_16832<kBf16>(c[tt], f.a, b, f.e);
      }
  }
  // a row is corrupt if any lane of its quad (the lanes holding its metadata) saw a bad group
  int bad = (bad_lo ? 1 : 0) | (bad_hi ? 2 : 0);
  bad |= __shfl_xor_sync(0xffffffffu, bad, 1);
  bad |= __shfl_xor_sync(0xffffffffu, bad, 2);
#pragma unroll
  for (int tt = 0; tt < kMmaTokenTiles; ++tt)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      int row, token;
      mma::c_position(lane, i, row, token);
      const int64_t n = n0 + row, m = m0 + tt * mma::kTileCols + token;
      if (n >= N || m >= M) continue;
      float v = bad >> (row / 8) & 1 ? __int_as_float(0x7fc00000) : c[tt][i];
      if (bias != nullptr) v += load_as_float(bias, n, bdt);
      store_from_float(y, m * N + n, v, ydt);
    }
}

__global__ void decompress_kernel(const void* __restrict__ values, CudaDType vdt, const uint8_t* __restrict__ bitmask,
                                  void* __restrict__ dense, CudaDType ddt, int64_t K, int64_t N) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // (row, group)
  const int64_t G = K / 4;
  if (i >= N * G) return;
  const int64_t n = i / G, g = i % G;
  const uint8_t pair = group_pair(bitmask + n * ((K + 7) / 8), g);
  float out[4] = {0.f, 0.f, 0.f, 0.f};
  if (pair == kBadNibble) {
    for (int c = 0; c < 4; ++c) out[c] = __int_as_float(0x7fc00000);
  } else {
    out[pair & 3] = load_as_float(values, n * (K / 2) + 2 * g, vdt);
    out[pair >> 2 & 3] = load_as_float(values, n * (K / 2) + 2 * g + 1, vdt);
  }
  for (int c = 0; c < 4; ++c) store_from_float(dense, n * K + 4 * g + c, out[c], ddt);
}

// one thread per (row, bitmask byte): the two groups of 4 inputs of that byte, their 4 kept values
__global__ void unpack_int4_kernel(const uint8_t* __restrict__ tiles, const void* __restrict__ scales, CudaDType sdt,
                                   const uint8_t* __restrict__ zeros, void* __restrict__ values, CudaDType odt,
                                   uint8_t* __restrict__ bitmask, int64_t K, int64_t N, int64_t group_size,
                                   int64_t groups) {
  const int64_t KB = (K + 7) / 8, i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * KB) return;
  const int64_t n = i / KB, k = i % KB;
  const uint8_t* tile = tiles + (n / kTileRows) * tile_bytes(K);
  const int64_t r = n % kTileRows;
  uint8_t byte = 0;
  for (int64_t g = 2 * k; g < 2 * k + 2 && g < K / 4; ++g) {
    const uint8_t* blk = tile + (g / 32) * kTileBlockBytes;
    const int nib = blk[128 + r * 16 + (g % 32) / 2] >> (4 * (g % 2)) & 15, first = nib & 3, second = nib >> 2;
    byte |= static_cast<uint8_t>((first < second ? (1 << first) | (1 << second) : 0xF) << (4 * (g % 2)));
    const int64_t q = (4 * g) / group_size;
    const float z = static_cast<float>(zeros[n * groups + q]), s = load_as_float(scales, n * groups + q, sdt);
    for (int e = 0; e < 2; ++e) {
      const int64_t bi = (2 * g + e) % 64;  // kept value inside the block
      const int code = blk[r * 32 + bi % 32] >> (bi >= 32 ? 4 : 0) & 15;
      store_from_float(values, n * (K / 2) + 2 * g + e, (static_cast<float>(code) - z) * s, odt);
    }
  }
  bitmask[i] = byte;
}

}  // namespace

cudaError_t launch_unpack_int4(const uint8_t* tiles, const void* scales, CudaDType sdt, const uint8_t* zeros,
                               void* values, CudaDType odt, uint8_t* bitmask, int64_t K, int64_t N, int64_t group_size,
                               int64_t groups, cudaStream_t stream) {
  const int64_t n = N * ((K + 7) / 8);
  if (n == 0) return cudaSuccess;
  const int threads = 256;
  unpack_int4_kernel<<<static_cast<unsigned>((n + threads - 1) / threads), threads, 0, stream>>>(
      tiles, scales, sdt, zeros, values, odt, bitmask, K, N, group_size, groups);
  return cudaGetLastError();
}

cudaError_t launch_gemm(const void* x, CudaDType xdt, const void* values, CudaDType vdt, const uint8_t* bitmask,
                        const void* bias, CudaDType bdt, void* y, CudaDType ydt, int64_t M, int64_t K, int64_t N,
                        cudaStream_t stream) {
  if (M <= 0 || N <= 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>((N + kWarps - 1) / kWarps);
  gemm_kernel<<<blocks, kWarps * 32, 0, stream>>>(x, xdt, values, vdt, bitmask, bias, bdt, y, ydt, M, K, N);
  return cudaGetLastError();
}

cudaError_t launch_mma_sp(const void* x, const void* values, bool bf16, const uint8_t* bitmask, const void* bias,
                          CudaDType bdt, void* y, CudaDType ydt, int64_t M, int64_t K, int64_t N,
                          cudaStream_t stream) {
  if (M <= 0 || N <= 0) return cudaSuccess;
  const int64_t rows_per_block = kMmaWarps * mma::kTileRows, tokens_per_block = kMmaTokenTiles * mma::kTileCols;
  const dim3 grid(static_cast<unsigned>((N + rows_per_block - 1) / rows_per_block),
                  static_cast<unsigned>((M + tokens_per_block - 1) / tokens_per_block));
  if (grid.y > 65535u) return cudaErrorInvalidConfiguration;
  const auto* xs = static_cast<const uint16_t*>(x);
  const auto* vs = static_cast<const uint16_t*>(values);
  if (bf16)
    mma_sp_kernel<true><<<grid, kMmaWarps * 32, 0, stream>>>(xs, vs, bitmask, bias, bdt, y, ydt, M, K, N);
  else
    mma_sp_kernel<false><<<grid, kMmaWarps * 32, 0, stream>>>(xs, vs, bitmask, bias, bdt, y, ydt, M, K, N);
  return cudaGetLastError();
}

cudaError_t launch_decompress(const void* values, CudaDType vdt, const uint8_t* bitmask, void* dense, CudaDType ddt,
                              int64_t K, int64_t N, cudaStream_t stream) {
  const int64_t n = N * (K / 4);
  if (n == 0) return cudaSuccess;
  const int threads = 256;
  decompress_kernel<<<static_cast<unsigned>((n + threads - 1) / threads), threads, 0, stream>>>(values, vdt, bitmask,
                                                                                               dense, ddt, K, N);
  return cudaGetLastError();
}

}  // namespace sparse24
}  // namespace slimformer
