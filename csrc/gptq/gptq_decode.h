// Decoding of the kernel weight layout, shared by the CPU kernels and the CUDA kernels.
//
// A column's b-bit integers are stored in packing units of unit_words(b) int32 words holding unit_values(b) values.
//   b = 2, 4, 8: the Hub GPTQ bit stream itself. A unit is one word; value r sits at bits [b*r, b*r + b).
//   b = 3:       32 values in 3 words, like the Hub stream, but re-encoded at load (the Hub stream lets values 10
//                and 21 straddle words). The layout is built for the CPU integer kernel (gptq_cpu_int16.h), which
//                multiplies the same field of both 16-bit halves of a word at once:
//                  value r < 30:  word r / 10, half (r % 10) / 5, field r % 5 of that half. The five 3-bit fields
//                                 of a half start at bits 0, 3, 7, 10, 13: the lowest needs only an AND to isolate,
//                                 the highest only a 16-bit shift, and bit 6 is left spare.
//                  values 30, 31: "sliced": bit i is the spare bit of word i, bit 6 (value 30) or 22 (value 31).
//                                 Gathering the three spare bits of the words gives the "sliced word", which holds
//                                 value 30 at bits 0..2 and value 31 at bits 16..18.
//                Packing 30 values per 3 words plus 2 sliced ones keeps int3's 3 bits per value exactly.
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
// Spare bit of each 16-bit half of an int3 word (sliced values live there).
constexpr int kInt3SpareBit = 6;
// First bit of field f (0..4) of an int3 half.
SF_HD constexpr int int3_field_bit(int f) { return f < 2 ? 3 * f : 3 * f + 1; }
// True for the int3 values stored one bit per word (see above).
SF_HD constexpr bool value_sliced(int bits, int r) { return bits == 3 && r >= 30; }
// Word (inside the unit) holding value r; a sliced value is read from the unit's sliced word instead.
SF_HD constexpr int value_word(int bits, int r) {
  return bits == 3 ? (r < 30 ? r / 10 : 0) : (bits * r) >> 5;
}
// Shift of value r inside its word (for a sliced value: inside the sliced word).
SF_HD constexpr int value_shift(int bits, int r) {
  return bits != 3 ? (bits * r) & 31 : r < 30 ? 16 * ((r % 10) / 5) + int3_field_bit(r % 5) : 16 * (r - 30);
}

// SIMD kernels extract most values without shifting them down: (word & (mask << shift)) converted to float is
// q * 2^shift, exact because it is a small integer times a power of two, and the activation that multiplies it
// is prescaled by 2^-shift. That is legal only while the masked value stays below the int32 sign bit; values
// touching bit 31 are shifted down instead, and then their prescale exponent is 0.
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
// Values reaching into bits 23..31 are read from the word shifted right once by word_high_shift.
SF_HD constexpr bool value_fits_mantissa(int bits, int r) {
  return value_shift(bits, r) + bits <= 23;
}
SF_HD constexpr int word_high_shift(int bits, int w) {
  int sh = 32;
  for (int r = 0; r < unit_values(bits); ++r)
    if (!value_sliced(bits, r) && value_word(bits, r) == w && !value_fits_mantissa(bits, r) &&
        value_shift(bits, r) < sh)
      sh = value_shift(bits, r);
  return sh;
}
// Bit position of value r inside the word it is reinterpreted from.
SF_HD constexpr int value_mantissa_shift(int bits, int r) {
  return value_fits_mantissa(bits, r) ? value_shift(bits, r)
                                      : value_shift(bits, r) - word_high_shift(bits, value_word(bits, r));
}

// The sliced word of an int3 unit whose consecutive words are `word_stride` apart: bit i of each half is the spare
// bit of that half in word i.
SF_HD uint32_t int3_sliced_word(const uint32_t* unit, int64_t word_stride) {
  uint32_t t = 0;
  for (int i = 0; i < 3; ++i) t |= (unit[i * word_stride] >> (kInt3SpareBit - i)) & (0x10001u << i);
  return t;
}

// Value r of the packing unit starting at `unit`, where consecutive words of the unit are `word_stride` apart.
SF_HD uint32_t unpack_value(const uint32_t* unit, int64_t word_stride, int bits, int r) {
  const uint32_t word =
      value_sliced(bits, r) ? int3_sliced_word(unit, word_stride) : unit[value_word(bits, r) * word_stride];
  return (word >> value_shift(bits, r)) & ((1u << bits) - 1u);
}

}  // namespace gptq
}  // namespace slimformer
