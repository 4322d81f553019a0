// GPTQ CPU kernels, written once against a tiny vector interface `V` and compiled per ISA (scalar, AVX2,
// AVX-512) the way ATen compiles its native kernels per CPU capability. Each including TU defines SF_ISA_NS and,
// inside slimformer::gptq::SF_ISA_NS, a struct V:
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
#include <cmath>
#include <cstdint>
#include <cstring>
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

// The sliced word of the int3 unit whose word 0 is at p (gptq_decode.h): value 30 at bits 0..2, value 31 at bits
// 16..18, as int3_sliced_word computes per lane.
template <int BITS>
inline typename V::I sliced_word(const int32_t* p) {
  typename V::I t = V::and_(V::template srl<kInt3SpareBit>(V::loadi(p)), 0x10001u);
  static_for<1, BITS>([&](auto ic) {
    constexpr int i = decltype(ic)::value;
    t = V::or_(t, V::and_(V::template srl<kInt3SpareBit - i>(V::loadi(p + i * kTileCols)), 0x10001u << i));
  });
  return t;
}

// The word value R is read from: its own word of the unit (words are one tile row, 32 ints, apart), or the sliced
// word.
template <int BITS, int R>
inline typename V::I value_source(const int32_t* p) {
  if constexpr (value_sliced(BITS, R))
    return sliced_word<BITS>(p);
  else
    return V::loadi(p + value_word(BITS, R) * kTileCols);
}

// Value R of the packing unit whose word 0 is at p, converted to float. In-place values come back multiplied by
// 2^value_prescale_shift(BITS, R).
template <int BITS, int R>
inline typename V::F extract(const int32_t* p) {
  constexpr int s = value_shift(BITS, R);
  constexpr uint32_t mask = (1u << BITS) - 1u;
  if constexpr (value_extracted_in_place(BITS, R))
    return V::cvt(V::and_(value_source<BITS, R>(p), mask << s));
  else
    return V::cvt(V::template srl<s>(value_source<BITS, R>(p)));  // the value ends at bit 31
}

