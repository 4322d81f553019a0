// 2:4 x bf16 for many activation rows (AVX-512 BF16), included by sparse24_cpu_kernel.h inside the avx512bf16 TU.
//
// The small-M kernel gives each output row's kept weights their own lanes and re-gathers the activations for every
// output row; from a few dozen activation rows that gather costs more than the dense GEMM's extra multiplies. This
// kernel turns it around: a vector's 16 lanes are 16 activation rows, and one vdpbf16ps multiplies the two kept
// weights of one group of one output row (broadcast) with those rows' two activations at the kept columns. A group's
// two kept columns are one of 6 pairs, so the activations are packed once per call in all 6 pairings
// (pack_wide_bf16): block (K block kb, row block mb) holds, for each of its kWideGroups groups g and each pairing p,
// one 64-byte vector whose lane j is (x[16 mb + j, 4 g + first(p)], x[16 mb + j, 4 g + second(p)]). The weight's
// nibble then only chooses which of the group's 6 vectors to load: one load and one multiply-add per group, output
// row and 16 activation rows, and half the multiply-adds of the dense GEMM.
//
// gemm_wide_bf16 works through the output rows in superblocks of kWideSuperRows, whose fp32 sums (transposed:
// [row][activation row]) stay in L2. For each K block, for each tile of kWideTileMB row blocks (their packed
// activations, 4 x 6 KiB, stay in L1 while all the superblock's output rows pass), kWideTileN output rows at a
// time: their nibbles become the byte offsets of the chosen vectors (one vpermd on the 16 nibbles), and 4 x 6
// accumulators run through the block's 16 groups. The K block's bitmask is one 64-bit word a row; its values are 64
// bytes a row, prefetched a few K blocks ahead (the rows of a superblock are 8 KiB apart, too many streams for the
// hardware prefetcher). The sums are transposed into y at the end of the superblock.
//
// Measured on Zen 4 (one core, vdpbf16ps peak 3.6 G/s there): the bare inner loop (L1-resident activations, one
// offset load, one broadcast and 4 load + vdpbf16ps per group and output row) runs at 2.56 G/s; the whole kernel at
// 4096x11008, M=128 at about 1.6-1.9 G/s, which is the dense bf16 GEMM's time at half its multiply-adds. Without the
// prefetch the strided weight reads cost a further ~20%. Tried, no better: tiles of 2 x 12, 8 x 3, 4 x 5, 4 x 7; K
// blocks of 8 groups (half the L1 footprint, twice the sum traffic), also with the row blocks innermost so that each
// row's offsets serve both tiles; superblocks of 48-480 rows; prefetching 1-16 K blocks ahead or the next tile's rows.
//
// Tails: activation rows past M and groups past K/4 are packed as zeros (and their sums never written out); output
// rows past the range recompute the last row into spare rows of the buffer; the tail K block runs its real groups
// only. A nibble that is not 2:4 is reported (groups_are_2_of_4 on each row's word, padding groups counted valid) and
// loads vector 0 of its group, inside the block.
#pragma once
#include <algorithm>
#include <cstring>
#include <vector>

#include "common/cpu_kernel_util.h"
#include "sparse24/sparse24_cpu.h"

#if defined(__AVX512BF16__) && defined(__AVX512VBMI__)
#include <immintrin.h>

