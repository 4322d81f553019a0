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

#if defined(__AVX512BF16__) && defined(__AVX512VBMI__)
// ------------------------------------------------------------ fused 2:4 + int4 x bf16 activations (small M)
// On the kernel layout (sparse24_cpu.h, Int4Kernel*): per 64-input chunk (16 groups, 32 kept values, 16 code
// bytes, 8 position bytes) the codes are never stored as values: OR-ing each 4-bit code into 0x4300 gives the bf16
// of 128 + code, exactly, and vdpbf16ps multiplies those with the activations vpermt2w picks, while a second
// vdpbf16ps with ones sums the picked activations. At the end of a quantization group sum (128 + c) x -
// (128 + zero) sum x is exactly sum (c - zero) x, which the group's scale adds into the row's total: no table, no
// conversion, no per-group setup beyond two broadcasts.
// Word i of a chunk is its kept value i (group i / 2). Its code: the split code layout puts kept values i and
// 32 + i of each 128-input block in one byte, so vpmovzxbw of the block's 32 bytes serves both chunks (the low
// nibbles, then the high ones after a shift). Its activation: 4 (i / 2) + the 2-bit column at bit 2i of the chunk's
// positions, which vpmultishiftqb brings to the word's low byte and one ternlog masks and offsets. Per chunk and row:
// 2.5 shuffles (multishift, half a vpmovzxbw, vpermt2w), 2 ternlogs, 2 vdpbf16ps; a position nibble whose first
// column is not below its second is detected with scalar bit arithmetic and reported. K must be a multiple of 128
// and group_size of 64.
struct Int4Bf16 {
  static constexpr int KC = 64;
  static constexpr int R = 4, MB = 2;
};

#ifndef SF_S24_INT4_PREFETCH_ROWS
#define SF_S24_INT4_PREFETCH_ROWS 4
#endif
constexpr int kInt4PrefetchRows = SF_S24_INT4_PREFETCH_ROWS;

// 8 chunks' position bits (a qword each) -> bit 2 of each nibble whose first column is not below its second:
// (second | 4) - first - 1 per nibble has bit 2 set exactly when second > first, and never borrows from the next
inline __m512i bad_positions(__m512i bits) {
  const __m512i m3 = _mm512_set1_epi64(0x3333333333333333ll), m4 = _mm512_set1_epi64(0x4444444444444444ll);
  const __m512i first = _mm512_and_si512(bits, m3), second = _mm512_and_si512(_mm512_srli_epi64(bits, 2), m3);
  const __m512i d = _mm512_sub_epi64(_mm512_sub_epi64(_mm512_or_si512(second, m4), first),
                                     _mm512_set1_epi64(0x1111111111111111ll));
  return _mm512_andnot_si512(d, m4);
}