// Value R as the denormal float q * 2^(value_mantissa_shift - 149), without any int->float conversion.
template <int BITS, int R>
inline typename V::F extract_mantissa(const int32_t* p) {
  constexpr int s = value_shift(BITS, R);
  constexpr uint32_t mask = (1u << BITS) - 1u;
  if constexpr (value_fits_mantissa(BITS, R)) {
    return V::as_float(V::and_(value_source<BITS, R>(p), mask << s));
  } else {
    constexpr int sh = word_high_shift(BITS, value_word(BITS, R));
    return V::as_float(V::and_(V::template srl<sh>(value_source<BITS, R>(p)), mask << (s - sh)));
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

// Activation element i of a row as fp32: bf16 widens exactly by a 16-bit shift.
inline float load_x(const float* x, int64_t i) { return x[i]; }
inline float load_x(const uint16_t* x, int64_t i) {
  const uint32_t bits = static_cast<uint32_t>(x[i]) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// max |x[i]| over n values (fp32, or bf16 widened), as the unsigned max of the bit patterns with the sign cleared
// (non-negative floats order like their bits); vectorizes, unlike std::fmax. A result >= 0x7F800000 means an inf
// or NaN was present.
template <class T>
inline uint32_t abs_max_bits(const T* x, int64_t n) {
  uint32_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float v = load_x(x, i);
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    bits &= 0x7FFFFFFFu;
    m = bits > m ? bits : m;
  }
  return m;
}

// 2^n as a float, for -126 <= n <= 127.
inline float pow2(int n) {
  const uint32_t bits = static_cast<uint32_t>(n + 127) << 23;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Calls fn(p) with p pointing at the input as float (fp32 input) or uint16_t (bf16 bit patterns).
template <class Fn>
inline auto with_input(KernelInput x, Fn&& fn) {
  return x.bf16 ? fn(static_cast<const uint16_t*>(x.data)) : fn(static_cast<const float*>(x.data));
}

// Sum of n floats in double precision with 8 independent partial sums (a single running sum is one long
// latency chain: ~7 us per 4096 values).
template <class T>
inline double sum_double(const T* x, int64_t n) {
  double p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) p[j] += load_x(x, i + j);
  for (; i < n; ++i) p[0] += load_x(x, i);
  return ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
}

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

// Software prefetch distance into the tile's weight stream.
constexpr int kPrefetchInts = 2048;  // 8 KiB: best of 2, 4 and 8 KiB on a 2-core Zen 3 EPYC

// Writes rows [m0, m0 + MR) of column tile t (columns >= N are dropped), bias added, in y's dtype.
template <int MR>
inline void store_tile(typename V::F (&out)[MR][kTileCols / V::L], const KernelOutput& y, int64_t t, int64_t N,
                       int64_t m0) {
  constexpr int L = V::L;
  constexpr int NV = kTileCols / L;
  const int64_t n0 = t * kTileCols;
  const int64_t ncols = N - n0 < kTileCols ? N - n0 : kTileCols;
  if (y.row_factor != nullptr)
    for (int mm = 0; mm < MR; ++mm) {
      const typename V::F f = V::bcast(y.row_factor + 2 * (m0 + mm));
      for (int v = 0; v < NV; ++v) out[mm][v] = V::mul(out[mm][v], f);
    }
  if (y.bias != nullptr) {
    alignas(64) float b[kTileCols] = {};
    for (int64_t c = 0; c < ncols; ++c) b[c] = y.bias[n0 + c];
    for (int mm = 0; mm < MR; ++mm)
      for (int v = 0; v < NV; ++v) out[mm][v] = V::add(out[mm][v], V::load(b + v * L));
  }
  for (int mm = 0; mm < MR; ++mm) {
    const int64_t off = (m0 + mm) * y.ld + n0;
    if (!y.bf16 && ncols == kTileCols) {
      for (int v = 0; v < NV; ++v) V::store(static_cast<float*>(y.data) + off + v * L, out[mm][v]);
      continue;
    }
    alignas(64) float tmp[kTileCols];
    for (int v = 0; v < NV; ++v) V::store(tmp + v * L, out[mm][v]);
    if (y.bf16) {
      uint16_t* yrow = static_cast<uint16_t*>(y.data) + off;
      for (int64_t c = 0; c < ncols; ++c) yrow[c] = float_to_bf16(tmp[c]);
    } else {
      float* yrow = static_cast<float*>(y.data) + off;
      for (int64_t c = 0; c < ncols; ++c) yrow[c] = tmp[c];
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

// Calls fn(std::integral_constant<int, MR>{}, m0) for the activation rows [0, M) in blocks of V::MR_MAX rows, the
// last block with its actual row count as the compile-time MR (the small-M kernels keep MR rows in registers).
template <int MR, class Fn>
inline void with_rows(int64_t rows, int64_t m0, Fn&& fn) {
  if constexpr (MR > 1) {
    if (rows < MR) return with_rows<MR - 1>(rows, m0, fn);
  }
  fn(std::integral_constant<int, MR>{}, m0);
}
template <class Fn>
inline void for_row_blocks(int64_t M, Fn&& fn) {
  for (int64_t m0 = 0; m0 < M; m0 += V::MR_MAX) with_rows<V::MR_MAX>(M - m0 < V::MR_MAX ? M - m0 : V::MR_MAX, m0, fn);
}

// The K range [k0, k1) of integer-path block blk (blocks of up to kI16Block values inside each group; k1 <= k0 for
// an empty block, which only occurs when a group is shorter than its blocks) and the group g it belongs to.
struct BlockRange {
  int64_t g, k0, k1;
};
inline BlockRange block_range(const TiledWeight& w, int64_t blk) {
  const int64_t K = w.K, gs = w.group_size < K ? w.group_size : K, bpg = i16_blocks_per_group(w);
  const int64_t g = blk / bpg;
  const int64_t gend = (g + 1) * gs < K ? (g + 1) * gs : K;
  const int64_t k0 = g * gs + (blk % bpg) * kI16Block;
  return {g, k0, k0 + kI16Block < gend ? k0 + kI16Block : gend};
}

template <int BITS>
void small_m_gemm_bits(const SmallMArgs& a, int64_t t0, int64_t t1) {
  [[maybe_unused]] std::conditional_t<V::kMantissaExtraction, ClearDenormalsAreZero, NoFloatEnvironmentChange> env;
  for (int64_t t = t0; t < t1; ++t)
    for_row_blocks(a.M, [&](auto mr, int64_t m0) { small_m_tile<BITS, decltype(mr)::value>(a, t, m0); });
}

// ---------------------------------------------------------------------------------------------------------------
// Integer path for bf16 activations (interface and numerics in gptq_cpu.h, SmallMI16Args).
//
// Why: with fp32 arithmetic each int4 weight costs an AND plus an FMA, and the FMA reads the masked word as a
// denormal float, which Zen 3 executes at about 2/3 of the normal rate (measured: the same loop with normal
// operands is ~1.5x faster). vpmaddwd instead multiplies 16 int16 pairs and adds adjacent products in one
// instruction, so a word of 8 int4 values costs 3 shifts, 3 ANDs, 4 multiply-adds and 4 adds per 8 columns:
// about 1.75 instructions per 8 multiply-adds against 2-2.25, none of them on denormals.
//
// Lane layout: a 32-bit lane holds one column's packed word, and each field of its low 16-bit half has a partner
// at the same position of the high half (for 2/4/8 bits the Hub stream is already so: value j and value
// 16/BITS + j; int3 gets its own layout at load, gptq_decode.h). Isolating a field in both halves at once
// (field16) and multiplying by one broadcast int32 holding the activation pair (gptq_cpu.h, i16_pair_lo/hi)
// handles two values per lane. int3 costs 8 isolating instructions per word of 10 values, plus 8 for the sliced
// pair of every 3 words: 64 instructions per 32 values and 8 columns against int4's 56 (measured on Zen 3, 1
// thread, weights in L2: 25.7 vs 23.1 us per 1M weights), while streaming 25% fewer bytes.

// Rows [m0, m1): splits each activation block into int16 hi values and exact residuals (see gptq_cpu.h).
template <int BITS, class T>
bool prepare_rows_i16(const TiledWeight& w, const T* x, int64_t m0, int64_t m1, int32_t* xq, float* bscale,
                      float* xsum, int32_t* res_off, int32_t* res_k, float* res_lo) {
  constexpr int UV = unit_values(BITS);
  const int64_t K = w.K, G = w.groups(), gs = w.group_size < w.K ? w.group_size : w.K;
  const int64_t bpg = i16_blocks_per_group(w), NB = blocks_i16(w);
  for (int64_t m = m0; m < m1; ++m) {
    const T* xr = x + m * K;
    int32_t* xqr = xq + m * (K / 2);
    float* bs = bscale + m * NB;
    int32_t* off = res_off + m * (NB + 1);
    int32_t* rk = res_k + m * K;
    float* rl = res_lo + m * K;
    int32_t nres = 0;
    off[0] = 0;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t gend = (g + 1) * gs < K ? (g + 1) * gs : K;
      double gsum = 0.0;
      for (int64_t b = 0; b < bpg; ++b) {
        const int64_t k0 = g * gs + b * kI16Block;
        const int64_t k1 = k0 + kI16Block < gend ? k0 + kI16Block : gend;
        const int64_t n = k1 - k0;
        const uint32_t amax_bits = abs_max_bits(xr + k0, n);
        if (amax_bits >= 0x7F800000u) return false;  // inf or NaN: only the float path propagates them faithfully
        // e with amax < 2^e (frexp's exponent, read off the bits), at least -100 so that 2^(15-e) stays finite;
        // values of a block that small end up in the residuals.
        int e = amax_bits == 0 ? 0 : static_cast<int>(amax_bits >> 23) - 126;
        e = e < -100 ? -100 : e;
        const float to_grid = pow2(15 - e), grid = pow2(e - 15);
        bs[g * bpg + b] = grid;
        float hf[kI16Block], lo[kI16Block];
        int32_t hi[kI16Block];
        uint32_t lo_bits[kI16Block];
        int32_t hsum = 0;  // |sum| < 128 * 2^15
        for (int64_t i = 0; i < n; ++i) {
          // |x| * to_grid < 2^15, but an fp32 |x| just below 2^e (0.99999994 = 1 - 2^-24) rounds up to 2^15, which
          // would wrap to -2^15 in int16: clamp to +-(2^15 - 1), and lo keeps the exact remainder (within a factor
          // of 2 of x, so the subtraction is exact). bf16 values (8-bit mantissas) never reach the clamp.
          const float xv = load_x(xr, k0 + i);
          const float r = std::nearbyint(xv * to_grid);
          hf[i] = r > 32767.f ? 32767.f : (r < -32767.f ? -32767.f : r);
          lo[i] = xv - hf[i] * grid;  // exact: what the 2^(e-15) grid cannot hold of x
          hi[i] = static_cast<int32_t>(hf[i]);
          hsum += hi[i];
          std::memcpy(lo_bits + i, lo + i, 4);
        }
        double lsum = 0.0;
        for (int64_t i0 = 0; i0 < n; i0 += 16) {  // residuals are rare: skip 16 values at a time
          const int64_t i1 = i0 + 16 < n ? i0 + 16 : n;
          uint32_t any = 0;
          for (int64_t i = i0; i < i1; ++i) any |= lo_bits[i];
          if (any == 0) continue;
          for (int64_t i = i0; i < i1; ++i)
            if (lo[i] != 0.f) {
              rk[nres] = static_cast<int32_t>(k0 + i);
              rl[nres] = lo[i];
              lsum += lo[i];
              ++nres;
            }
        }
        gsum += static_cast<double>(hsum) * grid + lsum;  // the block's exact sum of x, up to lsum's rounding
        for (int64_t i = 0; i < n; i += UV)  // blocks hold whole units
          for (int p = 0; p < UV / 2; ++p)
            xqr[(k0 + i) / 2 + p] =
                static_cast<int32_t>((static_cast<uint32_t>(hi[i + i16_pair_lo(BITS, p)]) & 0xFFFFu) |
                                     (static_cast<uint32_t>(hi[i + i16_pair_hi(BITS, p)]) << 16));
        off[g * bpg + b + 1] = nres;
      }
      xsum[m * G + g] = static_cast<float>(gsum);
    }
  }
  return true;
}

// Field s (the value at bit s of each 16-bit half, BITS wide) of every lane, for vpmaddwd: the lowest field needs
// only an AND, one ending at bit 15 only a 16-bit shift, the others a shift and an AND. s must fold to a constant
// (the callers' loops are fully unrolled).
template <int BITS>
inline typename V::I field16(typename V::I w, int s) {
  constexpr uint32_t mask16 = ((1u << BITS) - 1u) * 0x10001u;
  if (s == 0) return V::and_(w, mask16);
  if (s + BITS == 16) return V::srli16(w, s);
  return V::and_(V::srli(w, s), mask16);
}

// Column vectors of value r (run-time) of the unit whose word 0 is at p, as integers.
template <int BITS>
inline typename V::I value_at(const int32_t* p, int r) {
  constexpr uint32_t mask = (1u << BITS) - 1u;
  const typename V::I word =
      value_sliced(BITS, r) ? sliced_word<BITS>(p) : V::loadi(p + value_word(BITS, r) * kTileCols);
  return V::and_(V::srlv(word, value_shift(BITS, r)), mask);
}

// Blocks handed to one dot_blocks_i16 call. int3 (3-word units): out of line, 8 blocks per call. Inlined into the
// tile loop, GCC kept the tile's fp32 outputs in registers and spilled the accumulators instead, and a call per
// block (4 units) spent ~10% on entry. 2/4/8 bits (1-word units): inlined, one block per call; the out-of-line form
// measured ~4% slower for int4 with the weights streaming from DRAM (2 threads, same speed in cache).
constexpr int64_t i16_blocks_per_call(int bits) { return unit_words(bits) > 1 ? 8 : 1; }

// For the i16 blocks [blk0, blk1) of column tile t and activation rows [m0, m0 + MR): bsum[mm][blk - blk0][c] =
// the block's exact int32 dot product of the weights with the int16 activations, times the block's grid.
template <int BITS, int MR>
__attribute__((always_inline)) inline void dot_blocks_i16(const SmallMI16Args& a, const int32_t* qt, int64_t m0,
                                                          int64_t blk0, int64_t blk1, float* bsum) {
  using I = typename V::I;
  constexpr int L = V::L;
  constexpr int NV = kTileCols / L;
  constexpr int UV = unit_values(BITS), UW = unit_words(BITS), UP = UV / 2, WP = i16_word_pairs(BITS);
  const int64_t K = a.w.K, gs = a.w.group_size < K ? a.w.group_size : K;
  const int64_t bpg = i16_blocks_per_group(a.w), NB = blocks_i16(a.w);
  const int32_t* xq[MR];
  for (int mm = 0; mm < MR; ++mm) xq[mm] = a.xq + (m0 + mm) * (K / 2);
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    // block_range(a.w, blk), spelled out: through the helper this kernel measured 1-3% slower from DRAM in one
    // A/B run (at the edge of this machine's noise; kept as it was).
    const int64_t g = blk / bpg;
    const int64_t gend = (g + 1) * gs < K ? (g + 1) * gs : K;
    const int64_t k0 = g * gs + (blk % bpg) * kI16Block;
    const int64_t k1 = k0 + kI16Block < gend ? k0 + kI16Block : gend;  // k1 <= k0: an empty block
    I acc[MR][NV];
    for (int mm = 0; mm < MR; ++mm)
      for (int v = 0; v < NV; ++v) acc[mm][v] = V::zeroi();
    for (int64_t u = k0 / UV; u < k1 / UV; ++u) {
      const int32_t* up = qt + u * UW * kTileCols;
      // The unit's UW tile rows of 128 bytes, kPrefetchInts ahead: two lines each.
      for (int line = 0; line < UW * 2; ++line) __builtin_prefetch(up + kPrefetchInts + line * 16);
      // Word outer, column vector next, field inner: the word's WP broadcasts per row stay in registers while
      // each word is decoded, and only one word is live at a time. Plain loops, fully unrolled, rather than
      // static_for: accumulators captured by a lambda stayed in memory (20% slower).
#pragma GCC unroll 4
      for (int wi = 0; wi < UW; ++wi) {
        I xb[MR][WP];
        for (int mm = 0; mm < MR; ++mm)
          for (int j = 0; j < WP; ++j) xb[mm][j] = V::bcasti(xq[mm] + u * UP + wi * WP + j);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
          const I wv = V::loadi(up + wi * kTileCols + v * L);
#pragma GCC unroll 16
          for (int j = 0; j < WP; ++j) {
            const I d = field16<BITS>(wv, value_shift(BITS, i16_pair_lo(BITS, wi * WP + j)));
            for (int mm = 0; mm < MR; ++mm) acc[mm][v] = V::dpwssd(acc[mm][v], d, xb[mm][j]);
          }
        }
        // Without this GCC hoists the multiplies of several words ahead of their adds and spills the products
        // (int3: 34 vs 28 us per 1M weights on Zen 3).
        if constexpr (UW > 1)
          for (int mm = 0; mm < MR; ++mm)
            for (int v = 0; v < NV; ++v) V::keep(acc[mm][v]);
      }
      if constexpr (UW * WP < UP) {  // int3: the sliced pair (values 30 and 31), already one per 16-bit half
        static_assert(UW * WP + 1 == UP, "one sliced pair per unit");
        I xb[MR];
        for (int mm = 0; mm < MR; ++mm) xb[mm] = V::bcasti(xq[mm] + u * UP + UW * WP);
        for (int v = 0; v < NV; ++v) {
          const I d = sliced_word<BITS>(up + v * L);
          for (int mm = 0; mm < MR; ++mm) acc[mm][v] = V::dpwssd(acc[mm][v], d, xb[mm]);
        }
        for (int mm = 0; mm < MR; ++mm)
          for (int v = 0; v < NV; ++v) V::keep(acc[mm][v]);
      }
    }
    for (int mm = 0; mm < MR; ++mm) {
      const typename V::F grid = V::bcast(a.bscale + (m0 + mm) * NB + blk);
      float* dst = bsum + (mm * i16_blocks_per_call(BITS) + (blk - blk0)) * kTileCols;
      for (int v = 0; v < NV; ++v) V::store(dst + v * L, V::mul(V::cvt(acc[mm][v]), grid));
    }
  }
}

template <int BITS, int MR>
__attribute__((noinline)) void dot_blocks_i16_outlined(const SmallMI16Args& a, const int32_t* qt, int64_t m0,
                                                       int64_t blk0, int64_t blk1, float* bsum) {
  dot_blocks_i16<BITS, MR>(a, qt, m0, blk0, blk1, bsum);
}

template <int BITS, int MR>
void small_m_tile_i16(const SmallMI16Args& a, int64_t t, int64_t m0) {
  using F = typename V::F;
  constexpr int L = V::L;
  constexpr int NV = kTileCols / L;
  constexpr int UV = unit_values(BITS), UW = unit_words(BITS);
  const TiledWeight& w = a.w;
  const int64_t K = w.K, G = w.groups();
  const int64_t bpg = i16_blocks_per_group(w), NB = blocks_i16(w);
  const int32_t* qt = w.qtiles + t * w.k_words() * kTileCols;
  const uint16_t* sz = w.scale_zero + t * G * 2 * kTileCols;

  F out[MR][NV];
  for (int mm = 0; mm < MR; ++mm)
    for (int v = 0; v < NV; ++v) out[mm][v] = V::zero();

  constexpr int64_t BPC = i16_blocks_per_call(BITS);
  alignas(64) float bsums[MR * BPC * kTileCols];
  for (int64_t blk0 = 0; blk0 < NB; blk0 += BPC) {
    const int64_t blk1 = blk0 + BPC < NB ? blk0 + BPC : NB;
    if constexpr (unit_words(BITS) > 1)
      dot_blocks_i16_outlined<BITS, MR>(a, qt, m0, blk0, blk1, bsums);
    else
      dot_blocks_i16<BITS, MR>(a, qt, m0, blk0, blk1, bsums);
    for (int64_t blk = blk0; blk < blk1; ++blk) {
      const int64_t g = blk / bpg;
      const uint16_t* szg = sz + g * 2 * kTileCols;
      for (int mm = 0; mm < MR; ++mm) {
        const float* src = bsums + (mm * BPC + (blk - blk0)) * kTileCols;
        F bsum[NV];
        for (int v = 0; v < NV; ++v) bsum[v] = V::load(src + v * L);
        // Residuals: the few activations the int16 grid could not hold exactly, times their weights, in fp32
        // (weights converted, not read as denormals, so this needs no MXCSR change).
        const int32_t* off = a.res_off + (m0 + mm) * (NB + 1);
        const int32_t* rk = a.res_k + (m0 + mm) * K;
        const float* rl = a.res_lo + (m0 + mm) * K;
        for (int32_t i = off[blk]; i < off[blk + 1]; ++i) {
          const int32_t k = rk[i];
          const F lo = V::bcast(rl + i);
          const int32_t* kp = qt + (k / UV) * UW * kTileCols;
          for (int v = 0; v < NV; ++v) bsum[v] = V::fma(lo, V::cvt(value_at<BITS>(kp + v * L, k % UV)), bsum[v]);
        }
        for (int v = 0; v < NV; ++v) out[mm][v] = V::fma(V::load_half(szg + v * L), bsum[v], out[mm][v]);
      }
      if (blk % bpg == bpg - 1) {  // the group's last block: its zero-point term
        for (int v = 0; v < NV; ++v) {
          const F scale_zero = V::mul(V::load_half(szg + v * L), V::load_half(szg + kTileCols + v * L));
          for (int mm = 0; mm < MR; ++mm)
            out[mm][v] = V::fnma(scale_zero, V::bcast(a.xsum + (m0 + mm) * G + g), out[mm][v]);
        }
      }
    }
  }
  store_tile<MR>(out, a.y, t, w.N, m0);
}

template <int BITS>
void small_m_gemm_i16_bits(const SmallMI16Args& a, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t)
    for_row_blocks(a.M, [&](auto mr, int64_t m0) { small_m_tile_i16<BITS, decltype(mr)::value>(a, t, m0); });
}

// ---------------------------------------------------------------------------------------------------------------
// Int8 dynamic-activation mode, 4-bit weights (interface and numerics in gptq_cpu.h, SmallMA8Args).
//
// Why: vpmaddubsw multiplies 32 unsigned-byte x signed-byte pairs and adds adjacent products in one instruction,
// twice the products of vpmaddwd, and a byte holds one int4 value after a single AND (the low nibbles) or a 16-bit
// shift and an AND (the high nibbles). Per 8-value word and 8 columns: 3 decode instructions shared by the rows,
// then per row 2 vpmaddubsw + 2 16-bit adds, plus a widening vpmaddwd + add every 4 words: ~4.5 instructions per 64
// multiply-adds and row, against 6 shared and 8 per row (4 vpmaddwd + 4 adds) in the exact integer kernel.
// Overflow: a 16-bit lane gains at most 2 * 15 * 127 = 3810 per vpmaddubsw (no saturation), 2 per word, so 4 words
// (8 additions, at most 30480) fit before the lanes are widened into int32 with vpmaddwd by ones.
constexpr int64_t kA8WidenWords = 4;

// Rows [m0, m1): per-block symmetric int8 quantization (gptq_cpu.h). Returns false when a row holds inf or NaN.
template <class T>
bool prepare_rows_a8(const TiledWeight& w, const T* x, int64_t m0, int64_t m1, int32_t* xa8, float* ascale,
                     float* asum) {
  const int64_t K = w.K, G = w.groups(), gs = w.group_size < w.K ? w.group_size : w.K;
  const int64_t bpg = i16_blocks_per_group(w), NB = blocks_i16(w);
  for (int64_t m = m0; m < m1; ++m) {
    const T* xr = x + m * K;
    uint32_t* xo = reinterpret_cast<uint32_t*>(xa8 + m * (K / 4));
    for (int64_t g = 0; g < G; ++g) {
      const int64_t gend = (g + 1) * gs < K ? (g + 1) * gs : K;
      for (int64_t b = 0; b < bpg; ++b) {
        const int64_t blk = g * bpg + b;
        const int64_t k0 = g * gs + b * kI16Block;
        const int64_t k1 = k0 + kI16Block < gend ? k0 + kI16Block : gend;
        if (k1 <= k0) {  // an empty block (only when a group is shorter than its blocks)
          ascale[m * NB + blk] = 0.f;
          asum[m * NB + blk] = 0.f;
          continue;
        }
        const uint32_t amax_bits = abs_max_bits(xr + k0, k1 - k0);
        if (amax_bits >= 0x7F800000u) return false;
        float amax;
        std::memcpy(&amax, &amax_bits, 4);
        const float inv = amax > 0.f ? 127.0f / amax : 0.f;
        ascale[m * NB + blk] = amax / 127.0f;
        int32_t sum = 0;
        for (int64_t u = k0 / 8; u < k1 / 8; ++u) {
          uint32_t even = 0, odd = 0;
          for (int j = 0; j < 8; ++j) {
            // |x * inv| <= 127 up to one rounding, so the rounded value stays in [-127, 127].
            const int32_t q = static_cast<int32_t>(std::nearbyint(load_x(xr, u * 8 + j) * inv));
            sum += q;
            (j % 2 ? odd : even) |= (static_cast<uint32_t>(q) & 0xFFu) << (8 * (j / 2));
          }
          xo[2 * u] = even;
          xo[2 * u + 1] = odd;
        }
        asum[m * NB + blk] = static_cast<float>(sum);
      }
    }
  }
  return true;
}

// 16-bit pairs summed into int32 by vpmaddwd: the int8 mode's widening multiplier.
inline constexpr int32_t kOnes16 = 0x00010001;

// Column tile t's weights and scales and the int8 activations of rows [m0, m0 + MR).
template <int MR>
struct A8Tile {
  const int32_t* qt;
  const uint16_t* sz;
  const int32_t* xr[MR];
  A8Tile(const SmallMA8Args& a, int64_t t, int64_t m0)
      : qt(a.w.qtiles + t * a.w.k_words() * kTileCols), sz(a.w.scale_zero + t * a.w.groups() * 2 * kTileCols) {
    for (int mm = 0; mm < MR; ++mm) xr[mm] = a.xa8 + (m0 + mm) * (a.w.K / 4);
  }
};

// Folds block blk's exact integer sums acc (column vectors vp0.. of the tile, rows m0..) into out:
// out += ascale * (scale * acc - scale * zero * asum), with szg the block's group of scales and zeros.
template <int MR, int NVP>
inline void a8_fold_block(const SmallMA8Args& a, const uint16_t* szg, int vp0, int64_t m0, int64_t blk,
                          const typename V::I (&acc)[MR][NVP], typename V::F (&out)[MR][NVP]) {
  using F = typename V::F;
  constexpr int L = V::L;
  const int64_t NB = blocks_i16(a.w);
  for (int v = 0; v < NVP; ++v) {
    const F scale = V::load_half(szg + (vp0 + v) * L);
    const F scale_zero = V::mul(scale, V::load_half(szg + kTileCols + (vp0 + v) * L));  // exact
    for (int mm = 0; mm < MR; ++mm) {
      const F part = V::fms(scale, V::cvt(acc[mm][v]), V::mul(scale_zero, V::bcast(a.asum + (m0 + mm) * NB + blk)));
      out[mm][v] = V::fma(V::bcast(a.ascale + (m0 + mm) * NB + blk), part, out[mm][v]);
    }
  }
}

// Rows [m0, m0 + MR) of column tile t in the int8 activation mode.
template <int MR>
void small_m_tile_a8(const SmallMA8Args& a, int64_t t, int64_t m0) {
  using F = typename V::F;
  using I = typename V::I;
  constexpr int L = V::L;
  constexpr int NV = kTileCols / L;
  const TiledWeight& w = a.w;
  const int64_t NB = blocks_i16(w);
  const A8Tile<MR> tile(a, t, m0);
  const int32_t* qt = tile.qt;
  const uint16_t* sz = tile.sz;
  const auto& xr = tile.xr;
  const I ones = V::bcasti(&kOnes16);

  F out[MR][NV];
  for (int mm = 0; mm < MR; ++mm)
    for (int v = 0; v < NV; ++v) out[mm][v] = V::zero();

  for (int64_t blk = 0; blk < NB; ++blk) {
    const auto [g, k0, k1] = block_range(w, blk);
    I acc[MR][NV];
    for (int mm = 0; mm < MR; ++mm)
      for (int v = 0; v < NV; ++v) acc[mm][v] = V::zeroi();
    for (int64_t u0 = k0 / 8; u0 < k1 / 8; u0 += kA8WidenWords) {
      const int64_t u1 = u0 + kA8WidenWords < k1 / 8 ? u0 + kA8WidenWords : k1 / 8;
      I a16[MR][NV];
      for (int mm = 0; mm < MR; ++mm)
        for (int v = 0; v < NV; ++v) a16[mm][v] = V::zeroi();
      for (int64_t u = u0; u < u1; ++u) {
        const int32_t* up = qt + u * kTileCols;
        __builtin_prefetch(up + kPrefetchInts);
        __builtin_prefetch(up + kPrefetchInts + 16);
        I xe[MR], xo[MR];
        for (int mm = 0; mm < MR; ++mm) {
          xe[mm] = V::bcasti(xr[mm] + 2 * u);
          xo[mm] = V::bcasti(xr[mm] + 2 * u + 1);
        }
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
          const I wv = V::loadi(up + v * L);
          const I lo = V::and_(wv, 0x0F0F0F0Fu);                   // values 0, 2, 4, 6: low nibble of each byte
          const I hi = V::and_(V::srli16(wv, 4), 0x0F0F0F0Fu);     // values 1, 3, 5, 7
          for (int mm = 0; mm < MR; ++mm) {
            a16[mm][v] = V::addi16(a16[mm][v], V::maddubs(lo, xe[mm]));
            a16[mm][v] = V::addi16(a16[mm][v], V::maddubs(hi, xo[mm]));
          }
        }
        // Keep GCC from hoisting several words' products ahead of their adds (it spills them otherwise).
        for (int mm = 0; mm < MR; ++mm)
          for (int v = 0; v < NV; ++v) V::keep(a16[mm][v]);
      }
      for (int mm = 0; mm < MR; ++mm)
        for (int v = 0; v < NV; ++v) acc[mm][v] = V::addi(acc[mm][v], V::madd16(a16[mm][v], ones));
    }
    a8_fold_block<MR, NV>(a, sz + g * 2 * kTileCols, 0, m0, blk, acc, out);
  }
  store_tile<MR>(out, a.y, t, w.N, m0);
}

