// AVX-512 F/BW/DQ/VL vector interface (16 fp32 lanes); with VNNI enabled for the including TU
// (-mavx512vnni, the avx512vnni ISA level) dpwssd is the fused vpdpwssd.
// Included like simd_scalar.h, which documents the interface and why V lives in the TU's ISA namespace.
#pragma once
#include <immintrin.h>

#include <cstdint>

#ifndef SF_ISA_NS
#error "define SF_ISA_NS (the including TU's ISA namespace) before including this header"
#endif

// A TU may define SF_SIMD_MANTISSA_EXTRACTION 0 before including this header: its kernels then convert integers to
// float instead of reading them as denormal mantissas. Intel cores take a microcode assist on every denormal operand
// (with DAZ clear, as those kernels need it): GPTQ's fp32 kernel ran 31 ms instead of 1.7 ms for one 4096x4096 int4
// layer at M=1 on an Emerald Rapids Xeon. AMD's cores multiply denormals at nearly full speed.
#ifndef SF_SIMD_MANTISSA_EXTRACTION
#define SF_SIMD_MANTISSA_EXTRACTION 1
#endif

namespace slimformer {
namespace simd {
namespace SF_ISA_NS {
struct V {
  static constexpr int L = 16;
  static constexpr int MR_MAX = 4;  // 4 rows x 2 column vectors = 8 accumulators of 32 zmm registers
  static constexpr bool kMantissaExtraction = SF_SIMD_MANTISSA_EXTRACTION != 0;
  using F = __m512;
  using I = __m512i;
  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float v) { return _mm512_set1_ps(v); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static F bcast(const float* p) { return _mm512_set1_ps(*p); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F fnma(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }
  static F fms(F a, F b, F c) { return _mm512_fmsub_ps(a, b, c); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static I loadi(const int32_t* p) { return _mm512_loadu_si512(reinterpret_cast<const __m512i*>(p)); }
  static void storei(int32_t* p, I v) { _mm512_storeu_si512(reinterpret_cast<__m512i*>(p), v); }
  static I and_(I a, uint32_t m) { return _mm512_and_si512(a, _mm512_set1_epi32(static_cast<int>(m))); }
  static I or_(I a, I b) { return _mm512_or_si512(a, b); }
  template <int S> static I srl(I a) { return _mm512_srli_epi32(a, S); }
  static F as_float(I a) { return _mm512_castsi512_ps(a); }
  static F cvt(I a) { return _mm512_cvtepi32_ps(a); }
  static F load_half(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static I zeroi() { return _mm512_setzero_si512(); }
  static I bcasti(const int32_t* p) { return _mm512_set1_epi32(*p); }
  static I addi(I a, I b) { return _mm512_add_epi32(a, b); }
  static I madd16(I a, I b) { return _mm512_madd_epi16(a, b); }
#if defined(__AVX512VNNI__)
  static I dpwssd(I acc, I a, I b) { return _mm512_dpwssd_epi32(acc, a, b); }
#else
  static I dpwssd(I acc, I a, I b) { return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b)); }
#endif
  static I maddubs(I a, I b) { return _mm512_maddubs_epi16(a, b); }
  static I addi16(I a, I b) { return _mm512_add_epi16(a, b); }
  static I srlv(I a, int s) { return _mm512_srl_epi32(a, _mm_cvtsi32_si128(s)); }
  // Shifts by a count that folds to a constant once the caller's loop is unrolled (an immediate operand).
  static I srli(I a, int s) { return _mm512_srli_epi32(a, s); }
  static I srli16(I a, int s) { return _mm512_srli_epi16(a, s); }
  // for the attention kernels (csrc/tokens): subtract, maximum, round-to-nearest float -> int32, left shift, the
  // bits of a float as an int, and the horizontal sum / maximum of the lanes
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static I round_int(F a) { return _mm512_cvtps_epi32(a); }
  template <int S> static I sll(I a) { return _mm512_slli_epi32(a, S); }
  static I as_int(F a) { return _mm512_castps_si512(a); }
  static float hsum(F a) { return _mm512_reduce_add_ps(a); }
  static float hmax(F a) { return _mm512_reduce_max_ps(a); }
  // Compiler barrier: the value must be materialized here (no instruction is emitted).
  static void keep(I& a) { asm volatile("" : "+v"(a)); }
};
}  // namespace SF_ISA_NS
}  // namespace simd
}  // namespace slimformer