template <int R, int MB>
void gemm_int4_tile(const GemmArgs& a, const Int4Args& q, const float* sc, const float* zc, int64_t n0, int64_t m0,
                    int) {
  const int64_t K = a.K, KB = (K + 7) / 8, G = q.groups, chunks_per_group = q.group_size / 64;
  // word i: the 2-bit column at bit 2i of the chunk's positions; base 4 (i / 2)
  const __m512i ctrl = _mm512_set_epi16(62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32, 30, 28, 26,
                                        24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i base = _mm512_set_epi16(60, 60, 56, 56, 52, 52, 48, 48, 44, 44, 40, 40, 36, 36, 32, 32, 28, 28, 24,
                                        24, 20, 20, 16, 16, 12, 12, 8, 8, 4, 4, 0, 0);
  const __m512i three = _mm512_set1_epi16(3), low4 = _mm512_set1_epi16(0xF), b128 = _mm512_set1_epi16(0x4300);
  const __m512i ones = _mm512_set1_epi16(0x3F80);  // bf16 1.0
  const uint16_t* xrow = a.xb + m0 * K;
  const uint8_t* crow[R];
  const uint8_t* prow[R];
  for (int r = 0; r < R; ++r) {
    crow[r] = q.qvalues + (n0 + r) * (K / 4);
    prow[r] = q.positions + (n0 + r) * KB;
  }
  __m512 total[R][MB];
  for (int r = 0; r < R; ++r)
    for (int mb = 0; mb < MB; ++mb) total[r][mb] = _mm512_setzero_ps();
  const int64_t pairs_per_group = chunks_per_group / 2;
  int64_t c = 0;  // chunk index (two per pair)
  for (int64_t g = 0; g < G; ++g) {
    __m512 acc[R][MB], sum[R][MB];
    for (int r = 0; r < R; ++r)
      for (int mb = 0; mb < MB; ++mb) acc[r][mb] = sum[r][mb] = _mm512_setzero_ps();
    for (int64_t pe = c + 2 * pairs_per_group; c < pe; c += 2) {
      if constexpr (kInt4PrefetchRows > 0) {
        // the rows kInt4PrefetchRows ahead at this pair (each row starts a new stream, which the hardware
        // prefetchers pick up late): a code line every 2 pairs, a position line every 4
        if ((c & 3) == 0)
          for (int r = 0; r < R; ++r) __builtin_prefetch(crow[r] + kInt4PrefetchRows * (K / 4) + c * 16);
        if ((c & 7) == 0)
          for (int r = 0; r < R; ++r) __builtin_prefetch(prow[r] + kInt4PrefetchRows * KB + c * 8);
      }
      __m512i xlo[2][MB], xhi[2][MB];
      for (int h = 0; h < 2; ++h)
        for (int mb = 0; mb < MB; ++mb) {
          xlo[h][mb] = _mm512_loadu_si512(xrow + mb * K + (c + h) * 64);
          xhi[h][mb] = _mm512_loadu_si512(xrow + mb * K + (c + h) * 64 + 32);
        }
      for (int r = 0; r < R; ++r) {
        const __m512i codes =
            _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(crow[r] + c * 16)));
        for (int h = 0; h < 2; ++h) {
          // broadcast from memory (a load-port operation), not from a scalar register
          const __m512i nib = _mm512_multishift_epi64_epi8(
              ctrl, _mm512_broadcastq_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(prow[r] + (c + h) * 8))));
          const __m512i idx = _mm512_ternarylogic_epi32(nib, three, base, 0xEA);  // (nib & 3) | base
          const __m512i val = h == 0 ? _mm512_ternarylogic_epi32(codes, low4, b128, 0xEA)  // (byte & 15) | 0x4300
                                     : _mm512_or_si512(_mm512_srli_epi16(codes, 4), b128);
          for (int mb = 0; mb < MB; ++mb) {
            const __m512i picked = _mm512_permutex2var_epi16(xlo[h][mb], idx, xhi[h][mb]);
            acc[r][mb] = _mm512_dpbf16_ps(acc[r][mb], (__m512bh)val, (__m512bh)picked);
            sum[r][mb] = _mm512_dpbf16_ps(sum[r][mb], (__m512bh)ones, (__m512bh)picked);
          }
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m512 s = _mm512_set1_ps(sc[r * G + g]), z = _mm512_set1_ps(zc[r * G + g]);
      for (int mb = 0; mb < MB; ++mb)
        total[r][mb] = _mm512_fmadd_ps(s, _mm512_fnmadd_ps(z, sum[r][mb], acc[r][mb]), total[r][mb]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int mb = 0; mb < MB; ++mb) a.y[(m0 + mb) * a.N + n0 + r] = _mm512_reduce_add_ps(total[r][mb]);
}

// rows' scales as fp32 and 128 + zero, for the broadcasts at each group's end
inline void int4_group_constants(const Int4Args& q, int64_t n, int rows, float* sc, float* zc) {
  const int64_t G = q.groups;
  for (int r = 0; r < rows; ++r) {
    const int64_t i0 = (n + r) * G;
    for (int64_t g = 0; g < G; g += 16) {
      const __mmask16 m = static_cast<__mmask16>(G - g >= 16 ? 0xFFFF : (1u << (G - g)) - 1);
      __m512 s;
      if (q.scale_type == ScaleType::kHalf)
        s = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(q.scales) + i0 + g));
      else if (q.scale_type == ScaleType::kBFloat16)
        s = _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(q.scales) + i0 + g)), 16));
      else
        s = _mm512_maskz_loadu_ps(m, static_cast<const float*>(q.scales) + i0 + g);
      _mm512_mask_storeu_ps(sc + r * G + g, m, s);
      const __m512 z = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, q.zeros + i0 + g)));
      _mm512_mask_storeu_ps(zc + r * G + g, m, _mm512_add_ps(z, _mm512_set1_ps(128.f)));
    }
  }
}

inline bool gemm_int4_bf16(const GemmArgs& a, const Int4Args& q, int64_t n0, int64_t n1) {
  constexpr int R = Int4Bf16::R;
  if (q.groups > kInt4MaxGroups || a.K % 128 || q.group_size % 128) return false;  // the glue never sends these
  alignas(64) float sc[R * kInt4MaxGroups], zc[R * kInt4MaxGroups];
  __m512i bad = _mm512_setzero_si512();
  for (int64_t n = n0; n < n1;) {
    const int rows = n + R <= n1 ? R : 1;
    int4_group_constants(q, n, rows, sc, zc);
    // the rows' position nibbles checked first (a read that hits L1 again in the tile), not in the tile's loop
    const int64_t KB = (a.K + 7) / 8;  // a multiple of 16 bytes: K is a multiple of 128
    for (const uint8_t *p = q.positions + n * KB, *pe = p + rows * KB; p < pe; p += 64) {
      const __mmask8 left = static_cast<__mmask8>(pe - p >= 64 ? 0xFF : (1u << ((pe - p) / 8)) - 1);
      bad = _mm512_or_si512(bad, bad_positions(_mm512_maskz_loadu_epi64(left, p)));
    }
    if (rows == R)
      cpu::SF_ISA_NS::for_row_blocks<Int4Bf16::MB>(a.M, [&](auto mb, int64_t m0) {
        gemm_int4_tile<R, decltype(mb)::value>(a, q, sc, zc, n, m0, 0);
      });
    else
      cpu::SF_ISA_NS::for_row_blocks<Int4Bf16::MB>(a.M, [&](auto mb, int64_t m0) {
        gemm_int4_tile<1, decltype(mb)::value>(a, q, sc, zc, n, m0, 0);
      });
    n += rows;
  }
  return _mm512_test_epi64_mask(bad, bad) == 0;
}
#endif

inline void dequant_int4(const Int4Args& q, int64_t n0, int64_t n1, void* out, bool out_bf16) {
  if (out_bf16)
    dequant_rows<true>(q, n0, n1, out);
  else
    dequant_rows<false>(q, n0, n1, out);
}

}  // namespace SF_ISA_NS
}  // namespace sparse24
}  // namespace slimformer
