// Framework-free launcher of the CUDA token-pruned attention kernel (raw pointers, sizes, a cudaStream_t; no torch),
// so `make cuda-check` compiles it with plain nvcc. Same arguments and results as the CPU kernel (tokens_cpu.h).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "tokens/tokens_cpu.h"

namespace slimformer {
namespace tokens {

// Most tokens one call takes: a block keeps a query's scores over the kept tokens in shared memory.
constexpr int64_t kCudaMaxTokens = 8192;

// a.out may be null (no output wanted); importance [B, H, NK] and probs [B, NK, NK] (or null) must be zeroed by the
// caller; head_weights [B, H] normalized per sequence (or null: 1 / H each). Without an output, heads of weight 0
// are skipped.
cudaError_t launch_token_attention(const AttnArgs& a, int64_t B, const float* head_weights, float* importance,
                                   float* probs, cudaStream_t stream);

}  // namespace tokens
}  // namespace slimformer