// Many-row form of the int8 mode (prefill). Per word and column vector the tile above spends 3 decode
// instructions, shared by its MR_MAX rows, and per row 2 vpmaddubsw + 2 16-bit adds, plus 2 broadcasts per row
// shared by the tile's column vectors. Here a pass covers kA8PassCols columns for kA8Rows rows (AVX2: 4 rows x 2
// ymm = 8 16-bit accumulators, which leaves registers for the decoded nibbles and the broadcasts), so decode is
// shared by twice the rows, the full 4-word widening chunk is unrolled at compile time, and the int32 block sums
// live in memory (touched once per chunk). No software prefetch: past the first row block the tile is re-read
// from L2. Measured on Zen 3 (AVX2, 4096x4096, 2 threads): 1.10-1.16x the tile above from 8 rows up (3 rows per
// pass did as well as 4, 6-8 rows with 8 columns worse); the tile above stays ahead up to 6 rows. What is left
// is the broadcasts (a vector-pipe slot each on Zen 3) and the decode: 14 of ~50 vector instructions per word.
constexpr int kA8PassCols = 16;
constexpr int kA8Rows = 4;

template <int MR, int NVP>
__attribute__((always_inline)) inline void a8_word(const int32_t* up, const int32_t* const (&xr)[MR], int64_t u,
                                                   typename V::I (&a16)[MR][NVP]) {
  using I = typename V::I;
  constexpr int L = V::L;
  I lo[NVP], hi[NVP];
  for (int v = 0; v < NVP; ++v) {
    const I wv = V::loadi(up + v * L);
    lo[v] = V::and_(wv, 0x0F0F0F0Fu);
    hi[v] = V::and_(V::srli16(wv, 4), 0x0F0F0F0Fu);
  }
  for (int mm = 0; mm < MR; ++mm) {
    const I xe = V::bcasti(xr[mm] + 2 * u), xo = V::bcasti(xr[mm] + 2 * u + 1);
    for (int v = 0; v < NVP; ++v) {
      a16[mm][v] = V::addi16(a16[mm][v], V::maddubs(lo[v], xe));
      a16[mm][v] = V::addi16(a16[mm][v], V::maddubs(hi[v], xo));
    }
  }
  // Without this GCC regroups the 16-bit additions of the unrolled chunk into a tree and spills the products.
  for (int mm = 0; mm < MR; ++mm)
    for (int v = 0; v < NVP; ++v) V::keep(a16[mm][v]);
}

