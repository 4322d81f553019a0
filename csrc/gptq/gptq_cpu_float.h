// GPTQ CPU float kernel (small M, fp32 or bf16 activations, every bit width): prepare_rows + small_m_tile.
// Written once against the vector interface V (csrc/common/simd_scalar.h lists it) and compiled per ISA by
// gptq_cpu_kernel.h. V provides:
//   L (fp32 lanes), MR_MAX (activation rows kept in registers), kMantissaExtraction (read integers as denormal
//   mantissas, x86 SIMD only), F/I (float/int vectors), as_float (bit cast),
//   zero, set1, load, load_half (8/16 fp16 -> float), store, bcast, fma(a,b,c)=a*b+c, fnma(a,b,c)=c-a*b,
//   fms(a,b,c)=a*b-c, mul, add, loadi, storei, and_, or_, srl<S>, cvt,
//   and for the integer path zeroi, bcasti, addi, madd16 (vpmaddwd), srlv (run-time count), srli / srli16 (shift
//   each 32-bit lane / 16-bit half by a count that folds to a constant), keep (compiler barrier).
//
// Small-M (decode) design. One task is one 32-column tile; its K x 32 packed weights (64 KiB at K=4096, int4)
// are streamed from memory once and re-read from L2 for every further block of MR activation rows. For each
// packing unit (1 word = 8 int4 values, or 3 words = 32 int3 values) and each column vector the kernel isolates
// each integer with one AND and does one FMA per activation row. On the SIMD paths the masked word is used as a
// float directly (a denormal whose mantissa is the integer, see value_fits_mantissa in gptq_decode.h), against an
// activation prescaled to cancel the denormal's exponent: 2 vector ops per L multiply-adds, no int->float
// conversion (which shares the FMA ports and cost ~20% on Zen 3), no zero-point subtraction, no scale multiply.
// The portable path converts instead (value_extracted_in_place). The affine part of
// the GPTQ grid is folded in once per group: y += scale * sum(x q) - (scale * zero) * sum(x).
// Independent accumulator chains hide the FMA latency: NV = 32 / L per row (4 on AVX2, 2 on AVX-512), times MR
// rows, times 2 (even/odd values) while that product is below 8. All arithmetic is fp32 with fp32 accumulation, so results match the float64
// reference to ~1e-6 relative.
#pragma once
#include "gptq_cpu_common.h"