namespace slimformer {
namespace sparse24 {
namespace SF_ISA_NS {

// The 6 nibbles that keep two columns, in the order of the packed vectors, and the byte offset of each nibble's
// vector inside its group (0 for a nibble that is not 2:4).
inline constexpr uint8_t kWideNibbles[6] = {0x3, 0x5, 0x9, 0x6, 0xA, 0xC};
struct WideOffsets {
  alignas(64) int32_t v[16];
  constexpr WideOffsets() : v() {
    for (int p = 0; p < 6; ++p) v[kWideNibbles[p]] = 64 * p;
  }
};
inline constexpr WideOffsets kWideOffsets{};
constexpr int64_t kWideGroupBytes = 6 * 64;
constexpr int kWideTileMB = 4, kWideTileN = 6;
constexpr int64_t kWideSuperRows = 240;  // a multiple of kWideTileN
constexpr int kWidePrefetchBlocks = 4;
static_assert(kWideSuperRows % kWideTileN == 0, "the buffer's spare rows assume whole tiles");

// Blocks [kb0, kb1) x all row blocks of the packed activations (layout: sparse24_cpu.h, kWideBlockBytes).
inline void pack_wide_bf16(const uint16_t* x, int64_t M, int64_t K, uint8_t* packed, int64_t kb0, int64_t kb1) {
  const int64_t G = K / 4, MB = wide_row_blocks(M);
  __m512i pick[6];
  for (int p = 0; p < 6; ++p) {
    // lane j of the output: words 2j, 2j + 1 <- row j's two columns; rows 0-7 come from `lo` (4 words each, word
    // index 4j + column), rows 8-15 from `hi` (index 32 + 4 (j - 8) + column)
    const uint8_t pair = pair_of_nibble(kWideNibbles[p]);
    alignas(64) int16_t idx[32];
    for (int j = 0; j < 16; ++j) {
      const int base = j < 8 ? 4 * j : 32 + 4 * (j - 8);
      idx[2 * j] = static_cast<int16_t>(base + first_of(pair));
      idx[2 * j + 1] = static_cast<int16_t>(base + second_of(pair));
    }
    pick[p] = _mm512_load_si512(idx);
  }
  const __m512i row_bytes = _mm512_mullo_epi64(_mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7), _mm512_set1_epi64(2 * K));
  for (int64_t kb = kb0; kb < kb1; ++kb)
    for (int64_t mb = 0; mb < MB; ++mb) {
      uint8_t* out = packed + (kb * MB + mb) * kWideBlockBytes;
      const int64_t rows = std::min<int64_t>(16, M - 16 * mb);
      const __mmask8 mlo = static_cast<__mmask8>(rows >= 8 ? 0xFF : (1u << rows) - 1);
      const __mmask8 mhi = static_cast<__mmask8>(rows >= 16 ? 0xFF : rows <= 8 ? 0 : (1u << (rows - 8)) - 1);
      const uint16_t* xr = x + 16 * mb * K;
      for (int64_t g = 0; g < kWideGroups; ++g) {
        const int64_t gg = kb * kWideGroups + g;
        __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
        if (gg < G) {  // each row's 4 activations of the group: one 64-bit gather element
          lo = _mm512_mask_i64gather_epi64(lo, mlo, row_bytes, xr + 4 * gg, 1);
          hi = _mm512_mask_i64gather_epi64(hi, mhi, row_bytes, xr + 8 * K + 4 * gg, 1);
        }
        for (int p = 0; p < 6; ++p)
          _mm512_store_si512(out + g * kWideGroupBytes + 64 * p, _mm512_permutex2var_epi16(lo, pick[p], hi));
      }
    }
}

// One tile: RM row blocks (`act`: their packed blocks of this K block) x RN output rows (`vals`: their values of
// this K block, `bits`: their bitmask words), `ng` groups, into the sums at c (row r's at c + r * ldc).
template <int RM, int RN>
inline void wide_tile(const uint8_t* const* act, const uint16_t* const* vals, const uint64_t* bits, int ng,
                      float* c, int64_t ldc, bool first) {
  alignas(64) int32_t offs[RN][kWideGroups];
  const __m512i table = _mm512_load_si512(kWideOffsets.v);
  const __m512i shifts = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
  const __m512i group_bytes =
      _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32(static_cast<int>(kWideGroupBytes)));
  for (int r = 0; r < RN; ++r) {
    const __m512i word = _mm512_inserti64x4(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(bits[r]))),
                                            _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(bits[r] >> 32))), 1);
    const __m512i nib = _mm512_and_si512(_mm512_srlv_epi32(word, shifts), _mm512_set1_epi32(15));
    _mm512_store_si512(offs[r], _mm512_add_epi32(_mm512_permutexvar_epi32(nib, table), group_bytes));
  }
  __m512 acc[RM][RN];
  for (int r = 0; r < RN; ++r)
    for (int m = 0; m < RM; ++m) acc[m][r] = first ? _mm512_setzero_ps() : _mm512_load_ps(c + r * ldc + 16 * m);
  for (int g = 0; g < ng; ++g)
    for (int r = 0; r < RN; ++r) {
      const int64_t off = offs[r][g];
      uint32_t pair;
      std::memcpy(&pair, vals[r] + 2 * g, 4);
      const __m512bh w = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
      for (int m = 0; m < RM; ++m)
        acc[m][r] = _mm512_dpbf16_ps(acc[m][r], w, (__m512bh)_mm512_load_si512(act[m] + off));
    }
  for (int r = 0; r < RN; ++r)
    for (int m = 0; m < RM; ++m) _mm512_store_ps(c + r * ldc + 16 * m, acc[m][r]);
}