template <int MR>
void many_rows_tile_a8(const SmallMA8Args& a, int64_t t, int64_t m0) {
  using F = typename V::F;
  using I = typename V::I;
  constexpr int L = V::L;
  constexpr int NV = kTileCols / L;
  constexpr int NVP = kA8PassCols >= L ? kA8PassCols / L : 1;
  static_assert(NV % NVP == 0, "passes cover the tile");
  const TiledWeight& w = a.w;
  const int64_t NB = blocks_i16(w);
  const A8Tile<MR> tile(a, t, m0);
  const int32_t* qt = tile.qt;
  const uint16_t* sz = tile.sz;
  const auto& xr = tile.xr;

  F out[MR][NV];
  for (int p = 0; p < NV / NVP; ++p) {
    const int vp0 = p * NVP;
    F outp[MR][NVP];
    for (int mm = 0; mm < MR; ++mm)
      for (int v = 0; v < NVP; ++v) outp[mm][v] = V::zero();
    for (int64_t blk = 0; blk < NB; ++blk) {
      const auto [g, k0, k1] = block_range(w, blk);
      alignas(64) int32_t accb[MR][NVP][L > 1 ? L : 1] = {};
      for (int64_t u0 = k0 / 8; u0 < k1 / 8; u0 += kA8WidenWords) {
        const int64_t n = k1 / 8 - u0 < kA8WidenWords ? k1 / 8 - u0 : kA8WidenWords;
        I a16[MR][NVP];
        for (int mm = 0; mm < MR; ++mm)
          for (int v = 0; v < NVP; ++v) a16[mm][v] = V::zeroi();
        const int32_t* up = qt + u0 * kTileCols + vp0 * L;
        if (n == kA8WidenWords) {
#pragma GCC unroll 4
          for (int j = 0; j < kA8WidenWords; ++j) a8_word<MR, NVP>(up + j * kTileCols, xr, u0 + j, a16);
        } else {
          for (int64_t j = 0; j < n; ++j) a8_word<MR, NVP>(up + j * kTileCols, xr, u0 + j, a16);
        }
        const I ones = V::bcasti(&kOnes16);
        for (int mm = 0; mm < MR; ++mm)
          for (int v = 0; v < NVP; ++v) {
            int32_t* dst = &accb[mm][v][0];
            V::storei(dst, V::addi(V::loadi(dst), V::madd16(a16[mm][v], ones)));
          }
      }
      I acc[MR][NVP];
      for (int mm = 0; mm < MR; ++mm)
        for (int v = 0; v < NVP; ++v) acc[mm][v] = V::loadi(&accb[mm][v][0]);
      a8_fold_block<MR, NVP>(a, sz + g * 2 * kTileCols, vp0, m0, blk, acc, outp);
    }
    for (int mm = 0; mm < MR; ++mm)
      for (int v = 0; v < NVP; ++v) out[mm][vp0 + v] = outp[mm][v];
  }
  store_tile<MR>(out, a.y, t, w.N, m0);
}