namespace slimformer {
namespace gptq {
namespace SF_ISA_NS {

// Activation prescale matching extract_for_gemm, for rows [m0, m1) of x [M, K] (kernel row order):
//   xs[k] = x[k] * 2^(149 - value_mantissa_shift - c_row), row_scale = 2^c_row   (mantissa extraction), or
//   xs[k] = x[k] * 2^-value_prescale_shift,                 row_scale = 1        (conversion);
// xsum = plain per-group sums. c_row = 23 + E with max|x_row| <= 2^E keeps xs below 2^127 and the products
// x * q * 2^-c_row normal floats. E is clamped below at -100. Above E = 100, 2^c_row would leave the float range
// (and on the conversion path the sums of x * q would overflow before the scale shrinks them), so the row's
// result is formed 2^-(E - 100) smaller (xs, row_scale and xsum carry that factor, all exact powers of 2) and
// store_tile multiplies it back: rows up to the fp32 maximum give what fp32 GEMM gives, not inf/NaN.
// row_scale holds two floats per row: [2m] = the group-sum factor, [2m + 1] = the output factor.
template <int BITS, class T>
void prepare_rows(const TiledWeight& w, const T* x, int64_t m0, int64_t m1, float* xs, float* xsum,
                  float* row_scale) {
  constexpr int UV = unit_values(BITS);
  const int64_t K = w.K, G = w.groups(), gs = w.group_size;
  for (int64_t m = m0; m < m1; ++m) {
    const T* xr = x + m * K;
    float* xsr = xs + m * K;
    float factor[UV];
    float normalize = 1.f;  // applied first: 2^(126 - shift - E) itself can exceed the float range
    double sum_scale = 1.0;
    const uint32_t amax_bits = abs_max_bits(xr, K);
    float amax;
    std::memcpy(&amax, &amax_bits, 4);
    int e = 0;
    if (amax > 0.f && std::isfinite(amax)) std::frexp(amax, &e);  // amax < 2^e
    e = e < -100 ? -100 : e;
    const int over = e > 100 ? e - 100 : 0;
    row_scale[2 * m + 1] = std::ldexp(1.0f, over);
    sum_scale = std::ldexp(1.0, -over);
    if constexpr (V::kMantissaExtraction) {
      normalize = std::ldexp(1.0f, -e);
      for (int r = 0; r < UV; ++r) factor[r] = std::ldexp(1.0f, 126 - value_mantissa_shift(BITS, r));
      row_scale[2 * m] = std::ldexp(1.0f, 23 + e - over);
    } else {
      // the sums of x * q (q < 2^bits, up to K terms) must not overflow before the scale multiplies them
      normalize = std::ldexp(1.0f, -over);
      for (int r = 0; r < UV; ++r) factor[r] = std::ldexp(1.0f, -value_prescale_shift(BITS, r));
      row_scale[2 * m] = 1.f;
    }
    for (int64_t k = 0; k < K; k += UV)
      for (int r = 0; r < UV; ++r) xsr[k + r] = (load_x(xr, k + r) * normalize) * factor[r];  // powers of 2: exact
    for (int64_t g = 0; g < G; ++g) {
      // The group sum multiplies the zero point: keep it accurate for any group size.
      const int64_t k1 = (g + 1) * gs < K ? (g + 1) * gs : K;
      xsum[m * G + g] = static_cast<float>(sum_double(xr + g * gs, k1 - g * gs) * sum_scale);
    }
  }
}

// Rows [m0, m0 + MR) of the output for column tile t.
template <int BITS, int MR>
void small_m_tile(const SmallMArgs& a, int64_t t, int64_t m0) {
  using F = typename V::F;
  constexpr int L = V::L;
  constexpr int NV = kTileCols / L;
  constexpr int UV = unit_values(BITS);
  constexpr int UW = unit_words(BITS);
  // Independent accumulator sets: each FMA chain must wait the FMA latency (4 cycles), so with one row the NV
  // column vectors alone cannot keep two FMA pipes busy; alternate two sets over even/odd values.
  constexpr int NACC = MR * NV >= 8 ? 1 : 2;
  const TiledWeight& w = a.w;
  const int64_t K = w.K, G = w.groups(), gs = w.group_size;
  const int32_t* qt = w.qtiles + t * w.k_words() * kTileCols;
  const uint16_t* sz = w.scale_zero + t * G * 2 * kTileCols;
  const float* xrow[MR];
  for (int mm = 0; mm < MR; ++mm) xrow[mm] = a.xs + (m0 + mm) * K;

  F out[MR][NV];
  for (int mm = 0; mm < MR; ++mm)
    for (int v = 0; v < NV; ++v) out[mm][v] = V::zero();

  for (int64_t g = 0; g < G; ++g) {
    const int64_t u0 = g * gs / UV;
    const int64_t u1 = (g + 1) * gs < K ? (g + 1) * gs / UV : K / UV;
    F acc[NACC][MR][NV];
    for (int a2 = 0; a2 < NACC; ++a2)
      for (int mm = 0; mm < MR; ++mm)
        for (int v = 0; v < NV; ++v) acc[a2][mm][v] = V::zero();
    for (int64_t u = u0; u < u1; ++u) {
      const int32_t* up = qt + u * UW * kTileCols;
      const int64_t k = u * UV;
      // The tile is one contiguous stream; request it kPrefetchInts ahead, every 64-byte line of the unit's
      // UW rows of 128 bytes (the hardware prefetcher alone leaves this loop ~20% short of its speed).
      for (int line = 0; line < UW * 2; ++line) __builtin_prefetch(up + kPrefetchInts + line * 16);
      static_for<0, UV>([&](auto rc) {
        constexpr int r = decltype(rc)::value;
        F xb[MR];
        for (int mm = 0; mm < MR; ++mm) xb[mm] = V::bcast(xrow[mm] + k + r);
        for (int v = 0; v < NV; ++v) {
          const F q = extract_for_gemm<BITS, r>(up + v * L);
          for (int mm = 0; mm < MR; ++mm) acc[r % NACC][mm][v] = V::fma(xb[mm], q, acc[r % NACC][mm][v]);
        }
      });
    }
    const uint16_t* szg = sz + g * 2 * kTileCols;
    for (int v = 0; v < NV; ++v) {
      const F scale = V::load_half(szg + v * L);
      const F scale_zero = V::mul(scale, V::load_half(szg + kTileCols + v * L));  // exact
      for (int mm = 0; mm < MR; ++mm) {
        F sum = acc[0][mm][v];
        for (int a2 = 1; a2 < NACC; ++a2) sum = V::add(sum, acc[a2][mm][v]);
        if constexpr (V::kMantissaExtraction) sum = V::mul(sum, V::bcast(a.row_scale + 2 * (m0 + mm)));
        out[mm][v] = V::fma(scale, sum, out[mm][v]);
        out[mm][v] = V::fnma(scale_zero, V::bcast(a.xsum + (m0 + mm) * G + g), out[mm][v]);
      }
    }
  }

  store_tile<MR>(out, a.y, t, w.N, m0);
}

template <int BITS>
void small_m_gemm_bits(const SmallMArgs& a, int64_t t0, int64_t t1) {
  [[maybe_unused]] std::conditional_t<V::kMantissaExtraction, ClearDenormalsAreZero, NoFloatEnvironmentChange> env;
  for (int64_t t = t0; t < t1; ++t)
    for_row_blocks(a.M, [&](auto mr, int64_t m0) { small_m_tile<BITS, decltype(mr)::value>(a, t, m0); });
}

}  // namespace SF_ISA_NS
}  // namespace gptq
}  // namespace slimformer
