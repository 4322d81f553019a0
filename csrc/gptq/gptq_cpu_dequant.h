// GPTQ CPU dequantization of column tiles into fp32 (the large-M path: tiles of W feed torch's dense GEMM; and
// the gptq_dequantize op). Values are converted with the same extraction as the float kernel, times the group's
// scale, minus scale * zero (exact in fp32).
#pragma once
#include "gptq_cpu_common.h"

namespace slimformer {
namespace gptq {
namespace SF_ISA_NS {

template <int BITS>
void dequant_tiles_bits(const DequantArgs& a, int64_t t0, int64_t t1) {
  using F = typename V::F;
  constexpr int L = V::L;
  constexpr int NV = kTileCols / L;
  constexpr int UV = unit_values(BITS);
  constexpr int UW = unit_words(BITS);
  const TiledWeight& w = a.w;
  const int64_t K = w.K, G = w.groups(), gs = w.group_size;
  for (int64_t t = t0; t < t1; ++t) {
    const int32_t* qt = w.qtiles + t * w.k_words() * kTileCols;
    const uint16_t* sz = w.scale_zero + t * G * 2 * kTileCols;
    float* out = a.out + (t - t0) * kTileCols;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t u0 = g * gs / UV;
      const int64_t u1 = (g + 1) * gs < K ? (g + 1) * gs / UV : K / UV;
      for (int v = 0; v < NV; ++v) {
        const F scale = V::load_half(sz + g * 2 * kTileCols + v * L);
        const F scale_zero = V::mul(scale, V::load_half(sz + g * 2 * kTileCols + kTileCols + v * L));
        for (int64_t u = u0; u < u1; ++u) {
          const int32_t* up = qt + u * UW * kTileCols + v * L;
          static_for<0, UV>([&](auto rc) {
            constexpr int r = decltype(rc)::value;
            constexpr float unscale = 1.0f / float(1u << value_prescale_shift(BITS, r));
            const F q = V::mul(extract<BITS, r>(up), V::set1(unscale));
            V::store(out + (u * UV + r) * a.ldo + v * L, V::fms(scale, q, scale_zero));
          });
        }
      }
    }
  }
}

}  // namespace SF_ISA_NS
}  // namespace gptq
}  // namespace slimformer
