// Float conversions shared by every kernel (host and device): fp16 -> float, bf16 <-> float. static: each TU keeps
// its own copy, compiled with its own ISA flags (an inline function the linker merges across the per-ISA TUs could
// run AVX-512 code on the scalar path).
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define SF_FLOAT_HD __host__ __device__
#else
#define SF_FLOAT_HD
#endif

namespace slimformer {

// IEEE fp16 bit pattern -> float, exactly (every fp16 value is a float). The portable CPU path and the CUDA kernels
// read fp16 scales through it; the SIMD paths use the F16C/AVX-512 conversion instruction, which agrees.
SF_FLOAT_HD static inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: man * 2^-24, normalized
      int e = -1;
      uint32_t m = man;
      do {
        m <<= 1;
        ++e;
      } while ((m & 0x400u) == 0);
      bits = sign | ((112u - e) << 23) | ((m & 0x3FFu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (man << 13);  // inf / NaN
  } else {
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  }
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
#endif
}

#if !defined(__CUDA_ARCH__)
// bf16 bit pattern -> float: exact, a 16-bit shift.
static inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

// float -> bf16 bit pattern, rounding to nearest even; NaN becomes the canonical quiet NaN (as c10::BFloat16 does).
static inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  __builtin_memcpy(&bits, &f, 4);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}
#endif

}  // namespace slimformer
