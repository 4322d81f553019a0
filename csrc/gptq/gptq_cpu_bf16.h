// GPTQ CPU kernel for bf16 activations on AVX512-BF16 CPUs (interface and numerics in gptq_cpu.h, SmallMBf16Args).
// Included only by the avx512bf16 TU (it uses the AVX512-BF16 intrinsics directly).
//
// Why: the integer kernel (gptq_cpu_int16.h) needs exact int16 activations, so every value more than 2^8 below its
// 128-value block's maximum is a residual added apart (~0.8% of gaussian bf16 values, more on real activations
// with outlier channels); on Zen 4 at M=128 those residuals took ~7.5% of the time, on top of the per-block grid
// conversions. vdpbf16ps multiplies the bf16 activations as they are: the weights' small integers are exact bf16
// values, one vpermw per field turns a field's 16-bit indices into them, and the lookup rides in the shadow of the
// multiply-adds (measured: 8 vpermw per 32 vdpbf16ps cost nothing on Zen 4). Same register plan as the integer
// kernel: 4 rows x 2 column vectors of fp32 accumulators, one weight word live at a time.
#pragma once
// gptq_cpu_kernel.h's kernels() lists the bf16 kernel where this header came first
#define SF_GPTQ_BF16_KERNEL 1
#include <immintrin.h>

#include "gptq_cpu_int16.h"

