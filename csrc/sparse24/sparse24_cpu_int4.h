// 2:4 + int4 on the CPU, on the kernel layout (sparse24_cpu.h: tiles of 4 rows x 128-input blocks, codes then
// positions), included by sparse24_cpu_kernel.h inside each per-ISA TU.
//
// unpack_int4: any ISA, any shape. A few rows at a time, the kept values are dequantized into a buffer that stays
// in L2 and the positions become a bitmask; the glue (sparse24_cpu_ops.cpp) then runs the 2:4 kernels of
// sparse24_cpu_kernel.h on them (small M) or decompresses tiles for the dense GEMM (large M). Per quantization
// group of a row, the 16 possible values (c - zero) * scale form a table (one vector subtract and multiply); each
// kept value is one lookup by its code (AVX-512: vpermps on 16 codes zero-extended from bytes; bf16 at the
// avx512bf16 level: the table rounded to bf16 once, vpermw on 32 codes; AVX2: convert, subtract, multiply).
//
// gemm_int4_bf16 (avx512bf16, bf16 activations, small M): the codes never become stored values. Per 64-input chunk
// (16 groups, 32 kept values) word i is the chunk's kept value i (group i / 2):
// * its activation: the 2-bit column at bit 2i of the chunk's 8 position bytes, which vpmultishiftqb moves to the
//   word's low byte and one ternlog masks and offsets by 4 (i / 2); vpermt2w picks it out of the chunk's 64 bf16
//   activations;
// * its value: vpmovzxbw of a row's 32 code bytes of the block serves both chunks (low nibbles, then high ones);
//   symmetric tiles (every zero point 8) look up bf16(code - 8) with vpermw (the 16-entry table stored twice, since
//   the index's bit 4 is the next code's low bit), and vdpbf16ps multiplies; otherwise the code OR-ed into 0x4300 is
//   the bf16 of 128 + code, exactly, and a second vdpbf16ps with ones sums the picked activations, so that at the
//   group's end sum (128 + c) x - (128 + zero) sum x = sum (c - zero) x;
// * the group's scale then adds the group's sum into the row's total (fp32).
// Per chunk and row: 3 shuffles (multishift, vpermt2w, vpermw) + half a vpmovzxbw, a ternlog, one vdpbf16ps
// (symmetric). A tile is one sequential stream (its 4 rows' codes and positions side by side), prefetched a few
// blocks ahead; the position nibbles are checked (first column below the second) once per block, 4 rows at a time.
#pragma once
#include <algorithm>
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

// A position byte (the nibbles of groups 2k, 2k + 1) -> the bitmask byte of those groups, 0 when a nibble is not two
// distinct columns in order (no valid bitmask byte is 0).
struct MaskOfPositions {
  uint8_t v[256];
  constexpr MaskOfPositions() : v() {
    for (int b = 0; b < 256; ++b) {
      int out = 0;
      bool good = true;
      for (int h = 0; h < 2; ++h) {
        const int nib = b >> (4 * h) & 15, first = nib & 3, second = nib >> 2;
        good = good && first < second;
        out |= ((1 << first) | (1 << second)) << (4 * h);
      }
      v[b] = good ? static_cast<uint8_t>(out) : 0;
    }
  }
};
inline constexpr MaskOfPositions kMaskOfPositions{};
struct MaskOfNibble {  // the same for one nibble
  alignas(16) uint8_t v[16];
  constexpr MaskOfNibble() : v() {
    for (int nib = 0; nib < 16; ++nib)
      v[nib] = (nib & 3) < (nib >> 2) ? static_cast<uint8_t>((1 << (nib & 3)) | (1 << (nib >> 2))) : 0;
  }
};
inline constexpr MaskOfNibble kMaskOfNibble{};

