// Framework-free interface of the GPTQ CPU kernels (weight layout: gptq_layout.h). No torch headers: these
// translation units are compiled once per ISA with different -m flags, and must not instantiate shared inline code
// that another TU could pick up.
#pragma once
#include <cstdint>

#include "gptq_layout.h"

namespace slimformer {
namespace gptq {

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
