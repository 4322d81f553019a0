// GPTQ CPU kernels, written once against a tiny vector interface `V` and compiled per ISA (scalar, AVX2,
// AVX-512) the way ATen compiles its native kernels per CPU capability. Each including TU defines SF_ISA_NS and,
// inside slimformer::gptq::SF_ISA_NS, a struct V:
//   L (fp32 lanes), MR_MAX (activation rows kept in registers), kMantissaExtraction (read integers as denormal
//   mantissas, x86 SIMD only), F/I (float/int vectors), as_float (bit cast),
//   zero, set1, load, store, bcast, fma(a,b,c)=a*b+c, fnma(a,b,c)=c-a*b, fms(a,b,c)=a*b-c, mul, add, loadi, and_, or_, srl<S>, sll<S>, cvt.
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
#include <cmath>
#include <cstdint>
#include <type_traits>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#include "gptq_cpu.h"
#include "gptq_decode.h"

namespace slimformer {
namespace gptq {
namespace SF_ISA_NS {

// Mantissa extraction feeds denormals to the FMAs, so a kernel call clears MXCSR.DAZ (torch.set_flush_denormal
// sets it) on whichever thread runs it, and restores it after. FTZ may stay: every product is a normal float.
struct NoFloatEnvironmentChange {};
#if defined(__x86_64__) || defined(__i386__)
struct ClearDenormalsAreZero {
  static constexpr unsigned kDaz = 0x0040;
  unsigned saved;
  ClearDenormalsAreZero() : saved(_mm_getcsr()) {
    if (saved & kDaz) _mm_setcsr(saved & ~kDaz);
  }
  ~ClearDenormalsAreZero() {
    if (saved & kDaz) _mm_setcsr(saved);
  }
};
#else
using ClearDenormalsAreZero = NoFloatEnvironmentChange;
#endif

template <int I, int N, class Fn>
inline void static_for(Fn&& fn) {
  if constexpr (I < N) {
    fn(std::integral_constant<int, I>{});
    static_for<I + 1, N>(fn);
  }
}

// Integer vector of value R when it straddles two words (words of a unit are one tile row, 32 ints, apart),
// assembled at bit 0.
template <int BITS, int R>
inline typename V::I assemble_straddled(const int32_t* p) {
  constexpr int w = value_word(BITS, R);
  constexpr int s = value_shift(BITS, R);
  constexpr int lo_bits = 32 - s;
  constexpr uint32_t mask = (1u << BITS) - 1u;
  const typename V::I lo = V::template srl<s>(V::loadi(p + w * kTileCols));
  const typename V::I hi = V::and_(V::loadi(p + (w + 1) * kTileCols), mask >> lo_bits);
  return V::or_(lo, V::template sll<lo_bits>(hi));
}

// Value R of the packing unit whose word 0 is at p, converted to float. In-place values come back multiplied by
// 2^value_prescale_shift(BITS, R).
template <int BITS, int R>
inline typename V::F extract(const int32_t* p) {
  constexpr int w = value_word(BITS, R);
  constexpr int s = value_shift(BITS, R);
  constexpr uint32_t mask = (1u << BITS) - 1u;
  if constexpr (value_extracted_in_place(BITS, R)) {
    return V::cvt(V::and_(V::loadi(p + w * kTileCols), mask << s));
  } else if constexpr (!value_straddles(BITS, R)) {
    return V::cvt(V::template srl<s>(V::loadi(p + w * kTileCols)));  // the value ends at bit 31
  } else {
    return V::cvt(assemble_straddled<BITS, R>(p));
  }
}

// Value R as the denormal float q * 2^(value_mantissa_shift - 149), without any int->float conversion.
template <int BITS, int R>
inline typename V::F extract_mantissa(const int32_t* p) {
  constexpr int w = value_word(BITS, R);
  constexpr int s = value_shift(BITS, R);
  constexpr uint32_t mask = (1u << BITS) - 1u;
  if constexpr (value_fits_mantissa(BITS, R)) {
    return V::as_float(V::and_(V::loadi(p + w * kTileCols), mask << s));
  } else if constexpr (!value_straddles(BITS, R)) {
    constexpr int sh = word_high_shift(BITS, w);
    return V::as_float(V::and_(V::template srl<sh>(V::loadi(p + w * kTileCols)), mask << (s - sh)));
  } else {
    return V::as_float(assemble_straddled<BITS, R>(p));
  }
}

// The GEMM's view of value R: mantissa extraction on the SIMD paths, conversion on the portable path.
template <int BITS, int R>
inline typename V::F extract_for_gemm(const int32_t* p) {
  if constexpr (V::kMantissaExtraction)
    return extract_mantissa<BITS, R>(p);
  else
    return extract<BITS, R>(p);
}

// Activation prescale matching extract_for_gemm, for rows [m0, m1) of x [M, K] (kernel row order):
//   xs[k] = x[k] * 2^(149 - value_mantissa_shift - c_row), row_scale = 2^c_row   (mantissa extraction), or
//   xs[k] = x[k] * 2^-value_prescale_shift,                 row_scale = 1        (conversion);
// xsum = plain per-group sums. c_row = 23 + E with max|x_row| <= 2^E keeps xs below 2^127 and the products
// x * q * 2^-c_row normal floats. E is clamped to [-100, 100]: rows beyond 2^100 overflow to inf, like fp32 would.
template <int BITS>
void prepare_rows(const TiledWeight& w, const float* x, int64_t m0, int64_t m1, float* xs, float* xsum,
                  float* row_scale) {
  constexpr int UV = unit_values(BITS);
  const int64_t K = w.K, G = w.groups(), gs = w.group_size;
  for (int64_t m = m0; m < m1; ++m) {
    const float* xr = x + m * K;
    float* xsr = xs + m * K;
    float factor[UV];
    float normalize = 1.f;  // applied first: 2^(126 - shift - E) itself can exceed the float range
    if constexpr (V::kMantissaExtraction) {
      float amax = 0.f;
      for (int64_t k = 0; k < K; ++k) amax = std::fmax(amax, std::fabs(xr[k]));
      int e = 0;
      if (amax > 0.f && std::isfinite(amax)) std::frexp(amax, &e);  // amax < 2^e
      e = e < -100 ? -100 : (e > 100 ? 100 : e);
      normalize = std::ldexp(1.0f, -e);
      for (int r = 0; r < UV; ++r) factor[r] = std::ldexp(1.0f, 126 - value_mantissa_shift(BITS, r));
      row_scale[m] = std::ldexp(1.0f, 23 + e);
    } else {
      for (int r = 0; r < UV; ++r) factor[r] = std::ldexp(1.0f, -value_prescale_shift(BITS, r));
      row_scale[m] = 1.f;
    }
    for (int64_t k = 0; k < K; k += UV)
      for (int r = 0; r < UV; ++r) xsr[k + r] = (xr[k + r] * normalize) * factor[r];  // powers of 2: exact
    for (int64_t g = 0; g < G; ++g) {
      double sum = 0.0;  // the group sum multiplies the zero point: keep it accurate for any group size
      const int64_t k1 = (g + 1) * gs < K ? (g + 1) * gs : K;
      for (int64_t k = g * gs; k < k1; ++k) sum += xr[k];
      xsum[m * G + g] = static_cast<float>(sum);
    }
  }
}

// Software prefetch distance into the tile's weight stream.
constexpr int kPrefetchInts = 2048;  // 8 KiB: best of 2, 4 and 8 KiB on a 2-core Zen 3 EPYC

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
  const float* sz = w.scale_zero + t * G * 2 * kTileCols;
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
    const float* szg = sz + g * 2 * kTileCols;
    for (int v = 0; v < NV; ++v) {
      const F scale = V::load(szg + v * L);
      const F scale_zero = V::load(szg + kTileCols + v * L);
      for (int mm = 0; mm < MR; ++mm) {
        F sum = acc[0][mm][v];
        for (int a2 = 1; a2 < NACC; ++a2) sum = V::add(sum, acc[a2][mm][v]);
        if constexpr (V::kMantissaExtraction) sum = V::mul(sum, V::bcast(a.row_scale + m0 + mm));
        out[mm][v] = V::fma(scale, sum, out[mm][v]);
        out[mm][v] = V::fnma(scale_zero, V::bcast(a.xsum + (m0 + mm) * G + g), out[mm][v]);
      }
    }
  }