// Row count from which the many-row form is used (measured as above; at 7 rows it was 7% ahead).
constexpr int64_t kA8ManyRowsFrom = 7;

inline void small_m_gemm_a8(const SmallMA8Args& a, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    if (a.M >= kA8ManyRowsFrom) {
      for (int64_t m0 = 0; m0 < a.M; m0 += kA8Rows)
        with_rows<kA8Rows>(a.M - m0 < kA8Rows ? a.M - m0 : kA8Rows, m0,
                           [&](auto mr, int64_t r0) { many_rows_tile_a8<decltype(mr)::value>(a, t, r0); });
    } else {
      for_row_blocks(a.M, [&](auto mr, int64_t m0) { small_m_tile_a8<decltype(mr)::value>(a, t, m0); });
    }
  }
}

inline bool prepare_rows_a8_any(const TiledWeight& w, KernelInput x, int64_t m0, int64_t m1, int32_t* xa8,
                                float* ascale, float* asum) {
  return with_input(x, [&](const auto* p) { return prepare_rows_a8(w, p, m0, m1, xa8, ascale, asum); });
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
  static void run(const TiledWeight& w, KernelInput x, int64_t m0, int64_t m1, float* xs, float* xsum,
                  float* row_scale) {
    with_input(x, [&](const auto* p) { prepare_rows<BITS>(w, p, m0, m1, xs, xsum, row_scale); });
  }
};
template <int BITS>
struct DequantTiles {
  static void run(const DequantArgs& a, int64_t t0, int64_t t1) { dequant_tiles_bits<BITS>(a, t0, t1); }
};

