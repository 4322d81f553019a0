// GPTQ CPU integer kernel for bf16 activations (interface and numerics in gptq_cpu.h, SmallMI16Args).
//
// Why: with fp32 arithmetic each int4 weight costs an AND plus an FMA, and the FMA reads the masked word as a
// denormal float, which Zen 3 executes at about 2/3 of the normal rate (measured: the same loop with normal
// operands is ~1.5x faster). vpmaddwd instead multiplies 16 int16 pairs and adds adjacent products in one
// instruction, so a word of 8 int4 values costs 3 shifts, 3 ANDs, 4 multiply-adds and 4 adds per 8 columns:
// about 1.75 instructions per 8 multiply-adds against 2-2.25, none of them on denormals.
//
// Lane layout: a 32-bit lane holds one column's packed word, and each field of its low 16-bit half has a partner
// at the same position of the high half (for 2/4/8 bits the Hub stream is already so: value j and value
// 16/BITS + j; int3 gets its own layout at load, gptq_decode.h). Isolating a field in both halves at once
// (field16) and multiplying by one broadcast int32 holding the activation pair (gptq_cpu.h, i16_pair_lo/hi)
// handles two values per lane. int3 costs 8 isolating instructions per word of 10 values, plus 8 for the sliced
// pair of every 3 words: 64 instructions per 32 values and 8 columns against int4's 56 (measured on Zen 3, 1
// thread, weights in L2: 25.7 vs 23.1 us per 1M weights), while streaming 25% fewer bytes.
#pragma once
#include "gptq_cpu_common.h"

