// GPTQ bit-stream decoding shared by the CPU kernels and the CUDA kernels.
//
// The Hub GPTQ layout packs a column of b-bit integers into int32 words as one little-endian bit stream: value r
// of a packing unit occupies bits [b*r, b*r + b) of the unit's concatenated words. For b = 4 a unit is one word
// holding 8 values; for b = 3 a unit is 3 words holding 32 values, and values 10 and 21 straddle a word boundary
// (10 values + 1 straddling + 10 + 1 straddling + 10). b = 2 and 8 follow the same rule with one-word units.
//
// Everything here is a constexpr/inline host+device function so that one definition serves the scalar C++ path,
// the SIMD paths (which only use the offsets to build their masks and activation prescales), and the CUDA
// kernels. `slimformer::_unpack_bits` exposes unpack_value to Python so the tests check it on the CPU.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define SF_HD __host__ __device__ __forceinline__
#else
#define SF_HD static inline
#endif

namespace slimformer {
namespace gptq {

// Number of values in one packing unit (the smallest run of words that holds a whole number of values).
SF_HD constexpr int unit_values(int bits) { return bits == 3 ? 32 : 32 / bits; }
// Number of int32 words in one packing unit.
SF_HD constexpr int unit_words(int bits) { return bits == 3 ? 3 : 1; }
// First bit of value r inside its packing unit.
SF_HD constexpr int value_bit_offset(int bits, int r) { return bits * r; }
// Word (inside the unit) holding the low bits of value r.
SF_HD constexpr int value_word(int bits, int r) { return value_bit_offset(bits, r) >> 5; }
// Shift of value r inside that word.
SF_HD constexpr int value_shift(int bits, int r) { return value_bit_offset(bits, r) & 31; }
// True when value r continues into the next word.
SF_HD constexpr bool value_straddles(int bits, int r) { return value_shift(bits, r) + bits > 32; }

// SIMD kernels extract most values without shifting them down: (word & (mask << shift)) converted to float is
// q * 2^shift, exact because it is a small integer times a power of two, and the activation that multiplies it
// is prescaled by 2^-shift. That is legal only while the masked value stays below the int32 sign bit; values
// touching bit 31 or straddling words are shifted down instead, and then their prescale exponent is 0.
SF_HD constexpr bool value_extracted_in_place(int bits, int r) {
  return value_shift(bits, r) + bits < 32;
}
SF_HD constexpr int value_prescale_shift(int bits, int r) {
  return value_extracted_in_place(bits, r) ? value_shift(bits, r) : 0;
}

// "Mantissa" extraction (the SIMD GEMM kernels): a value whose bits lie inside bits 0..22 of a word, with every
// other bit cleared by one AND, is the mantissa of a denormal float, q * 2^(shift - 149), so reinterpreting the
// masked word as float needs no int->float conversion at all; the activation it multiplies is prescaled by
// 2^(149 - shift - c) so that the products land at x * q * 2^-c (normal floats; c is chosen per activation row).
// Values reaching into bits 23..31 are read from the word shifted right once by word_high_shift; values that
// straddle two words are assembled at bit 0.
SF_HD constexpr bool value_fits_mantissa(int bits, int r) {
  return !value_straddles(bits, r) && value_shift(bits, r) + bits <= 23;
}
SF_HD constexpr int word_high_shift(int bits, int w) {
  int sh = 32;
  for (int r = 0; r < unit_values(bits); ++r)
    if (value_word(bits, r) == w && !value_straddles(bits, r) && !value_fits_mantissa(bits, r) &&
        value_shift(bits, r) < sh)
      sh = value_shift(bits, r);
  return sh;
}
// Bit position of value r inside the word it is reinterpreted from.
SF_HD constexpr int value_mantissa_shift(int bits, int r) {
  return value_straddles(bits, r)       ? 0
         : value_fits_mantissa(bits, r) ? value_shift(bits, r)
                                        : value_shift(bits, r) - word_high_shift(bits, value_word(bits, r));
}

// Value r of the packing unit starting at `unit`, where consecutive words of the unit are `word_stride` apart.
SF_HD uint32_t unpack_value(const uint32_t* unit, int64_t word_stride, int bits, int r) {
  const int w = value_word(bits, r);
  const int s = value_shift(bits, r);
  uint32_t v = unit[w * word_stride] >> s;
  if (value_straddles(bits, r)) v |= unit[(w + 1) * word_stride] << (32 - s);
  return v & ((1u << bits) - 1u);
}

}  // namespace gptq
}  // namespace slimformer
