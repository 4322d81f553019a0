// GPTQ CPU kernel of the int8 dynamic-activation activation mode (opt-in), 4-bit weights (interface and numerics in gptq_cpu.h, SmallMA8Args).
//
// Why: vpmaddubsw multiplies 32 unsigned-byte x signed-byte pairs and adds adjacent products in one instruction,
// twice the products of vpmaddwd, and a byte holds one int4 value after a single AND (the low nibbles) or a 16-bit
// shift and an AND (the high nibbles). Per 8-value word and 8 columns: 3 decode instructions shared by the rows,
// then per row 2 vpmaddubsw + 2 16-bit adds, plus a widening vpmaddwd + add every 4 words: ~4.5 instructions per 64
// multiply-adds and row, against 6 shared and 8 per row (4 vpmaddwd + 4 adds) in the exact integer kernel.
// Overflow: a 16-bit lane gains at most 2 * 15 * 127 = 3810 per vpmaddubsw (no saturation), 2 per word, so 4 words
// (8 additions, at most 30480) fit before the lanes are widened into int32 with vpmaddwd by ones.
constexpr int64_t kA8WidenWords = 4;
#pragma once
#include "gptq_cpu_common.h"

namespace slimformer {
namespace gptq {
namespace SF_ISA_NS {

// Rows [m0, m1): per-block symmetric int8 quantization (gptq_cpu.h). Returns false when a row holds inf or NaN.
template <class T>
bool prepare_rows_a8(const TiledWeight& w, const T* x, int64_t m0, int64_t m1, int32_t* xa8, float* ascale,
                     float* asum) {
  const int64_t K = w.K, G = w.groups(), gs = w.group_size < w.K ? w.group_size : w.K;
  const int64_t bpg = i16_blocks_per_group(w), NB = blocks_i16(w);
  for (int64_t m = m0; m < m1; ++m) {
    const T* xr = x + m * K;
    uint32_t* xo = reinterpret_cast<uint32_t*>(xa8 + m * (K / 4));
    for (int64_t g = 0; g < G; ++g) {
      const int64_t gend = (g + 1) * gs < K ? (g + 1) * gs : K;
      for (int64_t b = 0; b < bpg; ++b) {
        const int64_t blk = g * bpg + b;
        const int64_t k0 = g * gs + b * kI16Block;
        const int64_t k1 = k0 + kI16Block < gend ? k0 + kI16Block : gend;
        if (k1 <= k0) {  // an empty block (only when a group is shorter than its blocks)
          ascale[m * NB + blk] = 0.f;
          asum[m * NB + blk] = 0.f;
          continue;
        }
        const uint32_t amax_bits = abs_max_bits(xr + k0, k1 - k0);
        if (amax_bits >= 0x7F800000u) return false;
        float amax;
        std::memcpy(&amax, &amax_bits, 4);
        const float inv = amax > 0.f ? 127.0f / amax : 0.f;
        ascale[m * NB + blk] = amax / 127.0f;
        int32_t sum = 0;
        for (int64_t u = k0 / 8; u < k1 / 8; ++u) {
          uint32_t even = 0, odd = 0;
          for (int j = 0; j < 8; ++j) {
            // |x * inv| <= 127 up to one rounding, so the rounded value stays in [-127, 127].
            const int32_t q = static_cast<int32_t>(std::nearbyint(load_x(xr, u * 8 + j) * inv));
            sum += q;
            (j % 2 ? odd : even) |= (static_cast<uint32_t>(q) & 0xFFu) << (8 * (j / 2));
          }
          xo[2 * u] = even;
          xo[2 * u + 1] = odd;
        }
        asum[m * NB + blk] = static_cast<float>(sum);
      }
    }
  }
  return true;
}

// 16-bit pairs summed into int32 by vpmaddwd: the int8 mode's widening multiplier.
inline constexpr int32_t kOnes16 = 0x00010001;

// Column tile t's weights and scales and the int8 activations of rows [m0, m0 + MR).
template <int MR>
struct A8Tile {
  const int32_t* qt;
  const uint16_t* sz;
  const int32_t* xr[MR];
  A8Tile(const SmallMA8Args& a, int64_t t, int64_t m0)
      : qt(a.w.qtiles + t * a.w.k_words() * kTileCols), sz(a.w.scale_zero + t * a.w.groups() * 2 * kTileCols) {
    for (int mm = 0; mm < MR; ++mm) xr[mm] = a.xa8 + (m0 + mm) * (a.w.K / 4);
  }
};

// Folds block blk's exact integer sums acc (column vectors vp0.. of the tile, rows m0..) into out:
// out += ascale * (scale * acc - scale * zero * asum), with szg the block's group of scales and zeros.
template <int MR, int NVP>
inline void a8_fold_block(const SmallMA8Args& a, const uint16_t* szg, int vp0, int64_t m0, int64_t blk,
                          const typename V::I (&acc)[MR][NVP], typename V::F (&out)[MR][NVP]) {
  using F = typename V::F;
  constexpr int L = V::L;
  const int64_t NB = blocks_i16(a.w);
  for (int v = 0; v < NVP; ++v) {
    const F scale = V::load_half(szg + (vp0 + v) * L);
    const F scale_zero = V::mul(scale, V::load_half(szg + kTileCols + (vp0 + v) * L));  // exact
    for (int mm = 0; mm < MR; ++mm) {
      const F part = V::fms(scale, V::cvt(acc[mm][v]), V::mul(scale_zero, V::bcast(a.asum + (m0 + mm) * NB + blk)));
      out[mm][v] = V::fma(V::bcast(a.ascale + (m0 + mm) * NB + blk), part, out[mm][v]);
    }
  }
}

// Rows [m0, m0 + MR) of column tile t in the int8 activation mode.
template <int MR>
void small_m_tile_a8(const SmallMA8Args& a, int64_t t, int64_t m0) {
  using F = typename V::F;
  using I = typename V::I;
  constexpr int L = V::L;
  constexpr int NV = kTileCols / L;
  const TiledWeight& w = a.w;
  const int64_t NB = blocks_i16(w);
  const A8Tile<MR> tile(a, t, m0);
  const int32_t* qt = tile.qt;
  const uint16_t* sz = tile.sz;
  const auto& xr = tile.xr;
  const I ones = V::bcasti(&kOnes16);

  F out[MR][NV];
  for (int mm = 0; mm < MR; ++mm)
    for (int v = 0; v < NV; ++v) out[mm][v] = V::zero();

  for (int64_t blk = 0; blk < NB; ++blk) {
    const auto [g, k0, k1] = block_range(w, blk);
    I acc[MR][NV];
    for (int mm = 0; mm < MR; ++mm)
      for (int v = 0; v < NV; ++v) acc[mm][v] = V::zeroi();
    for (int64_t u0 = k0 / 8; u0 < k1 / 8; u0 += kA8WidenWords) {
      const int64_t u1 = u0 + kA8WidenWords < k1 / 8 ? u0 + kA8WidenWords : k1 / 8;
      I a16[MR][NV];
      for (int mm = 0; mm < MR; ++mm)
        for (int v = 0; v < NV; ++v) a16[mm][v] = V::zeroi();
      for (int64_t u = u0; u < u1; ++u) {
        const int32_t* up = qt + u * kTileCols;
        __builtin_prefetch(up + kPrefetchInts);
        __builtin_prefetch(up + kPrefetchInts + 16);
        I xe[MR], xo[MR];
        for (int mm = 0; mm < MR; ++mm) {
          xe[mm] = V::bcasti(xr[mm] + 2 * u);
          xo[mm] = V::bcasti(xr[mm] + 2 * u + 1);
        }
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
          const I wv = V::loadi(up + v * L);
          const I lo = V::and_(wv, 0x0F0F0F0Fu);                   // values 0, 2, 4, 6: low nibble of each byte
          const I hi = V::and_(V::srli16(wv, 4), 0x0F0F0F0Fu);     // values 1, 3, 5, 7
          for (int mm = 0; mm < MR; ++mm) {
            a16[mm][v] = V::addi16(a16[mm][v], V::maddubs(lo, xe[mm]));
            a16[mm][v] = V::addi16(a16[mm][v], V::maddubs(hi, xo[mm]));
          }
        }
        // Keep GCC from hoisting several words' products ahead of their adds (it spills them otherwise).
        for (int mm = 0; mm < MR; ++mm)
          for (int v = 0; v < NV; ++v) V::keep(a16[mm][v]);
      }
      for (int mm = 0; mm < MR; ++mm)
        for (int v = 0; v < NV; ++v) acc[mm][v] = V::addi(acc[mm][v], V::madd16(a16[mm][v], ones));
    }
    a8_fold_block<MR, NV>(a, sz + g * 2 * kTileCols, 0, m0, blk, acc, out);
  }
  store_tile<MR>(out, a.y, t, w.N, m0);
}

// Many-row form of the int8 mode (prefill). Per word and column vector the tile above spends 3 decode
// instructions, shared by its MR_MAX rows, and per row 2 vpmaddubsw + 2 16-bit adds, plus 2 broadcasts per row
// shared by the tile's column vectors. Here a pass covers kA8PassCols columns for kA8Rows rows (AVX2: 4 rows x 2
// ymm = 8 16-bit accumulators, which leaves registers for the decoded nibbles and the broadcasts), so decode is
// shared by twice the rows, the full 4-word widening chunk is unrolled at compile time, and the int32 block sums
// live in memory (touched once per chunk). No software prefetch: past the first row block the tile is re-read
// from L2. Measured on Zen 3 (AVX2, 4096x4096, 2 threads): 1.10-1.16x the tile above from 8 rows up (3 rows per
// pass did as well as 4, 6-8 rows with 8 columns worse); the tile above stays ahead up to 6 rows. What is left
// is the broadcasts (a vector-pipe slot each on Zen 3) and the decode: 14 of ~50 vector instructions per word.
constexpr int kA8PassCols = 16;
constexpr int kA8Rows = 4;

template <int MR, int NVP>
__attribute__((always_inline)) inline void a8_word(const int32_t* up, const int32_t* const (&xr)[MR], int64_t u,
                                                   typename V::I (&a16)[MR][NVP]) {
  using I = typename V::I;
  constexpr int L = V::L;
  I lo[NVP], hi[NVP];
  for (int v = 0; v < NVP; ++v) {
    const I wv = V::loadi(up + v * L);
    lo[v] = V::and_(wv, 0x0F0F0F0Fu);
    hi[v] = V::and_(V::srli16(wv, 4), 0x0F0F0F0Fu);
  }
  for (int mm = 0; mm < MR; ++mm) {
    const I xe = V::bcasti(xr[mm] + 2 * u), xo = V::bcasti(xr[mm] + 2 * u + 1);
    for (int v = 0; v < NVP; ++v) {
      a16[mm][v] = V::addi16(a16[mm][v], V::maddubs(lo[v], xe));
      a16[mm][v] = V::addi16(a16[mm][v], V::maddubs(hi[v], xo));
    }
  }
  // Without this GCC regroups the 16-bit additions of the unrolled chunk into a tree and spills the products.
  for (int mm = 0; mm < MR; ++mm)
    for (int v = 0; v < NVP; ++v) V::keep(a16[mm][v]);
}

template <int MR>
void many_rows_tile_a8(const SmallMA8Args& a, int64_t t, int64_t m0) {
  using F = typename V::F;
  using I = typename V::I;
  constexpr int L = V::L;
  constexpr int NV = kTileCols / L;
  constexpr int NVP = kA8PassCols >= L ? kA8PassCols / L : 1;
  static_assert(NV % NVP == 0, "passes cover the tile");
  const TiledWeight& w = a.w;
  const int64_t NB = blocks_i16(w);
  const A8Tile<MR> tile(a, t, m0);
  const int32_t* qt = tile.qt;
  const uint16_t* sz = tile.sz;
  const auto& xr = tile.xr;

  F out[MR][NV];
  for (int p = 0; p < NV / NVP; ++p) {
    const int vp0 = p * NVP;
    F outp[MR][NVP];
    for (int mm = 0; mm < MR; ++mm)
      for (int v = 0; v < NVP; ++v) outp[mm][v] = V::zero();
    for (int64_t blk = 0; blk < NB; ++blk) {
      const auto [g, k0, k1] = block_range(w, blk);
      alignas(64) int32_t accb[MR][NVP][L > 1 ? L : 1] = {};
      for (int64_t u0 = k0 / 8; u0 < k1 / 8; u0 += kA8WidenWords) {
        const int64_t n = k1 / 8 - u0 < kA8WidenWords ? k1 / 8 - u0 : kA8WidenWords;
        I a16[MR][NVP];
        for (int mm = 0; mm < MR; ++mm)
          for (int v = 0; v < NVP; ++v) a16[mm][v] = V::zeroi();
        const int32_t* up = qt + u0 * kTileCols + vp0 * L;
        if (n == kA8WidenWords) {
#pragma GCC unroll 4
          for (int j = 0; j < kA8WidenWords; ++j) a8_word<MR, NVP>(up + j * kTileCols, xr, u0 + j, a16);
        } else {
          for (int64_t j = 0; j < n; ++j) a8_word<MR, NVP>(up + j * kTileCols, xr, u0 + j, a16);
        }
        const I ones = V::bcasti(&kOnes16);
        for (int mm = 0; mm < MR; ++mm)
          for (int v = 0; v < NVP; ++v) {
            int32_t* dst = &accb[mm][v][0];
            V::storei(dst, V::addi(V::loadi(dst), V::madd16(a16[mm][v], ones)));
          }
      }
      I acc[MR][NVP];
      for (int mm = 0; mm < MR; ++mm)
        for (int v = 0; v < NVP; ++v) acc[mm][v] = V::loadi(&accb[mm][v][0]);
      a8_fold_block<MR, NVP>(a, sz + g * 2 * kTileCols, vp0, m0, blk, acc, outp);
    }
    for (int mm = 0; mm < MR; ++mm)
      for (int v = 0; v < NVP; ++v) out[mm][vp0 + v] = outp[mm][v];
  }
  store_tile<MR>(out, a.y, t, w.N, m0);
}

// Row count from which the many-row form is used (measured as above; at 7 rows it was 7% ahead).
constexpr int64_t kA8ManyRowsFrom = 7;

inline void small_m_gemm_a8(const SmallMA8Args& a, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    if (a.M >= kA8ManyRowsFrom) {
      for (int64_t m0 = 0; m0 < a.M; m0 += kA8Rows)
        with_rows<kA8Rows>(a.M - m0 < kA8Rows ? a.M - m0 : kA8Rows, m0,
                           [&](auto mr, int64_t r0) { many_rows_tile_a8<decltype(mr)::value>(a, t, r0); });
    } else {
      for_row_blocks(a.M, [&](auto mr, int64_t m0) { small_m_tile_a8<decltype(mr)::value>(a, t, m0); });
    }
  }
}

inline bool prepare_rows_a8_any(const TiledWeight& w, KernelInput x, int64_t m0, int64_t m1, int32_t* xa8,
                                float* ascale, float* asum) {
  return with_input(x, [&](const auto* p) { return prepare_rows_a8(w, p, m0, m1, xa8, ascale, asum); });
}

}  // namespace SF_ISA_NS
}  // namespace gptq
}  // namespace slimformer