// Kept values [j0, j1) of one row (one quantization group), whose codes are at `codes` (the row's 32 bytes in its
// tile's first block; block b's at + 192 b): kept value j is half-block j / 32, byte j % 32, the low nibble in even
// half-blocks and the high one in odd ones.
template <bool OBF16>
inline void dequant_group(const uint8_t* codes, int64_t j0, int64_t j1, float zero, float scale, void* out) {
#if defined(__AVX512F__)
  const __m512 table = _mm512_mul_ps(
      _mm512_sub_ps(_mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_ps(zero)),
      _mm512_set1_ps(scale));
#if defined(__AVX512BF16__) && defined(__AVX512VBMI__)
  const __m256i t16 = (__m256i)_mm512_cvtneps_pbh(table);
  const __m512i t32 = _mm512_inserti64x4(_mm512_castsi256_si512(t16), t16, 1);
#endif
#elif defined(__AVX2__)
  const __m256 z8 = _mm256_set1_ps(zero), s8 = _mm256_set1_ps(scale);
#endif
  for (int64_t j = j0; j < j1;) {
    const int64_t hb = j >> 5, e = std::min(j1, (hb + 1) << 5);
    const uint8_t* bytes = codes + (hb >> 1) * kTileBlockBytes - (hb << 5);  // bytes[j] is kept value j's byte
    const int shift = (hb & 1) * 4;
#if defined(__AVX512F__)
    if constexpr (OBF16) {
#if defined(__AVX512BF16__) && defined(__AVX512VBMI__)
      if (j == hb << 5 && e - j == 32) {  // a whole half-block
        const __m512i c = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes + j)));
        // vpermw reads 5 index bits: the table is stored twice, so the high nibble's bit 0 does not matter
        _mm512_storeu_si512(static_cast<uint16_t*>(out) + j,
                            _mm512_permutexvar_epi16(shift ? _mm512_srli_epi16(c, 4) : c, t32));
        j = e;
      }
#endif
    } else {
      for (; j + 16 <= e; j += 16) {
        const __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes + j)));
        _mm512_storeu_ps(static_cast<float*>(out) + j, _mm512_permutexvar_ps(_mm512_srli_epi32(c, shift), table));
      }
    }
#elif defined(__AVX2__)
    if constexpr (!OBF16)
      for (; j + 8 <= e; j += 8) {
        long long b8;
        std::memcpy(&b8, bytes + j, 8);
        const __m256i c = _mm256_and_si256(_mm256_srli_epi32(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(b8)), shift),
                                           _mm256_set1_epi32(15));
        _mm256_storeu_ps(static_cast<float*>(out) + j, _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(c), z8), s8));
      }
#endif
    for (; j < e; ++j) {
      const float v = (static_cast<float>(bytes[j] >> shift & 15) - zero) * scale;
      if constexpr (OBF16)
        static_cast<uint16_t*>(out)[j] = float_to_bf16(v);
      else
        static_cast<float*>(out)[j] = v;
    }
  }
}

template <bool OBF16>
bool unpack_rows(const Int4Args& q, int64_t n0, int64_t n1, void* values, uint8_t* bitmask) {
  const int64_t K = q.K, KV = K / 2, KB = (K + 7) / 8, gk = q.group_size / 2, TB = tile_bytes(K);
  bool ok = true;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* tile = q.tiles + (n / kTileRows) * TB;
    const int64_t r = n % kTileRows;
    void* out = static_cast<uint8_t*>(values) + (n - n0) * KV * (OBF16 ? 2 : 4);
    for (int64_t g = 0; g < q.groups; ++g)
      dequant_group<OBF16>(tile + r * 32, g * gk, std::min((g + 1) * gk, KV),
                           static_cast<float>(q.zeros[n * q.groups + g]), int4_scale(q, n * q.groups + g), out);
    // bitmask: a position byte (2 groups) is a bitmask byte, by table (0: a nibble not a pair in order)
    uint8_t* mrow = bitmask + (n - n0) * KB;
    bool zero = false;
    int64_t k = 0;
#if defined(__AVX2__) || defined(__AVX512F__)
    // 16 position bytes (a block) at a time: each nibble's mask by vpshufb from a 16-entry table (0 where the
    // nibble is not a pair in order)
    const __m128i table = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kMaskOfNibble.v));
    __m128i zeros = _mm_setzero_si128();
    for (; k + 16 <= KB; k += 16) {
      const __m128i p = _mm_loadu_si128(reinterpret_cast<const __m128i*>(tile + (k / 16) * kTileBlockBytes + 128 + r * 16));
      const __m128i lo = _mm_shuffle_epi8(table, _mm_and_si128(p, _mm_set1_epi8(15)));
      const __m128i hi = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(p, 4), _mm_set1_epi8(15)));
      zeros = _mm_or_si128(zeros, _mm_or_si128(_mm_cmpeq_epi8(lo, _mm_setzero_si128()),
                                               _mm_cmpeq_epi8(hi, _mm_setzero_si128())));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(mrow + k), _mm_or_si128(lo, _mm_slli_epi16(hi, 4)));
    }
    zero = _mm_movemask_epi8(zeros) != 0;
