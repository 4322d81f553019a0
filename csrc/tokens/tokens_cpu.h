// Token-pruned attention on the CPU: the argument block and the per-ISA kernel table (framework-free).
//
// For one sequence b and head h: the tokens taking part are keep[b, :] (or all N), their queries, keys and values
// read straight from q/k/v [B, N, H, D] through strides (the gather of the kept tokens is fused into the reads), a
// per-key additive bias key_bias[b, token] (-inf masks a pad key; ToMe adds log(size)). The kernel writes the
// attention output out[b, i, h, :] (unless only the statistics are wanted) and adds to two accumulators:
// importance[j] += the attention key j receives from the real queries (a query whose own bias is -inf is a pad and
// gives none), and, when asked, probs[i, j] += weight x P[i, j] (the head-averaged matrix Zero-TPrune's WPR needs,
// weight = 1 / H or a head filter's normalized weight). The N x N probabilities of a head live only in a row block
// of scratch: they are never written out.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace slimformer {
namespace tokens {

struct AttnArgs {
  int64_t N;   // tokens per sequence in q, k, v
  int64_t NK;  // tokens taking part: keep's row length, or N
  int64_t H, D;
  const float* q;
  const float* k;
  const float* v;
  int64_t qs[3], ks[3], vs[3];  // element strides of b, n, h (d is contiguous)
  const int64_t* keep;          // [B, NK] token indices, or null
  const float* key_bias;        // [B, N], or null
  float scale;
  float* out;  // [B, NK, H, D] contiguous

  // the token that takes part as sequence b's i-th
  int64_t token(int64_t b, int64_t i) const { return keep != nullptr ? keep[b * NK + i] : i; }
  // that token's key bias (0 without one)
  float bias(int64_t b, int64_t i) const { return key_bias != nullptr ? key_bias[b * N + token(b, i)] : 0.f; }
};

// A key bias of -inf masks its token: a pad, neither attended to nor counted as a query.
inline bool masks_token(float bias) { return std::isinf(bias) && bias < 0; }

// Rows of the padded accumulators: NK rounded up to kPad (every ISA's vector length divides it).
constexpr int64_t kPad = 16;
inline int64_t padded(int64_t n) { return (n + kPad - 1) / kPad * kPad; }

// Query rows a kernel block computes at once.
constexpr int kRowBlock = 4;

// Scratch floats one call of attention_head needs: Kt [D, nkp], Vp [NK, dp], bias / mask / -inf rows [nkp] each,
// the block's scores [kRowBlock, nkp] and output rows [kRowBlock, dp].
inline size_t scratch_floats(const AttnArgs& a) {
  const int64_t nkp = padded(a.NK), dp = padded(a.D);
  return static_cast<size_t>(a.D * nkp + a.NK * dp + 3 * nkp + kRowBlock * nkp + kRowBlock * dp);
}

// Heads the head-filtered attention (weighted_head_sum) takes at most.
constexpr int64_t kMaxFilterHeads = 64;

struct CpuKernels {
  // importance: [padded(NK)] (+=), probs: [NK, padded(NK)] (+= weight x P, or = P with store_probs) or null; out
  // written if need_out.
  void (*attention_head)(const AttnArgs& a, int64_t b, int64_t h, float* importance, float* probs, float weight,
                         bool store_probs, bool need_out, float* scratch);
  // WPR: `iterations` times s <- attn^T s for one sequence's attn [N, N] (row stride ld), s [N] in place, t [N]
  // scratch.
  void (*wpr_sequence)(const float* attn, int64_t N, int64_t ld, float* s, float* t, int64_t iterations);
  // out [NK, NK] = sum_h w[h] x (head h's probabilities [NK, ld] at slabs + h * slab_stride); H <= kMaxFilterHeads.
  void (*weighted_head_sum)(const float* slabs, int64_t H, int64_t slab_stride, const float* w, int64_t NK, int64_t ld,
                            float* out);
};

const CpuKernels& cpu_kernels_scalar();
const CpuKernels& cpu_kernels_avx2();
const CpuKernels& cpu_kernels_avx512();

}  // namespace tokens
}  // namespace slimformer
