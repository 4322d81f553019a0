// 2:4 + int4 on the CPU: dequantization of a block of rows' kept values (sparse24_cpu.h, Int4Args), included by
// sparse24_cpu_kernel.h inside each per-ISA TU. The GEMM itself is the 2:4 kernel of that header run over the
// dequantized rows: the glue (sparse24_cpu_ops.cpp) dequantizes a few rows into a buffer that stays in L2 and runs
// the sparse kernel on them, so every ISA path and both routes (small M, decompressed tiles for large M) serve
// 2:4 + int4 with the code that serves 2:4, and the weight is read from memory once, at 0.28 bytes a weight.
//
// Per quantization group of a row, the 16 possible values (c - zero) * scale (c = 0..15) form a table: one vector
// subtract and multiply per group (group_size / 2 kept values), then every kept value is one table lookup by its
// code. AVX-512: the codes of 16 kept values (8 bytes) go to the 16 dword lanes shifted by 4 * lane (vpermd +
// vpsrlvd) and vpermps reads the table with the low 4 bits; at the avx512bf16 level the table is rounded to bf16
// once and 32 codes (16 bytes) become words by vpmovzxwq + vpmultishiftqb, looked up by vpermw (whose 5-bit index
// also sees the next code's low bit: the 16-entry table is stored twice). AVX2: shift, mask, convert, subtract,
// multiply, 8 values at a time. Remainders (a group whose size is not a multiple of the vector) run the scalar form.
#pragma once
#include <cstring>

#include "common/float_convert.h"
#include "sparse24/sparse24_cpu.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace slimformer {
namespace sparse24 {
namespace SF_ISA_NS {

inline float int4_scale(const Int4Args& q, int64_t i) {
  switch (q.scale_type) {
    case ScaleType::kFloat:
      return static_cast<const float*>(q.scales)[i];
    case ScaleType::kBFloat16:
      return bf16_to_float(static_cast<const uint16_t*>(q.scales)[i]);
    default:
      return half_to_float(static_cast<const uint16_t*>(q.scales)[i]);
  }
}

// kept values [j0, j1) of one row (j0 even), scalar
template <bool OBF16>
inline void dequant_span_scalar(const uint8_t* codes, int64_t j0, int64_t j1, float zero, float scale, void* out) {
  for (int64_t j = j0; j < j1; ++j) {
    const int c = codes[j / 2] >> (4 * (j & 1)) & 15;
    const float v = (static_cast<float>(c) - zero) * scale;
    if constexpr (OBF16)
      static_cast<uint16_t*>(out)[j] = float_to_bf16(v);
    else
      static_cast<float*>(out)[j] = v;
  }
}

template <bool OBF16>
inline void dequant_span(const uint8_t* codes, int64_t j0, int64_t j1, float zero, float scale, void* out) {
  int64_t j = j0;
#if defined(__AVX512F__)
  const __m512 table = _mm512_mul_ps(
      _mm512_sub_ps(_mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_ps(zero)),
      _mm512_set1_ps(scale));
  if constexpr (OBF16) {
#if defined(__AVX512BF16__) && defined(__AVX512VBMI__)
    const __m256i t16 = (__m256i)_mm512_cvtneps_pbh(table);
    const __m512i t32 = _mm512_inserti64x4(_mm512_castsi256_si512(t16), t16, 1);
    // word k of each qword (4 codes) takes bits 4k..4k+7 of it
    const __m512i ctrl = _mm512_set1_epi64(0x0C0C080804040000ll);
    uint16_t* o = static_cast<uint16_t*>(out);
    for (; j + 32 <= j1; j += 32) {
      const __m512i w = _mm512_cvtepu16_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + j / 2)));
      _mm512_storeu_si512(o + j, _mm512_permutexvar_epi16(_mm512_multishift_epi64_epi8(ctrl, w), t32));
    }
#endif
  } else {
    const __m512i halves = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m512i shifts = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
    float* o = static_cast<float*>(out);
    for (; j + 16 <= j1; j += 16) {
      long long bits;
      std::memcpy(&bits, codes + j / 2, 8);
      const __m512i idx = _mm512_srlv_epi32(_mm512_permutexvar_epi32(halves, _mm512_set1_epi64(bits)), shifts);
      _mm512_storeu_ps(o + j, _mm512_permutexvar_ps(idx, table));
    }
  }
#elif defined(__AVX2__)
  if constexpr (!OBF16) {
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    const __m256 z = _mm256_set1_ps(zero), s = _mm256_set1_ps(scale);
    float* o = static_cast<float*>(out);
    for (; j + 8 <= j1; j += 8) {
      int bits;
      std::memcpy(&bits, codes + j / 2, 4);
      const __m256i c = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(bits), shifts), _mm256_set1_epi32(15));
      _mm256_storeu_ps(o + j, _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(c), z), s));
    }
  }
#endif
  dequant_span_scalar<OBF16>(codes, j, j1, zero, scale, out);
}

template <bool OBF16>
void dequant_rows(const Int4Args& q, int64_t n0, int64_t n1, void* out) {
  const int64_t KV = q.K / 2, gk = q.group_size / 2;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* codes = q.qvalues + n * (q.K / 4);
    void* o = static_cast<uint8_t*>(out) + (n - n0) * KV * (OBF16 ? 2 : 4);
    for (int64_t g = 0; g < q.groups; ++g) {
      const int64_t j0 = g * gk, j1 = j0 + gk < KV ? j0 + gk : KV;
      dequant_span<OBF16>(codes, j0, j1, static_cast<float>(q.zeros[n * q.groups + g]),
                          int4_scale(q, n * q.groups + g), o);
    }
  }
}

inline void dequant_int4(const Int4Args& q, int64_t n0, int64_t n1, void* out, bool out_bf16) {
  if (out_bf16)
    dequant_rows<true>(q, n0, n1, out);
  else
    dequant_rows<false>(q, n0, n1, out);
}

}  // namespace SF_ISA_NS
}  // namespace sparse24
}  // namespace slimformer
