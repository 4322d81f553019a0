// Framework-free interface of the GPTQ CPU kernels (no torch headers: these translation units are compiled once
// per ISA with different -m flags, and must not instantiate shared inline code that another TU could pick up).
//
// Kernel weight layout ("tiled32"), shared with the CUDA kernels:
//   qtiles      int32 [N_tiles, K_words, 32]   column tile t holds output columns 32t..32t+31; word w of a column
//                                              is word w of that column in the Hub qweight (rows packed along K
//                                              as one bit stream). N is padded to a multiple of 32 with zeros.
//   scale_zero  fp32  [N_tiles, G, 2, 32]      [t, g, 0, c] = scale, [t, g, 1, c] = scale * zero.
// Rows are in kernel order: for act-order checkpoints the loader sorts rows by group, and the caller permutes the
// activations the same way, so group g is always rows [g*group_size, min(K, (g+1)*group_size)).
// W[k, n] = scale[g(k), n] * (q[k, n] - zero[g(k), n]);  y = x @ W
// The kernels compute per group acc = sum_k x[k] q[k, n] and fold the affine part in once per group:
//   y[n] += scale * acc - (scale * zero) * sum_k x[k].
#pragma once
#include <cstdint>

namespace slimformer {
namespace gptq {

constexpr int kTileCols = 32;

struct TiledWeight {
  const int32_t* qtiles;
  const float* scale_zero;
  int64_t K, N, bits, group_size;
  int64_t k_words() const { return K * bits / 32; }
  int64_t groups() const { return (K + group_size - 1) / group_size; }
  int64_t n_tiles() const { return (N + kTileCols - 1) / kTileCols; }
};

// Small-M (decode) GEMM over column tiles [t0, t1).
//   xs   fp32 [M, K]  activations in kernel row order, each multiplied by 2^-value_prescale_shift(bits, k % unit)
//   xsum fp32 [M, G]  plain (unscaled) sum of the activations of each group
//   y    fp32 [M, ldy] columns of the tiles are written (columns >= N are skipped)
struct SmallMArgs {
  TiledWeight w;
  const float* xs;
  const float* xsum;
  float* y;
  int64_t M, ldy;
};

// Dequantizes column tiles [t0, t1) into out fp32 [K, ldo], tile t0 landing at column 0.
struct DequantArgs {
  TiledWeight w;
  float* out;
  int64_t ldo;
};

void small_m_gemm_scalar(const SmallMArgs& a, int64_t t0, int64_t t1);
void small_m_gemm_avx2(const SmallMArgs& a, int64_t t0, int64_t t1);
void small_m_gemm_avx512(const SmallMArgs& a, int64_t t0, int64_t t1);
void dequant_tiles_scalar(const DequantArgs& a, int64_t t0, int64_t t1);
void dequant_tiles_avx2(const DequantArgs& a, int64_t t0, int64_t t1);
void dequant_tiles_avx512(const DequantArgs& a, int64_t t0, int64_t t1);

// Fills xs and xsum for one activation row (fp32 input, already in kernel row order).
void prescale_activation_row(const float* x, int64_t K, int64_t bits, int64_t group_size, float* xs, float* xsum);

}  // namespace gptq
}  // namespace slimformer