namespace slimformer {
namespace gptq {
namespace SF_ISA_NS {

// Rows [m0, m1) of bf16 x: xb (pairs in xq's order, bit patterns unchanged; skipped when xb is null) and xsum. False
// for a row with a non-finite or subnormal value or with 0 < max |x| < 2^-100 (see CpuKernels::prepare_rows_bf16).
template <int BITS>
bool prepare_rows_bf16(const TiledWeight& w, const uint16_t* x, int64_t m0, int64_t m1, int32_t* xb, float* xsum) {
  constexpr int UV = unit_values(BITS);
  const int64_t K = w.K, G = w.groups(), gs = w.group_size < w.K ? w.group_size : w.K;
  for (int64_t m = m0; m < m1; ++m) {
    const uint16_t* xr = x + m * K;
    uint32_t amax = 0, subnormal = 0;
    for (int64_t k = 0; k < K; ++k) {  // bit tests only: vectorizes
      const uint32_t a = xr[k] & 0x7FFFu;
      amax = a > amax ? a : amax;
      subnormal |= (a < 0x0080u) & (a != 0u);
    }
    // 0x7F80: inf or NaN; 0x0D80: 2^-100 (bf16 exponent field 27)
    if (amax >= 0x7F80u || subnormal != 0 || (amax != 0 && amax < 0x0D80u)) return false;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t k1 = (g + 1) * gs < K ? (g + 1) * gs : K;
      xsum[m * G + g] = static_cast<float>(sum_double(xr + g * gs, k1 - g * gs));
    }
    if (xb == nullptr) continue;  // the AMX route reads x itself and needs only the checks and sums
    int32_t* xbr = xb + m * (K / 2);
    for (int64_t k = 0; k < K; k += UV)
      for (int p = 0; p < UV / 2; ++p)
        xbr[k / 2 + p] = static_cast<int32_t>(static_cast<uint32_t>(xr[k + i16_pair_lo(BITS, p)]) |
                                              (static_cast<uint32_t>(xr[k + i16_pair_hi(BITS, p)]) << 16));
  }
  return true;
}

// bf16 bit patterns of the integers 0..31, the vpermw table.
inline __m512i small_int_bf16_table() {
  alignas(64) uint16_t t[32];
  for (int i = 0; i < 32; ++i) {
    const float f = static_cast<float>(i);
    uint32_t b;
    std::memcpy(&b, &f, 4);
    t[i] = static_cast<uint16_t>(b >> 16);  // exact: i has at most 5 significant bits
  }
  return _mm512_load_si512(t);
}

template <int BITS, int MR>
void small_m_tile_bf16(const SmallMBf16Args& a, int64_t t, int64_t m0, __m512i table) {
  using F = typename V::F;
  using I = typename V::I;
  constexpr int L = V::L;
  constexpr int NV = kTileCols / L;
  constexpr int UV = unit_values(BITS), UP = UV / 2, WP = i16_word_pairs(BITS);
  static_assert(unit_words(BITS) == 1 && L == 16, "one-word units, 512-bit vectors");
  const TiledWeight& w = a.w;
  const int64_t K = w.K, G = w.groups(), gs = w.group_size < K ? w.group_size : K;
  const int32_t* qt = w.qtiles + t * w.k_words() * kTileCols;
  const uint16_t* sz = w.scale_zero + t * G * 2 * kTileCols;
  const int32_t* xb[MR];
  for (int mm = 0; mm < MR; ++mm) xb[mm] = a.xb + (m0 + mm) * (K / 2);

  F out[MR][NV];
  for (int mm = 0; mm < MR; ++mm)
    for (int v = 0; v < NV; ++v) out[mm][v] = V::zero();
  for (int64_t g = 0; g < G; ++g) {
    const int64_t k0 = g * gs, k1 = (g + 1) * gs < K ? (g + 1) * gs : K;
    F acc[MR][NV];
    for (int mm = 0; mm < MR; ++mm)
      for (int v = 0; v < NV; ++v) acc[mm][v] = V::zero();
    for (int64_t u = k0 / UV; u < k1 / UV; ++u) {
      const int32_t* up = qt + u * kTileCols;
      for (int line = 0; line < 2; ++line) __builtin_prefetch(up + kPrefetchInts + line * 16);
      I xp[MR][WP];
      for (int mm = 0; mm < MR; ++mm)
        for (int j = 0; j < WP; ++j) xp[mm][j] = V::bcasti(xb[mm] + u * UP + j);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const I wv = V::loadi(up + v * L);
#pragma GCC unroll 16
        for (int j = 0; j < WP; ++j) {
          const I d = _mm512_permutexvar_epi16(field16<BITS>(wv, value_shift(BITS, i16_pair_lo(BITS, j))), table);
          for (int mm = 0; mm < MR; ++mm)
            acc[mm][v] = _mm512_dpbf16_ps(acc[mm][v], reinterpret_cast<__m512bh>(d),
                                          reinterpret_cast<__m512bh>(xp[mm][j]));
        }
      }
    }
    const uint16_t* szg = sz + g * 2 * kTileCols;
    for (int v = 0; v < NV; ++v) {
      const F scale = V::load_half(szg + v * L), zero = V::load_half(szg + kTileCols + v * L);
      for (int mm = 0; mm < MR; ++mm)  // out += scale * (sum x q - zero * sum x)
        out[mm][v] = V::fma(scale, V::fnma(zero, V::bcast(a.xsum + (m0 + mm) * G + g), acc[mm][v]), out[mm][v]);
    }
  }
  store_tile<MR>(out, a.y, t, w.N, m0);
}

template <int BITS>
void small_m_gemm_bf16_bits(const SmallMBf16Args& a, int64_t t0, int64_t t1) {
  const __m512i table = small_int_bf16_table();
  for (int64_t t = t0; t < t1; ++t)
    for_row_blocks(a.M, [&](auto mr, int64_t m0) { small_m_tile_bf16<BITS, decltype(mr)::value>(a, t, m0, table); });
}

inline bool prepare_rows_bf16_any(const TiledWeight& w, KernelInput x, int64_t m0, int64_t m1, int32_t* xb,
                                  float* xsum) {
  if (!x.bf16) return false;
  const auto* p = static_cast<const uint16_t*>(x.data);
  switch (w.bits) {
    case 2: return prepare_rows_bf16<2>(w, p, m0, m1, xb, xsum);
    case 4: return prepare_rows_bf16<4>(w, p, m0, m1, xb, xsum);
    default: return false;  // not bf16_bits: the integer path
  }
}
inline void small_m_gemm_bf16_any(const SmallMBf16Args& a, int64_t t0, int64_t t1) {
  switch (a.w.bits) {
    case 2: small_m_gemm_bf16_bits<2>(a, t0, t1); break;
    case 4: small_m_gemm_bf16_bits<4>(a, t0, t1); break;
    default: break;  // unreachable: prepare_rows_bf16_any refused these widths
  }
}

}  // namespace SF_ISA_NS
}  // namespace gptq
}  // namespace slimformer