namespace slimformer {
namespace gptq {
namespace SF_ISA_NS {

// Rows [m0, m1): splits each activation block into int16 hi values and exact residuals (see gptq_cpu.h).
template <int BITS, class T>
bool prepare_rows_i16(const TiledWeight& w, const T* x, int64_t m0, int64_t m1, int32_t* xq, float* bscale,
                      float* xsum, int32_t* res_n, int32_t* res_k, int32_t* res_g, float* res_lo) {
  constexpr int UV = unit_values(BITS);
  const int64_t K = w.K, G = w.groups(), gs = w.group_size < w.K ? w.group_size : w.K;
  const int64_t bpg = i16_blocks_per_group(w), NB = blocks_i16(w);
  for (int64_t m = m0; m < m1; ++m) {
    const T* xr = x + m * K;
    int32_t* xqr = xq + m * (K / 2);
    float* bs = bscale + m * NB;
    int32_t* rk = res_k + m * K;
    int32_t* rg = res_g + m * K;
    float* rl = res_lo + m * K;
    int32_t nres = 0;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t gend = (g + 1) * gs < K ? (g + 1) * gs : K;
      double gsum = 0.0;
      for (int64_t b = 0; b < bpg; ++b) {
        const int64_t k0 = g * gs + b * kI16Block;
        const int64_t k1 = k0 + kI16Block < gend ? k0 + kI16Block : gend;
        const int64_t n = k1 - k0;
        const uint32_t amax_bits = abs_max_bits(xr + k0, n);
        if (amax_bits >= 0x7F800000u) return false;  // inf or NaN: only the float path propagates them faithfully
        // e with amax < 2^e (frexp's exponent, read off the bits), at least -100 so that 2^(15-e) stays finite;
        // values of a block that small end up in the residuals.
        int e = amax_bits == 0 ? 0 : static_cast<int>(amax_bits >> 23) - 126;
        e = e < -100 ? -100 : e;
        const float to_grid = pow2(15 - e), grid = pow2(e - 15);
        bs[g * bpg + b] = grid;
        float hf[kI16Block], lo[kI16Block];
        int32_t hi[kI16Block];
        uint32_t lo_bits[kI16Block];
        int32_t hsum = 0;  // |sum| < 128 * 2^15
        for (int64_t i = 0; i < n; ++i) {
          // |x| * to_grid < 2^15, but an fp32 |x| just below 2^e (0.99999994 = 1 - 2^-24) rounds up to 2^15, which
          // would wrap to -2^15 in int16: clamp to +-(2^15 - 1), and lo keeps the exact remainder (within a factor
          // of 2 of x, so the subtraction is exact). bf16 values (8-bit mantissas) never reach the clamp.
          const float xv = load_x(xr, k0 + i);
          const float r = std::nearbyint(xv * to_grid);
          hf[i] = r > 32767.f ? 32767.f : (r < -32767.f ? -32767.f : r);
          lo[i] = xv - hf[i] * grid;  // exact: what the 2^(e-15) grid cannot hold of x
          hi[i] = static_cast<int32_t>(hf[i]);
          hsum += hi[i];
          std::memcpy(lo_bits + i, lo + i, 4);
        }
        double lsum = 0.0;
        for (int64_t i0 = 0; i0 < n; i0 += 16) {  // residuals are rare: skip 16 values at a time
          const int64_t i1 = i0 + 16 < n ? i0 + 16 : n;
          uint32_t any = 0;
          for (int64_t i = i0; i < i1; ++i) any |= lo_bits[i];
          if (any == 0) continue;
          for (int64_t i = i0; i < i1; ++i)
            if (lo[i] != 0.f) {
              rk[nres] = static_cast<int32_t>(k0 + i);
              rg[nres] = static_cast<int32_t>(g);
              rl[nres] = lo[i];
              lsum += lo[i];
              ++nres;
            }
        }
        gsum += static_cast<double>(hsum) * grid + lsum;  // the block's exact sum of x, up to lsum's rounding
        for (int64_t i = 0; i < n; i += UV)  // blocks hold whole units
          for (int p = 0; p < UV / 2; ++p)
            xqr[(k0 + i) / 2 + p] =
                static_cast<int32_t>((static_cast<uint32_t>(hi[i + i16_pair_lo(BITS, p)]) & 0xFFFFu) |
                                     (static_cast<uint32_t>(hi[i + i16_pair_hi(BITS, p)]) << 16));
      }
      xsum[m * G + g] = static_cast<float>(gsum);
    }
    res_n[m] = nres;
  }
  return true;
}

// Field s (the value at bit s of each 16-bit half, BITS wide) of every lane, for vpmaddwd: the lowest field needs
// only an AND, one ending at bit 15 only a 16-bit shift, the others a shift and an AND. s must fold to a constant
// (the callers' loops are fully unrolled).
template <int BITS>
inline typename V::I field16(typename V::I w, int s) {
  constexpr uint32_t mask16 = ((1u << BITS) - 1u) * 0x10001u;
  if (s == 0) return V::and_(w, mask16);
  if (s + BITS == 16) return V::srli16(w, s);
  return V::and_(V::srli(w, s), mask16);
}

// Column vectors of value r (run-time) of the unit whose word 0 is at p, as integers.
template <int BITS>
inline typename V::I value_at(const int32_t* p, int r) {
  constexpr uint32_t mask = (1u << BITS) - 1u;
  const typename V::I word =
      value_sliced(BITS, r) ? sliced_word<BITS>(p) : V::loadi(p + value_word(BITS, r) * kTileCols);
  return V::and_(V::srlv(word, value_shift(BITS, r)), mask);
}


// Block blk (K range [k0, k1)) of column tile t for activation rows [m0, m0 + MR): res[mm][v] = the block's exact
// int32 dot product of the weights with the int16 activations, times the block's grid.
template <int BITS, int MR>
__attribute__((always_inline)) inline void dot_block_i16(const SmallMI16Args& a, const int32_t* qt, int64_t m0,
                                                         int64_t blk, int64_t k0, int64_t k1,
                                                         typename V::F (&res)[MR][kTileCols / V::L]) {
  using I = typename V::I;
  constexpr int L = V::L;
  constexpr int NV = kTileCols / L;
  constexpr int UV = unit_values(BITS), UW = unit_words(BITS), UP = UV / 2, WP = i16_word_pairs(BITS);
  const int64_t K = a.w.K, NB = blocks_i16(a.w);
  const int32_t* xq[MR];
  for (int mm = 0; mm < MR; ++mm) xq[mm] = a.xq + (m0 + mm) * (K / 2);
  I acc[MR][NV];
  for (int mm = 0; mm < MR; ++mm)
    for (int v = 0; v < NV; ++v) acc[mm][v] = V::zeroi();
  for (int64_t u = k0 / UV; u < k1 / UV; ++u) {  // k1 <= k0: an empty block
    const int32_t* up = qt + u * UW * kTileCols;
    // The unit's UW tile rows of 128 bytes, kPrefetchInts ahead: two lines each.
    for (int line = 0; line < UW * 2; ++line) __builtin_prefetch(up + kPrefetchInts + line * 16);
    // Word outer, column vector next, field inner: the word's WP broadcasts per row stay in registers while
    // each word is decoded, and only one word is live at a time. Plain loops, fully unrolled, rather than
    // static_for: accumulators captured by a lambda stayed in memory (20% slower).
#pragma GCC unroll 4
    for (int wi = 0; wi < UW; ++wi) {
      I xb[MR][WP];
      for (int mm = 0; mm < MR; ++mm)
        for (int j = 0; j < WP; ++j) xb[mm][j] = V::bcasti(xq[mm] + u * UP + wi * WP + j);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const I wv = V::loadi(up + wi * kTileCols + v * L);
#pragma GCC unroll 16
        for (int j = 0; j < WP; ++j) {
          const I d = field16<BITS>(wv, value_shift(BITS, i16_pair_lo(BITS, wi * WP + j)));
          for (int mm = 0; mm < MR; ++mm) acc[mm][v] = V::dpwssd(acc[mm][v], d, xb[mm][j]);
        }
      }
      // Without this GCC hoists the multiplies of several words ahead of their adds and spills the products
      // (int3: 34 vs 28 us per 1M weights on Zen 3).
      if constexpr (UW > 1)
        for (int mm = 0; mm < MR; ++mm)
          for (int v = 0; v < NV; ++v) V::keep(acc[mm][v]);
    }
    if constexpr (UW * WP < UP) {  // int3: the sliced pair (values 30 and 31), already one per 16-bit half
      static_assert(UW * WP + 1 == UP, "one sliced pair per unit");
      I xb[MR];
      for (int mm = 0; mm < MR; ++mm) xb[mm] = V::bcasti(xq[mm] + u * UP + UW * WP);
      for (int v = 0; v < NV; ++v) {
        const I d = sliced_word<BITS>(up + v * L);
        for (int mm = 0; mm < MR; ++mm) acc[mm][v] = V::dpwssd(acc[mm][v], d, xb[mm]);
      }
      for (int mm = 0; mm < MR; ++mm)
        for (int v = 0; v < NV; ++v) V::keep(acc[mm][v]);
    }
  }
  for (int mm = 0; mm < MR; ++mm) {
    const typename V::F grid = V::bcast(a.bscale + (m0 + mm) * NB + blk);
    for (int v = 0; v < NV; ++v) res[mm][v] = V::mul(V::cvt(acc[mm][v]), grid);
  }
}

// int3 (3-word units): blocks [blk0, blk1) (at most kI16BlocksPerCall) out of line, their sums stored to
// bsum[mm][blk - blk0][c]. Inlined into the tile loop, GCC kept the tile's fp32 outputs in registers and spilled the
// accumulators instead, and a call per block (4 units) spent ~10% on entry. cur: block blk0's position (a copy is
// advanced here).
constexpr int64_t kI16BlocksPerCall = 8;
template <int BITS, int MR>
__attribute__((noinline)) void dot_blocks_i16_outlined(const SmallMI16Args& a, const int32_t* qt, int64_t m0,
                                                       int64_t blk0, int64_t blk1, BlockCursor cur, float* bsum) {
  constexpr int L = V::L;
  constexpr int NV = kTileCols / L;
  for (int64_t blk = blk0; blk < blk1; ++blk, cur.next()) {
    const BlockRange r = cur.range();
    typename V::F res[MR][NV];
    dot_block_i16<BITS, MR>(a, qt, m0, blk, r.k0, r.k1, res);
    for (int mm = 0; mm < MR; ++mm)
      for (int v = 0; v < NV; ++v) V::store(bsum + (mm * kI16BlocksPerCall + (blk - blk0)) * kTileCols + v * L, res[mm][v]);
  }
}

// Folds integer-path block blk of column tile t into out for rows [m0, m0 + MR): the block's grid-scaled exact
// sums (row_sums(mm, b) fills b[NV] for row mm) times the group's scale; after the group's last block, minus
// scale * zero * the group's activation sum.
template <int MR, class RowSums>
inline void fold_block_i16(const SmallMI16Args& a, const uint16_t* sz, int64_t m0, const BlockCursor& cur,
                           RowSums&& row_sums, typename V::F (&out)[MR][kTileCols / V::L]) {
  using F = typename V::F;
  constexpr int L = V::L;
  constexpr int NV = kTileCols / L;
  const int64_t G = a.w.groups();
  const int64_t g = cur.g;
  const uint16_t* szg = sz + g * 2 * kTileCols;
  for (int mm = 0; mm < MR; ++mm) {
    F b[NV];
    row_sums(mm, b);
    for (int v = 0; v < NV; ++v) out[mm][v] = V::fma(V::load_half(szg + v * L), b[v], out[mm][v]);
  }
  if (cur.last_of_group()) {  // the group's last block: its zero-point term
    for (int v = 0; v < NV; ++v) {
      const F scale_zero = V::mul(V::load_half(szg + v * L), V::load_half(szg + kTileCols + v * L));
      for (int mm = 0; mm < MR; ++mm)
        out[mm][v] = V::fnma(scale_zero, V::bcast(a.xsum + (m0 + mm) * G + g), out[mm][v]);
    }
  }
}

// Adds row m's residuals with k < kend, from next on (a row's residuals are in k order; next is advanced), into
// acc: the few activations the int16 grid could not hold exactly (~0.8% of gaussian bf16 values),
// each times its weights (converted, not read as denormals, so this needs no MXCSR change), in fp32; SCALED: also
// times its group's scale (acc then sums whole terms), else acc is one block's sums, scaled with them.
// Where: 2/4/8 bits take one SCALED pass per row and tile after the blocks, into sums kept apart from out (added
// straight into out each term rounded at out's magnitude: ~1.6x the error relative to sum |x w|). Per block, the
// varying number of residuals per block and row cost a mispredicted loop exit each time (Zen 4, one 4096^2 int4
// g128 layer, M=128 gaussian bf16 rows, 1 thread: 22.2-22.5 ms per tile, 22.7-23.0 per block; avx2 path, 4096 x
// 1024, 1 thread: 9.4-9.6 against 10.3-10.5 ms). int3 keeps the per-block form: there the per-tile pass measured
// 4-6% slower (avx2, M=1 and M=128), its three-word units being dearer to re-read and decode. Also tried: one pass
// per tile, before its row blocks, over every row's residuals sorted by k into an [M, 32] fp32 buffer that seeds
// out: no faster (23.0-23.3 ms). Without any residual work the kernel took ~7.5% less: what the bf16 kernel
// (gptq_cpu_bf16.h) saves on AVX512-BF16 CPUs.
template <int BITS, bool SCALED>
inline void row_residuals_i16(const SmallMI16Args& a, const int32_t* qt, const uint16_t* sz, int64_t m,
                              int32_t& next, int64_t kend, typename V::F (&acc)[kTileCols / V::L]) {
  using F = typename V::F;
  constexpr int L = V::L;
  constexpr int NV = kTileCols / L;
  constexpr int UV = unit_values(BITS), UW = unit_words(BITS);
  const int64_t K = a.w.K;
  const int32_t n = a.res_n[m];
  const int32_t* rk = a.res_k + m * K;
  const int32_t* rg = a.res_g + m * K;
  const float* rl = a.res_lo + m * K;
  int32_t i = next;
  for (; i < n && rk[i] < kend; ++i) {
    // Unsigned: k / UV and k % UV are then a shift and a mask (signed, GCC emitted the round-toward-zero fix-up).
    const uint32_t k = static_cast<uint32_t>(rk[i]);
    const F lo = V::bcast(rl + i);
    const int32_t* kp = qt + (k / UV) * UW * kTileCols;
    const int r = static_cast<int>(k % UV);
    if constexpr (SCALED) {
      const uint16_t* szg = sz + static_cast<int64_t>(rg[i]) * 2 * kTileCols;
      for (int v = 0; v < NV; ++v)
        acc[v] = V::fma(V::mul(lo, V::cvt(value_at<BITS>(kp + v * L, r))), V::load_half(szg + v * L), acc[v]);
    } else {
      for (int v = 0; v < NV; ++v) acc[v] = V::fma(lo, V::cvt(value_at<BITS>(kp + v * L, r)), acc[v]);
    }
  }
  next = i;
}

template <int BITS, int MR>
void small_m_tile_i16(const SmallMI16Args& a, int64_t t, int64_t m0) {
  using F = typename V::F;
  constexpr int L = V::L;
  constexpr int NV = kTileCols / L;
  const TiledWeight& w = a.w;
  const int64_t NB = blocks_i16(w);
  const int32_t* qt = w.qtiles + t * w.k_words() * kTileCols;
  const uint16_t* sz = w.scale_zero + t * w.groups() * 2 * kTileCols;

  F out[MR][NV];
  for (int mm = 0; mm < MR; ++mm)
    for (int v = 0; v < NV; ++v) out[mm][v] = V::zero();
  int32_t next[MR];  // each row's first residual not yet added (row_residuals_i16)
  for (int mm = 0; mm < MR; ++mm) next[mm] = 0;

  BlockCursor cur(w);
  if constexpr (unit_words(BITS) > 1) {
    alignas(64) float bsums[MR * kI16BlocksPerCall * kTileCols];
    for (int64_t blk0 = 0; blk0 < NB; blk0 += kI16BlocksPerCall) {
      const int64_t blk1 = blk0 + kI16BlocksPerCall < NB ? blk0 + kI16BlocksPerCall : NB;
      dot_blocks_i16_outlined<BITS, MR>(a, qt, m0, blk0, blk1, cur, bsums);
      for (int64_t blk = blk0; blk < blk1; ++blk, cur.next()) {
        const int64_t kend = cur.range().k1;
        fold_block_i16<MR>(a, sz, m0, cur, [&](int mm, F (&b)[NV]) {
          const float* src = bsums + (mm * kI16BlocksPerCall + (blk - blk0)) * kTileCols;
          for (int v = 0; v < NV; ++v) b[v] = V::load(src + v * L);
          row_residuals_i16<BITS, false>(a, qt, sz, m0 + mm, next[mm], kend, b);  // int3: per block
        }, out);
      }
    }
  } else {
    // 2/4/8 bits (1-word units): each block inlined and folded straight from registers (the out-of-line form
    // measured ~4% slower for int4 with the weights streaming from DRAM, 2 threads; same speed in cache).
    for (int64_t blk = 0; blk < NB; ++blk, cur.next()) {
      const BlockRange r = cur.range();
      F bsum[MR][NV];
      dot_block_i16<BITS, MR>(a, qt, m0, blk, r.k0, r.k1, bsum);
      fold_block_i16<MR>(a, sz, m0, cur, [&](int mm, F (&b)[NV]) {
        for (int v = 0; v < NV; ++v) b[v] = bsum[mm][v];
      }, out);
    }
    for (int mm = 0; mm < MR; ++mm) {  // the residuals: one pass per row, summed apart from out
      F rsum[NV];
      for (int v = 0; v < NV; ++v) rsum[v] = V::zero();
      row_residuals_i16<BITS, true>(a, qt, sz, m0 + mm, next[mm], w.K, rsum);
      for (int v = 0; v < NV; ++v) out[mm][v] = V::add(out[mm][v], rsum[v]);
    }
  }
  store_tile<MR>(out, a.y, t, w.N, m0);
}

// Tried for M=128 on Zen 4 (avx512vnni, 16 x 4096^2 int4 g128 bf16, 2 threads; this kernel: 12.5 ms per layer,
// dense bf16 torch 10.8-11.4): decoding each column tile once into int16 pairs (in xq's pair order) and sweeping
// rows over the decoded tile, 24 vpdpwssd per pair for 12 rows, with no decode in the loop: 14.9 ms with the whole
// tile decoded (256 KiB in L2), 17.6-19.3 ms with one 128-value block decoded at a time (8 KiB in L1) and every row
// block swept over it, 26.8 ms before an inline-asm vpdpwssd (through the intrinsic GCC 12 copied each of the 24
// accumulators around every vpdpwssd and spilled them), 48.7 ms with the broadcasts folded into vpdpwssd's memory
// operand. The decode this kernel repeats per row block costs less than what the decoded form adds. Also tried
// (raw kernel, same conditions, this form 12.0-12.1 ms): pair-outer order with an inline-asm vpdpwssd, so that
// more rows share each decoded word with only one broadcast live: 6 rows 12.5-12.8 ms, 8 rows 12.6-13.3, 12 rows
// 13.9-14.2.
template <int BITS>
void small_m_gemm_i16_bits(const SmallMI16Args& a, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t)
    for_row_blocks(a.M, [&](auto mr, int64_t m0) { small_m_tile_i16<BITS, decltype(mr)::value>(a, t, m0); });
}

}  // namespace SF_ISA_NS
}  // namespace gptq
}  // namespace slimformer