// y[:, n0:n1) = x @ W[n0:n1)^T from the packed activations (a.xb unused).
inline bool gemm_wide_bf16(const GemmArgs& a, const uint8_t* packed, int64_t n0, int64_t n1) {
  const int64_t K = a.K, G = K / 4, KBn = wide_k_blocks(K), MB = wide_row_blocks(a.M), ldc = 16 * MB;
  const int64_t KB = (K + 7) / 8, KV = K / 2;
  const uint16_t* values = static_cast<const uint16_t*>(a.values);
  std::vector<float> buf(static_cast<size_t>(kWideSuperRows * ldc + 16));
  float* cbuf = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~uintptr_t{63});
  bool good = true;
  for (int64_t s0 = n0; s0 < n1; s0 += kWideSuperRows) {
    const int64_t s1 = std::min(n1, s0 + kWideSuperRows);
    for (int64_t kb = 0; kb < KBn; ++kb) {
      const int ng = static_cast<int>(std::min<int64_t>(kWideGroups, G - kb * kWideGroups));
      const int64_t mask_bytes = (4 * ng + 7) / 8;
      // the tail block's padding groups (past K/4, possibly a real byte's high nibble) count as valid: columns 0, 1
      const uint64_t keep = ng == kWideGroups ? ~uint64_t{0} : (uint64_t{1} << (4 * ng)) - 1;
      // tiles of kWideTileMB row blocks, the last one of what is left (its count a compile-time constant)
      cpu::SF_ISA_NS::for_row_blocks<kWideTileMB>(MB, [&](auto rm, int64_t mt) {
        constexpr int RM = decltype(rm)::value;
        const uint8_t* act[RM];
        for (int m = 0; m < RM; ++m) act[m] = packed + (kb * MB + mt + m) * kWideBlockBytes;
        for (int64_t n = s0; n < s1; n += kWideTileN) {
          const uint16_t* vals[kWideTileN];
          uint64_t bits[kWideTileN];
          for (int r = 0; r < kWideTileN; ++r) {
            const int64_t row = std::min(n + r, s1 - 1) - a.row0;
            vals[r] = values + row * KV + kb * (2 * kWideGroups);
            bits[r] = 0;
            std::memcpy(&bits[r], a.bitmask + row * KB + kb * (kWideGroups / 2), mask_bytes);
            if (mt == 0) {
              good &= groups_are_2_of_4((bits[r] & keep) | (0x3333333333333333ull & ~keep));
              if (kb + kWidePrefetchBlocks < KBn) {
                _mm_prefetch(reinterpret_cast<const char*>(vals[r] + kWidePrefetchBlocks * 2 * kWideGroups),
                             _MM_HINT_T1);
                _mm_prefetch(reinterpret_cast<const char*>(a.bitmask + row * KB +
                                                           (kb + kWidePrefetchBlocks) * (kWideGroups / 2)),
                             _MM_HINT_T1);
              }
            }
          }
          wide_tile<RM, kWideTileN>(act, vals, bits, ng, cbuf + (n - s0) * ldc + 16 * mt, ldc, kb == 0);
        }
      });
    }
    // y[m, s0:s1) = column m of the sums (+ bias), 16 output rows a gather
    const __m512i stride = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                              _mm512_set1_epi32(static_cast<int>(ldc)));
    for (int64_t m = 0; m < a.M; ++m)
      for (int64_t n = s0; n < s1; n += 16) {
        const __mmask16 k = static_cast<__mmask16>(s1 - n >= 16 ? 0xFFFF : (1u << (s1 - n)) - 1);
        __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, stride, cbuf + (n - s0) * ldc + m, 4);
        if (a.bias != nullptr) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, a.bias + n));
        if (a.yb != nullptr)
          _mm256_mask_storeu_epi16(a.yb + m * a.N + n, k, (__m256i)_mm512_cvtneps_pbh(v));
        else
          _mm512_mask_storeu_ps(a.y + m * a.N + n, k, v);
      }
  }
  return good;
}

}  // namespace SF_ISA_NS
}  // namespace sparse24
}  // namespace slimformer
#endif
