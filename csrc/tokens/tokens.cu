// Token-pruned attention on CUDA (framework-free), deliberately plain until a GPU can verify and time a tiled,
// tensor-core version (no GPU has been lent to this project yet): one block per (query, head, sequence). The block
// reads its query, scores every kept key into shared memory (lane-strided, the gather of kept tokens fused into the
// reads), reduces the maximum and the sum, adds each probability to the per-head importance (real queries only) and,
// when asked, weighted into the head-averaged matrix (atomics), then forms the output row. Semantics as the CPU
// kernel (tokens_cpu.h): a key whose bias is -inf is masked and, as a query, gives no importance.
#include <cuda_runtime.h>

#include <cfloat>

#include "tokens_cuda.h"

namespace slimformer {
namespace tokens {
namespace {

constexpr int kThreads = 128;

__device__ __forceinline__ float block_reduce(float v, bool is_max, float* red) {
  for (int off = 16; off > 0; off /= 2) {
    const float o = __shfl_xor_sync(0xffffffffu, v, off);
    v = is_max ? fmaxf(v, o) : v + o;
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float r = red[0];
  for (int w = 1; w < kThreads / 32; ++w) r = is_max ? fmaxf(r, red[w]) : r + red[w];
  return r;
}

__global__ void attention_kernel(AttnArgs a, const float* __restrict__ head_weights, float* __restrict__ importance,
                                 float* __restrict__ probs) {
  extern __shared__ float smem[];  // [NK] scores, then [kThreads / 32] reduction slots
  float* s = smem;
  float* red = smem + a.NK;
  const int64_t i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const float w = head_weights != nullptr ? head_weights[b * a.H + h] : 1.f / static_cast<float>(a.H);
  if (a.out == nullptr && w == 0.f) return;  // statistics only, and this head adds nothing
  const int64_t ti = a.keep != nullptr ? a.keep[b * a.NK + i] : i;
  const float* q = a.q + b * a.qs[0] + ti * a.qs[1] + h * a.qs[2];
  const float qbias = a.key_bias != nullptr ? a.key_bias[b * a.N + ti] : 0.f;
  const bool real_query = !(isinf(qbias) && qbias < 0);
  float mx = -FLT_MAX;
  for (int64_t j = threadIdx.x; j < a.NK; j += blockDim.x) {
    const int64_t tj = a.keep != nullptr ? a.keep[b * a.NK + j] : j;
    const float bias = a.key_bias != nullptr ? a.key_bias[b * a.N + tj] : 0.f;
    float v = -INFINITY;
    if (!(isinf(bias) && bias < 0)) {
      const float* k = a.k + b * a.ks[0] + tj * a.ks[1] + h * a.ks[2];
      float dot = 0.f;
      for (int64_t d = 0; d < a.D; ++d) dot = fmaf(q[d], k[d], dot);
      v = dot * a.scale + bias;
      mx = fmaxf(mx, v);
    }
    s[j] = v;
  }
  mx = block_reduce(mx, true, red);
  float sum = 0.f;
  for (int64_t j = threadIdx.x; j < a.NK; j += blockDim.x) {
    const float e = isinf(s[j]) ? 0.f : __expf(s[j] - mx);
    s[j] = e;
    sum += e;
  }
  sum = block_reduce(sum, false, red);
  const float inv = sum > 0.f ? 1.f / sum : 0.f;
  for (int64_t j = threadIdx.x; j < a.NK; j += blockDim.x) {
    const float p = s[j] * inv;
    s[j] = p;
    if (real_query) atomicAdd(importance + (b * a.H + h) * a.NK + j, p);
    if (probs != nullptr && w != 0.f) atomicAdd(probs + (b * a.NK + i) * a.NK + j, p * w);
  }
  __syncthreads();
  if (a.out == nullptr) return;
  for (int64_t d = threadIdx.x; d < a.D; d += blockDim.x) {
    float acc = 0.f;
    for (int64_t j = 0; j < a.NK; ++j) {
      const int64_t tj = a.keep != nullptr ? a.keep[b * a.NK + j] : j;
      acc = fmaf(s[j], a.v[b * a.vs[0] + tj * a.vs[1] + h * a.vs[2] + d], acc);
    }
    a.out[((b * a.NK + i) * a.H + h) * a.D + d] = acc;
  }
}

}  // namespace

cudaError_t launch_token_attention(const AttnArgs& a, int64_t B, const float* head_weights, float* importance,
                                   float* probs, cudaStream_t stream) {
  if (a.NK > kCudaMaxTokens || a.H > 65535 || B > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(a.NK), static_cast<unsigned>(a.H), static_cast<unsigned>(B));
  const size_t shared = (static_cast<size_t>(a.NK) + kThreads / 32) * sizeof(float);
  attention_kernel<<<grid, kThreads, shared, stream>>>(a, head_weights, importance, probs);
  return cudaGetLastError();
}

}  // namespace tokens
}  // namespace slimformer
