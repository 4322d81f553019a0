// GPTQ dequant-GEMM CUDA kernels (framework-free).
//
// Design, deliberately plain until a GPU can verify and time a tensor-core pipeline (see benchmarks/README.md):
// * Weights are the tiled32 layout of gptq_layout.h, shared with the CPU: tile t = 32 output columns, so lane c of
//   a warp owns column 32t + c and the 32 lanes read one 128-byte row of packed words: every weight load is fully
//   coalesced and each word is read exactly once per pass.
// * Small M (decode, M <= kCudaFusedMaxRows): block = one tile x WARPS warps; the groups of K are dealt out
//   round-robin over the warps of all K-split blocks, so even one tile keeps many warps busy. For each packing unit
//   a lane decodes its values with the CPU-tested unpack_value of gptq_decode.h and accumulates x * q and x per
//   activation row (ROWS rows per pass, in registers); once per group it folds in scale and scale * zero exactly
//   like the CPU kernel. Warps reduce through shared memory; K-split blocks atomically add into an fp32 buffer,
//   and a finalize kernel adds the bias and converts to the activation dtype.
// * Large M: a dequantize kernel writes W [K, N] in the activation dtype and the caller uses cuBLAS.
// The Marlin-class pipeline (cp.async multi-stage copies, LOP3 dequant, mma.sync) is the next step once a GPU can
// check it against this kernel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "gptq_cuda.h"
#include "gptq_decode.h"

namespace slimformer {
namespace gptq {
namespace {

constexpr int kWarps = 4;
constexpr int kRows = 8;  // activation rows accumulated per pass

template <int BITS>
__global__ void small_m_gemm_kernel(const void* __restrict__ x, CudaDType xdt, TiledWeight w, int64_t M,
                                    float* __restrict__ y32) {
  constexpr int UV = unit_values(BITS);
  constexpr int UW = unit_words(BITS);
  __shared__ float partial[kWarps][kRows][kTileCols];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t t = blockIdx.x;
  const int64_t col = t * kTileCols + lane;
  const int64_t K = w.K, G = w.groups(), gs = w.group_size;
  const uint32_t* qt = reinterpret_cast<const uint32_t*>(w.qtiles) + t * w.k_words() * kTileCols + lane;
  const uint16_t* sz = w.scale_zero + t * G * 2 * kTileCols + lane;
  const int64_t worker = static_cast<int64_t>(blockIdx.y) * kWarps + warp;
  const int64_t workers = static_cast<int64_t>(gridDim.y) * kWarps;

  for (int64_t m0 = 0; m0 < M; m0 += kRows) {
    const int rows = M - m0 < kRows ? static_cast<int>(M - m0) : kRows;
    float out[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) out[r] = 0.f;
    for (int64_t g = worker; g < G; g += workers) {
      float acc[kRows], xsum[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) acc[r] = xsum[r] = 0.f;
      const int64_t k1 = (g + 1) * gs < K ? (g + 1) * gs : K;
      for (int64_t k0 = g * gs; k0 < k1; k0 += UV) {
        const uint32_t* unit = qt + (k0 / UV) * UW * kTileCols;
#pragma unroll 4
        for (int v = 0; v < UV; ++v) {
          const float q = static_cast<float>(unpack_value(unit, kTileCols, BITS, v));
#pragma unroll
          for (int r = 0; r < kRows; ++r) {
            if (r < rows) {
              const float xv = load_as_float(x, (m0 + r) * K + k0 + v, xdt);
              acc[r] = fmaf(xv, q, acc[r]);
              xsum[r] += xv;
            }
          }
        }
      }
      const float s = half_to_float(sz[g * 2 * kTileCols]);
      const float szv = s * half_to_float(sz[g * 2 * kTileCols + kTileCols]);  // scale * zero, exact in fp32
#pragma unroll
      for (int r = 0; r < kRows; ++r) out[r] += s * acc[r] - szv * xsum[r];
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) partial[warp][r][lane] = out[r];
    __syncthreads();
    if (warp == 0) {
      for (int r = 0; r < rows; ++r) {
        float sum = 0.f;
#pragma unroll
        for (int i = 0; i < kWarps; ++i) sum += partial[i][r][lane];
        if (col < w.N) atomicAdd(y32 + (m0 + r) * w.N + col, sum);
      }
    }
    __syncthreads();
  }
}

__global__ void finalize_kernel(const float* __restrict__ y32, const void* __restrict__ bias, CudaDType bdt,
                                void* __restrict__ y, CudaDType ydt, int64_t M, int64_t N) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= M * N) return;
  float v = y32[i];
  if (bias != nullptr) v += load_as_float(bias, i % N, bdt);
  store_from_float(y, i, v, ydt);
}

template <int BITS>
__global__ void dequantize_kernel(TiledWeight w, void* __restrict__ out, CudaDType odt) {
  constexpr int UV = unit_values(BITS);
  constexpr int UW = unit_words(BITS);
  const int64_t units = w.K / UV;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // (unit, column) pair
  if (i >= units * w.N) return;
  const int64_t u = i / w.N, n = i % w.N;
  const int64_t t = n / kTileCols, c = n % kTileCols;
  const uint32_t* unit = reinterpret_cast<const uint32_t*>(w.qtiles) + (t * w.k_words() + u * UW) * kTileCols + c;
  const int64_t G = w.groups();
  for (int v = 0; v < UV; ++v) {
    const int64_t k = u * UV + v;
    const uint16_t* szg = w.scale_zero + (t * G + k / w.group_size) * 2 * kTileCols + c;
    const float q = static_cast<float>(unpack_value(unit, kTileCols, BITS, v));
    const float s = half_to_float(szg[0]);
    store_from_float(out, k * w.N + n, q * s - s * half_to_float(szg[kTileCols]), odt);
  }
}

template <template <int> class Launch, class... Args>
cudaError_t dispatch_bits(int64_t bits, Args... args) {
  cudaError_t err = cudaErrorInvalidValue;
  with_gptq_bits(bits, [&](auto b) { err = Launch<decltype(b)::value>::run(args...); });
  return err;
}

template <int BITS>
struct SmallMLaunch {
  static cudaError_t run(const void* x, CudaDType xdt, TiledWeight w, int64_t M, float* y32, cudaStream_t s) {
    // Enough K-split blocks to fill the GPU (~4 blocks per SM on a 132-SM H100), never more than groups allow.
    const int64_t G = w.groups(), tiles = w.n_tiles();
    int64_t split = (528 + tiles - 1) / tiles;
    const int64_t max_split = (G + kWarps - 1) / kWarps;
    if (split > max_split) split = max_split;
    if (split < 1) split = 1;
    small_m_gemm_kernel<BITS><<<dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(split)), kWarps * 32, 0,
                                s>>>(x, xdt, w, M, y32);
    return cudaGetLastError();
  }
};