  const int64_t n0 = t * kTileCols;
  const int64_t ncols = w.N - n0 < kTileCols ? w.N - n0 : kTileCols;
  for (int mm = 0; mm < MR; ++mm) {
    float* yrow = a.y + (m0 + mm) * a.ldy + n0;
    if (ncols == kTileCols) {
      for (int v = 0; v < NV; ++v) V::store(yrow + v * L, out[mm][v]);
    } else {
      alignas(64) float tmp[kTileCols];
      for (int v = 0; v < NV; ++v) V::store(tmp + v * L, out[mm][v]);
      for (int64_t c = 0; c < ncols; ++c) yrow[c] = tmp[c];
    }
  }
}

template <int BITS, int MR>
void small_m_rows(const SmallMArgs& a, int64_t t, int64_t m0, int64_t rows) {
  if constexpr (MR > 1) {
    if (rows < MR) return small_m_rows<BITS, MR - 1>(a, t, m0, rows);
  }
  small_m_tile<BITS, MR>(a, t, m0);
}

template <int BITS>
void small_m_gemm_bits(const SmallMArgs& a, int64_t t0, int64_t t1) {
  [[maybe_unused]] std::conditional_t<V::kMantissaExtraction, ClearDenormalsAreZero, NoFloatEnvironmentChange> env;
  for (int64_t t = t0; t < t1; ++t)
    for (int64_t m0 = 0; m0 < a.M; m0 += V::MR_MAX) {
      const int64_t rows = a.M - m0 < V::MR_MAX ? a.M - m0 : V::MR_MAX;
      small_m_rows<BITS, V::MR_MAX>(a, t, m0, rows);
    }
}

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
    const float* sz = w.scale_zero + t * G * 2 * kTileCols;
    float* out = a.out + (t - t0) * kTileCols;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t u0 = g * gs / UV;
      const int64_t u1 = (g + 1) * gs < K ? (g + 1) * gs / UV : K / UV;
      for (int v = 0; v < NV; ++v) {
        const F scale = V::load(sz + g * 2 * kTileCols + v * L);
        const F scale_zero = V::load(sz + g * 2 * kTileCols + kTileCols + v * L);
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

template <template <int> class Fn, class... Args>
void dispatch_bits(int64_t bits, Args&&... args) {
  switch (bits) {
    case 2: return Fn<2>::run(args...);
    case 3: return Fn<3>::run(args...);
    case 4: return Fn<4>::run(args...);
    case 8: return Fn<8>::run(args...);
    default: return;  // bits are validated by the torch glue before any kernel runs
  }
}

template <int BITS>
struct SmallMGemm {
  static void run(const SmallMArgs& a, int64_t t0, int64_t t1) { small_m_gemm_bits<BITS>(a, t0, t1); }
};
template <int BITS>
struct PrepareRows {
  static void run(const TiledWeight& w, const float* x, int64_t m0, int64_t m1, float* xs, float* xsum,
                  float* row_scale) {
    prepare_rows<BITS>(w, x, m0, m1, xs, xsum, row_scale);
  }
};
template <int BITS>
struct DequantTiles {
  static void run(const DequantArgs& a, int64_t t0, int64_t t1) { dequant_tiles_bits<BITS>(a, t0, t1); }
};

inline void prepare_rows_any(const TiledWeight& w, const float* x, int64_t m0, int64_t m1, float* xs, float* xsum,
                             float* row_scale) {
  dispatch_bits<PrepareRows>(w.bits, w, x, m0, m1, xs, xsum, row_scale);
}
inline void small_m_gemm_any(const SmallMArgs& a, int64_t t0, int64_t t1) {
  dispatch_bits<SmallMGemm>(a.w.bits, a, t0, t1);
}
inline void dequant_tiles_any(const DequantArgs& a, int64_t t0, int64_t t1) {
  dispatch_bits<DequantTiles>(a.w.bits, a, t0, t1);
}
inline CpuKernels kernels() { return CpuKernels{&prepare_rows_any, &small_m_gemm_any, &dequant_tiles_any}; }

}  // namespace SF_ISA_NS
}  // namespace gptq
}  // namespace slimformer
