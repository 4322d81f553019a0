// AVX2 + FMA + F16C vector interface (8 fp32 lanes).
// Included like simd_scalar.h, which documents the interface and why V lives in the TU's ISA namespace.
#pragma once
#include <immintrin.h>

#include <cstdint>

#ifndef SF_ISA_NS
#error "define SF_ISA_NS (the including TU's ISA namespace) before including this header"
#endif

namespace slimformer {
namespace simd {
namespace SF_ISA_NS {
struct V {
  static constexpr int L = 8;
  static constexpr int MR_MAX = 2;  // 2 rows x 4 column vectors = 8 accumulators of 16 ymm registers
  static constexpr bool kMantissaExtraction = true;
  using F = __m256;
  using I = __m256i;
  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float v) { return _mm256_set1_ps(v); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static F bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F fnma(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }
  static F fms(F a, F b, F c) { return _mm256_fmsub_ps(a, b, c); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static I loadi(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static void storei(int32_t* p, I v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  static I and_(I a, uint32_t m) { return _mm256_and_si256(a, _mm256_set1_epi32(static_cast<int>(m))); }
  static I or_(I a, I b) { return _mm256_or_si256(a, b); }
  template <int S> static I srl(I a) { return _mm256_srli_epi32(a, S); }
  static F as_float(I a) { return _mm256_castsi256_ps(a); }
  static F cvt(I a) { return _mm256_cvtepi32_ps(a); }
  static F load_half(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static I zeroi() { return _mm256_setzero_si256(); }
  static I bcasti(const int32_t* p) { return _mm256_set1_epi32(*p); }
  static I addi(I a, I b) { return _mm256_add_epi32(a, b); }
  static I madd16(I a, I b) { return _mm256_madd_epi16(a, b); }
  static I dpwssd(I acc, I a, I b) { return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b)); }
  static I maddubs(I a, I b) { return _mm256_maddubs_epi16(a, b); }  // vpmaddubsw: unsigned a x signed b bytes
  static I addi16(I a, I b) { return _mm256_add_epi16(a, b); }
  static I srlv(I a, int s) { return _mm256_srl_epi32(a, _mm_cvtsi32_si128(s)); }
  // Shifts by a count that folds to a constant once the caller's loop is unrolled (an immediate operand).
  static I srli(I a, int s) { return _mm256_srli_epi32(a, s); }
  static I srli16(I a, int s) { return _mm256_srli_epi16(a, s); }
  // for the attention kernels (csrc/tokens): subtract, maximum, round-to-nearest float -> int32, left shift, the
  // bits of a float as an int, and the horizontal sum / maximum of the lanes
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  static I round_int(F a) { return _mm256_cvtps_epi32(a); }
  template <int S> static I sll(I a) { return _mm256_slli_epi32(a, S); }
  static I as_int(F a) { return _mm256_castps_si256(a); }
  static float hsum(F a) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
  }
  static float hmax(F a) {
    const __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 t = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(t, _mm_shuffle_ps(t, t, 1)));
  }
  // Compiler barrier: the value must be materialized here (no instruction is emitted).
  static void keep(I& a) { asm volatile("" : "+x"(a)); }
};
}  // namespace SF_ISA_NS
}  // namespace simd
}  // namespace slimformer