#endif
    for (; k < KB; ++k) {
      const uint8_t m = kMaskOfPositions.v[tile[(k / 16) * kTileBlockBytes + 128 + r * 16 + k % 16]];
      zero |= m == 0;
      mrow[k] = m;
    }
    ok &= !zero;
    if (K % 8) mrow[KB - 1] &= 0x0F;  // the padding group past K
  }
  return ok;
}

inline bool unpack_int4(const Int4Args& q, int64_t n0, int64_t n1, void* values, bool values_bf16, uint8_t* bitmask) {
  return values_bf16 ? unpack_rows<true>(q, n0, n1, values, bitmask) : unpack_rows<false>(q, n0, n1, values, bitmask);
}

#if defined(__AVX512F__)
#ifndef SF_S24_INT4_PREFETCH_BLOCKS
#define SF_S24_INT4_PREFETCH_BLOCKS 8
#endif
constexpr int kInt4PrefetchBlocks = SF_S24_INT4_PREFETCH_BLOCKS;
// 8 qwords of position nibbles -> bit 2 of every nibble whose first column is not below its second: (second | 4)
// - first - 1 has bit 2 set exactly when second > first, and never borrows across nibbles
inline __m512i bad_positions(__m512i bits) {
  const __m512i m3 = _mm512_set1_epi64(0x3333333333333333ll), m4 = _mm512_set1_epi64(0x4444444444444444ll);
  const __m512i first = _mm512_and_si512(bits, m3), second = _mm512_and_si512(_mm512_srli_epi64(bits, 2), m3);
  const __m512i d = _mm512_sub_epi64(_mm512_sub_epi64(_mm512_or_si512(second, m4), first),
                                     _mm512_set1_epi64(0x1111111111111111ll));
  return _mm512_andnot_si512(d, m4);
}

// The tile's scales as fp32 and 128 + zero (rows past N: 0); whether every zero point is 8.
inline bool int4_tile_constants(const Int4Args& q, int64_t n0, float* sc, float* zc) {
  const int64_t G = q.groups;
  __mmask16 asym = 0;
  for (int r = 0; r < kTileRows; ++r) {
    if (n0 + r >= q.N) {
      for (int64_t g = 0; g < G; ++g) sc[r * G + g] = zc[r * G + g] = 0.f;
      continue;
    }
    const int64_t i0 = (n0 + r) * G;
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
      const __m512i z = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, q.zeros + i0 + g));
      asym |= _mm512_mask_cmpneq_epi32_mask(m, z, _mm512_set1_epi32(8));
      _mm512_mask_storeu_ps(zc + r * G + g, m, _mm512_add_ps(_mm512_cvtepi32_ps(z), _mm512_set1_ps(128.f)));
    }
  }
  return asym == 0;
}

