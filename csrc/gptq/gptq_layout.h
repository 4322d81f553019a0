// The GPTQ kernel weight layout shared by the CPU and CUDA kernels (framework-free, host+device safe).
//
// Kernel weight layout ("tiled32"):
//   qtiles      int32 [N_tiles, K_words, 32]   column tile t holds output columns 32t..32t+31; word w of a column
//                                              is word w of that column in the Hub qweight (rows packed along K
//                                              as one bit stream). N is padded to a multiple of 32 with zeros.
//   scale_zero  fp16  [N_tiles, G, 2, 32]      [t, g, 0, c] = scale, [t, g, 1, c] = zero (an integer, exact in
//                                              fp16). Kernels form scale * zero in fp32, where it is exact
//                                              (11-bit scale times a zero below 2^9). fp16 rather than an fp32
//                                              (scale, scale * zero) pair: at group 128 and int4 that is 6% of the
//                                              bytes a decode step streams instead of 12%.
// Rows are in kernel order: for act-order checkpoints the loader sorts rows by group, and the caller permutes the
// activations the same way, so group g is always rows [g*group_size, min(K, (g+1)*group_size)).
// W[k, n] = scale[g(k), n] * (q[k, n] - zero[g(k), n]);  y = x @ W
// The kernels compute per group acc = sum_k x[k] q[k, n] and fold the affine part in once per group:
//   y[n] += scale * acc - (scale * zero) * sum_k x[k].
#pragma once
#include <cstdint>
#include <type_traits>

#include "common/float_convert.h"

#if defined(__CUDACC__)
#define SF_LAYOUT_HD __host__ __device__
#else
#define SF_LAYOUT_HD
#endif

namespace slimformer {
namespace gptq {

constexpr int kTileCols = 32;

// The GPTQ bit widths: the one list the op checks, the CPU kernels and the CUDA kernels dispatch over (Python's
// weight-format registry, python/slimformer/formats.py, registers the same widths; tests/test_module.py checks the
// two agree). Adding a width is adding it here, plus its decode in gptq_decode.h.
constexpr int kGptqBits[] = {2, 3, 4, 8};
constexpr int kNumGptqBits = sizeof(kGptqBits) / sizeof(kGptqBits[0]);
SF_LAYOUT_HD constexpr bool gptq_bits_supported(int64_t bits) {
  for (int i = 0; i < kNumGptqBits; ++i)
    if (kGptqBits[i] == bits) return true;
  return false;
}
constexpr const char* kGptqBitsText = "2, 3, 4, 8";  // for error messages

// Calls fn(std::integral_constant<int, B>{}) for the width B == bits of kGptqBits (one instantiation per width);
// returns false, calling nothing, when bits is not one of them.
template <int I = 0, class Fn>
bool with_gptq_bits(int64_t bits, Fn&& fn) {
  if constexpr (I < kNumGptqBits) {
    if (bits == kGptqBits[I]) {
      fn(std::integral_constant<int, kGptqBits[I]>{});
      return true;
    }
    return with_gptq_bits<I + 1>(bits, fn);
  } else {
    return false;
  }
}

struct TiledWeight {
  const int32_t* qtiles;
  const uint16_t* scale_zero;  // fp16 bit patterns
  int64_t K, N, bits, group_size;
  SF_LAYOUT_HD int64_t k_words() const { return K * bits / 32; }
  SF_LAYOUT_HD int64_t groups() const { return (K + group_size - 1) / group_size; }
  SF_LAYOUT_HD int64_t n_tiles() const { return (N + kTileCols - 1) / kTileCols; }
};

}  // namespace gptq
}  // namespace slimformer