inline void prepare_rows_any(const TiledWeight& w, KernelInput x, int64_t m0, int64_t m1, float* xs, float* xsum,
                             float* row_scale) {
  dispatch_bits<PrepareRows>(w.bits, w, x, m0, m1, xs, xsum, row_scale);
}
inline void small_m_gemm_any(const SmallMArgs& a, int64_t t0, int64_t t1) {
  dispatch_bits<SmallMGemm>(a.w.bits, a, t0, t1);
}
inline void dequant_tiles_any(const DequantArgs& a, int64_t t0, int64_t t1) {
  dispatch_bits<DequantTiles>(a.w.bits, a, t0, t1);
}
template <int BITS>
struct PrepareRowsI16 {
  static void run(bool* ok, const TiledWeight& w, KernelInput x, int64_t m0, int64_t m1, int32_t* xq, float* bscale,
                  float* xsum, int32_t* res_off, int32_t* res_k, float* res_lo) {
    if constexpr (i16_bits(BITS))
      *ok = with_input(x, [&](const auto* p) {
        return prepare_rows_i16<BITS>(w, p, m0, m1, xq, bscale, xsum, res_off, res_k, res_lo);
      });
  }
};
template <int BITS>
struct SmallMGemmI16 {
  static void run(const SmallMI16Args& a, int64_t t0, int64_t t1) {
    if constexpr (i16_bits(BITS)) small_m_gemm_i16_bits<BITS>(a, t0, t1);
  }
};
inline bool prepare_rows_i16_any(const TiledWeight& w, KernelInput x, int64_t m0, int64_t m1, int32_t* xq,
                                 float* bscale, float* xsum, int32_t* res_off, int32_t* res_k, float* res_lo) {
  bool ok = false;  // bits without an integer path: the caller falls back to the float path
  dispatch_bits<PrepareRowsI16>(w.bits, &ok, w, x, m0, m1, xq, bscale, xsum, res_off, res_k, res_lo);
  return ok;
}
inline void small_m_gemm_i16_any(const SmallMI16Args& a, int64_t t0, int64_t t1) {
  dispatch_bits<SmallMGemmI16>(a.w.bits, a, t0, t1);
}
inline CpuKernels kernels() {
  return CpuKernels{&prepare_rows_any,     &small_m_gemm_any,     &dequant_tiles_any, &prepare_rows_i16_any,
                    &small_m_gemm_i16_any, &prepare_rows_a8_any, &small_m_gemm_a8};
}

}  // namespace SF_ISA_NS
}  // namespace gptq
}  // namespace slimformer