// ------------------------------------------------------------------ the fused fp32 kernel (any AVX-512 level)
// fp32 activations: per 32-input sub-chunk (8 groups, 16 kept values) the dword index of kept value i is the 2-bit
// field at bit 2i of the sub-chunk's 4 position bytes (vpsrlvd + ternlog, + 4 (i / 2)), vpermt2ps picks the
// activations out of 32, and the values come from a per-row table of the group's 16 values (c - zero) * scale
// (vpermps on the codes, zero-extended from bytes): exactly the fp32 values of the reference, with no fold at the
// group's end. Sub-chunk s of a block reads the codes of kept values 16 s .. 16 s + 15: bytes 16 (s % 2) .. of the
// row's 32, the high nibbles for s >= 2. Needs K and group_size multiples of 32.
template <int MB>
void gemm_int4_f32_tile(const GemmArgs& a, const Int4Args& q, const uint8_t* tile, const float* sc, const float* zc,
                        int64_t n0, int64_t m0, __m512i& bad) {
  constexpr int R = kTileRows;
  const int64_t K = a.K, G = q.groups, subs = K / 32, subs_per_group = q.group_size / 32;
  const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i base = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
  const __m512i three = _mm512_set1_epi32(3);
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const float* xrow = a.x + m0 * K;
  __m512 acc[R][MB], table[R];
  for (int r = 0; r < R; ++r)
    for (int mb = 0; mb < MB; ++mb) acc[r][mb] = _mm512_setzero_ps();
  for (int64_t sub = 0; sub < subs; ++sub) {
    const uint8_t* blk = tile + (sub / 4) * kTileBlockBytes;
    const int s = static_cast<int>(sub % 4);
    if (s == 0) {
      if constexpr (kInt4PrefetchBlocks > 0)
        for (int l = 0; l < 3; ++l) __builtin_prefetch(blk + kInt4PrefetchBlocks * kTileBlockBytes + 64 * l);
      if (m0 == 0) bad = _mm512_or_si512(bad, bad_positions(_mm512_loadu_si512(blk + 128)));
    }
    if (sub % subs_per_group == 0) {  // a new group: each row's table of (c - zero) * scale
      const int64_t g = sub / subs_per_group;
      for (int r = 0; r < R; ++r)
        table[r] = _mm512_mul_ps(_mm512_sub_ps(iota, _mm512_set1_ps(zc[r * G + g] - 128.f)),
                                 _mm512_set1_ps(sc[r * G + g]));
    }
    __m512 xlo[MB], xhi[MB];
    for (int mb = 0; mb < MB; ++mb) {
      xlo[mb] = _mm512_loadu_ps(xrow + mb * K + sub * 32);
      xhi[mb] = _mm512_loadu_ps(xrow + mb * K + sub * 32 + 16);
    }
    for (int r = 0; r < R; ++r) {
      uint32_t bits;
      std::memcpy(&bits, blk + 128 + 16 * r + 4 * s, 4);
      const __m512i idx = _mm512_ternarylogic_epi32(
          _mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(bits)), shifts), three, base, 0xEA);  // (f & 3) | base
      const __m512i codes = _mm512_cvtepu8_epi32(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 32 * r + 16 * (s % 2))));
      const __m512 val = _mm512_permutexvar_ps(s >= 2 ? _mm512_srli_epi32(codes, 4) : codes, table[r]);
      for (int mb = 0; mb < MB; ++mb)
        acc[r][mb] = _mm512_fmadd_ps(val, _mm512_permutex2var_ps(xlo[mb], idx, xhi[mb]), acc[r][mb]);
    }
  }
  for (int r = 0; r < R && n0 + r < a.N; ++r)
    for (int mb = 0; mb < MB; ++mb) a.y[(m0 + mb) * a.N + n0 + r] = _mm512_reduce_add_ps(acc[r][mb]);
}

