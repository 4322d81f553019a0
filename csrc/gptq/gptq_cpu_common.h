// Helpers the GPTQ CPU kernels share (gptq_cpu_float.h, gptq_cpu_int16.h, gptq_cpu_a8.h, gptq_cpu_dequant.h):
// value extraction from the packed words, activation loading and sums, the tile store, the integer-path block
// ranges. Included per ISA (gptq_cpu_kernel.h), inside that TU's namespace SF_ISA_NS, against its vector type V
// (interface in common/simd_scalar.h).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common/cpu_kernel_util.h"
#include "gptq_cpu.h"
#include "gptq_decode.h"

namespace slimformer {
namespace gptq {
namespace SF_ISA_NS {

using cpu::SF_ISA_NS::ClearDenormalsAreZero;
using cpu::SF_ISA_NS::NoFloatEnvironmentChange;
using cpu::SF_ISA_NS::static_for;
using cpu::SF_ISA_NS::with_rows;

// The row blocks of this ISA's small-M kernels (V::MR_MAX rows in registers).
template <class Fn>
inline void for_row_blocks(int64_t M, Fn&& fn) {
  cpu::SF_ISA_NS::for_row_blocks<V::MR_MAX>(M, fn);
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

// The K range [k0, k1) of integer-path block blk (blocks of up to kI16Block values inside each group; k1 <= k0 for
// an empty block, which only occurs when a group is shorter than its blocks) and the group g it belongs to.
struct BlockRange {
  int64_t g, k0, k1;
};

// The blocks walked in order without dividing: block_range's two 64-bit divisions sit on the path from one block's
// loop to the next (the integer kernel measured ~3% faster at M=128 without them; Zen 4, int4 g128).
struct BlockCursor {
  int64_t K, gs, bpg;
  int64_t g = 0, b = 0;  // the current block's group and its index inside the group
  explicit BlockCursor(const TiledWeight& w)
      : K(w.K), gs(w.group_size < w.K ? w.group_size : w.K), bpg(i16_blocks_per_group(w)) {}
  BlockRange range() const {
    const int64_t gend = (g + 1) * gs < K ? (g + 1) * gs : K;
    const int64_t k0 = g * gs + b * kI16Block;
    return {g, k0, k0 + kI16Block < gend ? k0 + kI16Block : gend};
  }
  bool last_of_group() const { return b == bpg - 1; }
  void next() {
    if (++b == bpg) {
      b = 0;
      ++g;
    }
  }
};

// Block blk found directly (two divisions), for callers that do not walk the blocks in order.
inline BlockRange block_range(const TiledWeight& w, int64_t blk) {
  BlockCursor c(w);
  c.g = blk / c.bpg;
  c.b = blk % c.bpg;
  return c.range();
}

}  // namespace SF_ISA_NS
}  // namespace gptq
}  // namespace slimformer