template <int BITS>
struct DequantLaunch {
  static cudaError_t run(TiledWeight w, void* out, CudaDType odt, cudaStream_t s) {
    const int64_t n = w.K / unit_values(BITS) * w.N;
    const int threads = 256;
    dequantize_kernel<BITS><<<static_cast<unsigned>((n + threads - 1) / threads), threads, 0, s>>>(w, out, odt);
    return cudaGetLastError();
  }
};

}  // namespace

cudaError_t launch_small_m_gemm(const void* x, CudaDType xdt, const TiledWeight& w, int64_t M, float* y32,
                                cudaStream_t stream) {
  if (M <= 0) return cudaSuccess;
  return dispatch_bits<SmallMLaunch>(w.bits, x, xdt, w, M, y32, stream);
}

cudaError_t launch_finalize(const float* y32, const void* bias, CudaDType bdt, void* y, CudaDType ydt, int64_t M,
                            int64_t N, cudaStream_t stream) {
  const int64_t n = M * N;
  if (n == 0) return cudaSuccess;
  const int threads = 256;
  finalize_kernel<<<static_cast<unsigned>((n + threads - 1) / threads), threads, 0, stream>>>(y32, bias, bdt, y, ydt,
                                                                                             M, N);
  return cudaGetLastError();
}

cudaError_t launch_dequantize(const TiledWeight& w, void* out, CudaDType odt, cudaStream_t stream) {
  return dispatch_bits<DequantLaunch>(w.bits, w, out, odt, stream);
}

}  // namespace gptq
}  // namespace slimformer