inline bool gemm_int4_f32(const GemmArgs& a, const Int4Args& q, int64_t t0, int64_t t1) {
  if (q.groups > kInt4MaxGroups || q.group_size % 32 || a.K % 32) return false;  // the glue never sends these
  alignas(64) float sc[kTileRows * kInt4MaxGroups], zc[kTileRows * kInt4MaxGroups];
  __m512i bad = _mm512_setzero_si512();
  const int64_t TB = tile_bytes(a.K);
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n0 = t * kTileRows;
    int4_tile_constants(q, n0, sc, zc);
    cpu::SF_ISA_NS::for_row_blocks<2>(a.M, [&](auto mb, int64_t m0) {
      gemm_int4_f32_tile<decltype(mb)::value>(a, q, q.tiles + t * TB, sc, zc, n0, m0, bad);
    });
  }
  return _mm512_test_epi64_mask(bad, bad) == 0;
}
#endif

#if defined(__AVX512BF16__) && defined(__AVX512VBMI__)
// ------------------------------------------------------------------------- the fused kernel (see the top)
constexpr int kInt4MB = 2;  // activation rows sharing each decoded chunk

// One tile (rows n0 .. n0 + 3; outputs stored for rows < N) against activation rows [m0, m0 + MB).
template <int MB, bool kSym>
void gemm_int4_tile(const GemmArgs& a, const Int4Args& q, const uint8_t* tile, const float* sc, const float* zc,
                    int64_t n0, int64_t m0, __m512i& bad) {
  constexpr int R = kTileRows;
  const int64_t K = a.K, G = q.groups, blocks = (K + kTileBlock - 1) / kTileBlock, chunks_per_group = q.group_size / 64;
  // word i: the 2-bit column at bit 2i of the chunk's positions; base 4 (i / 2)
  const __m512i ctrl = _mm512_set_epi16(62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32, 30, 28, 26,
                                        24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i base = _mm512_set_epi16(60, 60, 56, 56, 52, 52, 48, 48, 44, 44, 40, 40, 36, 36, 32, 32, 28, 28, 24,
                                        24, 20, 20, 16, 16, 12, 12, 8, 8, 4, 4, 0, 0);
  const __m512i three = _mm512_set1_epi16(3);
  // symmetric: bf16(code - 8) for codes 0-15, twice; otherwise 0x4300 | code and the sums of the picked activations
  const __m512i lut = _mm512_set_epi16(
      0x40E0, 0x40C0, 0x40A0, 0x4080, 0x4040, 0x4000, 0x3F80, 0, -16512, -16384, -16320, -16256, -16224, -16192,
      -16160, -16128, 0x40E0, 0x40C0, 0x40A0, 0x4080, 0x4040, 0x4000, 0x3F80, 0, -16512, -16384, -16320, -16256,
      -16224, -16192, -16160, -16128);
  const __m512i low4 = _mm512_set1_epi16(0xF), b128 = _mm512_set1_epi16(0x4300), ones = _mm512_set1_epi16(0x3F80);
  const uint16_t* xrow = a.xb + m0 * K;
  __m512 total[R][MB];
  for (int r = 0; r < R; ++r)
    for (int mb = 0; mb < MB; ++mb) total[r][mb] = _mm512_setzero_ps();
  __m512 acc[R][MB], sum[R][MB];
  for (int r = 0; r < R; ++r)
    for (int mb = 0; mb < MB; ++mb) acc[r][mb] = sum[r][mb] = _mm512_setzero_ps();
  // a chunk is 64 inputs; the group of chunk c is c / chunks_per_group
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* blk = tile + b * kTileBlockBytes;
    if constexpr (kInt4PrefetchBlocks > 0)
      for (int l = 0; l < 3; ++l) __builtin_prefetch(blk + kInt4PrefetchBlocks * kTileBlockBytes + 64 * l);
    if (m0 == 0) bad = _mm512_or_si512(bad, bad_positions(_mm512_loadu_si512(blk + 128)));
    const int halves = 2 * b + 1 < K / 64 || K % 128 == 0 ? 2 : 1;  // the last block may hold one chunk
    __m512i codes[R];
    for (int r = 0; r < R; ++r)
      codes[r] = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 32 * r)));
    for (int h = 0; h < halves; ++h) {
      const int64_t c = 2 * b + h;
      __m512i xlo[MB], xhi[MB];
      for (int mb = 0; mb < MB; ++mb) {
        xlo[mb] = _mm512_loadu_si512(xrow + mb * K + c * 64);
        xhi[mb] = _mm512_loadu_si512(xrow + mb * K + c * 64 + 32);
      }
      for (int r = 0; r < R; ++r) {
        // broadcast from memory (a load-port operation), not from a scalar register
        const __m512i nib = _mm512_multishift_epi64_epi8(
            ctrl, _mm512_broadcastq_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 128 + 16 * r + 8 * h))));
        const __m512i idx = _mm512_ternarylogic_epi32(nib, three, base, 0xEA);  // (nib & 3) | base
        const __m512i cw = h == 0 ? codes[r] : _mm512_srli_epi16(codes[r], 4);
        __m512i val;
        if constexpr (kSym)
          val = _mm512_permutexvar_epi16(cw, lut);
        else
          val = _mm512_ternarylogic_epi32(cw, low4, b128, 0xEA);  // (code & 15) | 0x4300
        for (int mb = 0; mb < MB; ++mb) {
          const __m512i picked = _mm512_permutex2var_epi16(xlo[mb], idx, xhi[mb]);
          acc[r][mb] = _mm512_dpbf16_ps(acc[r][mb], (__m512bh)val, (__m512bh)picked);
          if constexpr (!kSym) sum[r][mb] = _mm512_dpbf16_ps(sum[r][mb], (__m512bh)ones, (__m512bh)picked);
        }
      }
      if ((c + 1) % chunks_per_group == 0 || c + 1 == (K + 63) / 64) {  // the group's end: scale into the totals
        const int64_t g = c / chunks_per_group;
        for (int r = 0; r < R; ++r) {
          const __m512 s = _mm512_set1_ps(sc[r * G + g]);
          for (int mb = 0; mb < MB; ++mb) {
            if constexpr (kSym) {
              total[r][mb] = _mm512_fmadd_ps(s, acc[r][mb], total[r][mb]);
            } else {
              const __m512 z = _mm512_set1_ps(zc[r * G + g]);
              total[r][mb] = _mm512_fmadd_ps(s, _mm512_fnmadd_ps(z, sum[r][mb], acc[r][mb]), total[r][mb]);
              sum[r][mb] = _mm512_setzero_ps();
            }
            acc[r][mb] = _mm512_setzero_ps();
          }
        }
      }
    }
  }
  for (int r = 0; r < R && n0 + r < a.N; ++r)
    for (int mb = 0; mb < MB; ++mb) a.y[(m0 + mb) * a.N + n0 + r] = _mm512_reduce_add_ps(total[r][mb]);
}

inline bool gemm_int4_bf16(const GemmArgs& a, const Int4Args& q, int64_t t0, int64_t t1) {
  if (q.groups > kInt4MaxGroups || q.group_size % 64) return false;  // the glue never sends these
  alignas(64) float sc[kTileRows * kInt4MaxGroups], zc[kTileRows * kInt4MaxGroups];
  __m512i bad = _mm512_setzero_si512();
  const int64_t TB = tile_bytes(a.K);
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n0 = t * kTileRows;
    const uint8_t* tile = q.tiles + t * TB;
    const bool sym = int4_tile_constants(q, n0, sc, zc);
    cpu::SF_ISA_NS::for_row_blocks<kInt4MB>(a.M, [&](auto mb, int64_t m0) {
      if (sym)
        gemm_int4_tile<decltype(mb)::value, true>(a, q, tile, sc, zc, n0, m0, bad);
      else
        gemm_int4_tile<decltype(mb)::value, false>(a, q, tile, sc, zc, n0, m0, bad);
    });
  }
  return _mm512_test_epi64_mask(bad, bad) == 0;
}
#endif

}  // namespace SF_ISA_NS
}  // namespace sparse24
}  // namespace slimformer
