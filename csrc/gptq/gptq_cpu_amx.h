// GPTQ x bf16 activations for many rows on AMX tiles (Sapphire Rapids and later Xeons), 2- and 4-bit weights:
// the amx level's large-M route (interface: gptq_cpu.h, LargeMAmxArgs). Included only by the amx TU.
//
// Why: below it the AVX-512 kernels multiply 32 pairs per vdpbf16ps, which Intel cores issue once per 2 cycles, so
// at M=128 a 4096x11008 int4 layer took 64 ms against 10 ms for torch's dense bf16 GEMM (oneDNN on AMX) on a 2-vCPU
// Xeon. One tdpbf16ps multiplies a 16 x 32 bf16 tile A by a 32 x 16 tile B into a 16 x 16 fp32 tile C (16K flops
// in about 16 cycles).
//
// Numerics: those of the bf16 kernel (gptq_cpu_bf16.h). B holds the weights' integers q as bf16 (exact: q < 2^8),
// A the activations as they are, so every product is an exact bf16 product summed in fp32; per quantization group
// the sums C = sum x q are folded as out += scale * (C - zero * sum x) in fp32, the group sums of x coming from
// prepare_rows_bf16 (which also refuses the rows the bf16 kernel refuses: AMX, like vdpbf16ps, flushes denormals).
//
// Layout: A is 16 activation rows x 32 inputs, loaded straight from x [Mp, K] (kernel row order, rows padded to a
// multiple of 16 with zeros by the caller), so x needs no packing. B is 32 inputs x 16 output columns in "VNNI"
// order: tile row p holds, per column, the pair (q[2p], q[2p + 1]). A column tile's (32 columns) B tiles for all of
// K are built once into a per-thread buffer (K / 32 x 2 KiB: 256 KiB at 4096 inputs, in L2) and then swept by every
// pair of activation row blocks. Building a tile row is two shuffles: vpmultishiftqb moves the two values' bit
// fields of each column's 32-bit word to the low bytes of the two 16-bit halves, and vpermw looks the fields up in
// a table of bf16(i mod 2^bits) (the bits above a field, the next field's, only select a repeat of the table).
//
// Per pair of row blocks and group: 4 C tiles (2 row blocks x 2 column halves) accumulate over the group's inputs
// (per 32 inputs: 2 A + 2 B tile loads, 4 tdpbf16ps), are stored, and folded into fp32 totals (4 KiB, in L1); the
// totals go out through store_tile (bias in fp32, one rounding to y's dtype). Needs K and the group size multiples
// of 32 (the glue routes nothing else here).
#pragma once
#include <algorithm>
#include <cstring>
#include <vector>

#include "common/amx_tiles.h"
#include "gptq_cpu_common.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512VBMI__)
#include <immintrin.h>
#define SF_GPTQ_AMX_KERNEL 1

namespace slimformer {
namespace gptq {
namespace SF_ISA_NS {

// Tiles (common/amx_tiles.h): 0-3 C (row block q, column half h at 2q + h), 4-5 A (row blocks), 6-7 B (column
// halves).

// The shuffle constants of build_b_tiles: per pair j of a word, the vpmultishiftqb control that moves fields 2j and
// 2j + 1 (bits BITS * 2j and BITS * (2j + 1); the odd dword of each qword adds 32) to the low bytes of a lane's two
// 16-bit halves, and the vpermw table of bf16(i mod 2^BITS).
template <int BITS>
struct BTileShuffles {
  static_assert(BITS == 2 || BITS == 4, "fields that a 32-entry vpermw table covers");
  static constexpr int kPairsPerWord = 16 / BITS;
  __m512i ctrl[kPairsPerWord];
  __m512i table;
  BTileShuffles() {
    for (int j = 0; j < kPairsPerWord; ++j) {
      alignas(64) uint8_t c[64];
      for (int b = 0; b < 64; ++b) {
        const int dword_hi = (b / 4) % 2, lo_half = (b % 4) < 2;
        c[b] = static_cast<uint8_t>(32 * dword_hi + BITS * (2 * j + (lo_half ? 0 : 1)));
      }
      ctrl[j] = _mm512_load_si512(c);
    }
    alignas(64) uint16_t tb[32];
    for (int i = 0; i < 32; ++i) {
      const float f = static_cast<float>(i & ((1 << BITS) - 1));
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      tb[i] = static_cast<uint16_t>(bits >> 16);  // exact: at most 4 significant bits
    }
    table = _mm512_load_si512(tb);
  }
};

// Column tile t's B tiles for every 32-input step kb: the tile of columns 16h .. 16h + 15 at buf + (2 kb + h) KiB.
template <int BITS>
void build_b_tiles(const TiledWeight& w, int64_t t, const BTileShuffles<BITS>& sh, uint8_t* buf) {
  constexpr int VPW = 32 / BITS, PPW = BTileShuffles<BITS>::kPairsPerWord;  // values, pairs per 32-bit word
  const int64_t steps = w.K / kAmxK, words_per_step = kAmxK / VPW;
  const int32_t* qt = w.qtiles + t * w.k_words() * kTileCols;
  for (int64_t kb = 0; kb < steps; ++kb)
    for (int h = 0; h < 2; ++h) {
      uint8_t* tile = buf + (2 * kb + h) * kAmxTileBytes;
      for (int64_t wi = 0; wi < words_per_step; ++wi) {
        const __m512i words = _mm512_loadu_si512(qt + (kb * words_per_step + wi) * kTileCols + 16 * h);
        for (int j = 0; j < PPW; ++j)  // tile row wi * PPW + j: inputs 32 kb + 2 (wi * PPW + j) and the next
          _mm512_store_si512(tile + 64 * (wi * PPW + j),
                             _mm512_permutexvar_epi16(_mm512_multishift_epi64_epi8(sh.ctrl[j], words), sh.table));
      }
    }
}

template <int BITS>
void large_m_gemm_amx_bits(const LargeMAmxArgs& a, int64_t t0, int64_t t1) {
  const TiledWeight& w = a.w;
  const int64_t K = w.K, G = w.groups(), gs = w.group_size < K ? w.group_size : K, steps = K / kAmxK;
  const int64_t MB = (a.M + 15) / 16;
  thread_local std::vector<uint8_t> store;
  const size_t need = static_cast<size_t>(steps * 2 * kAmxTileBytes + 64);
  if (store.size() < need) store.resize(need);
  uint8_t* bbuf = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(store.data()) + 63) & ~uintptr_t{63});
  alignas(64) float cbuf[4][256];
  alignas(64) float tot[2][16][kTileCols];
  static const AmxTileConfig config;
  _tile_loadconfig(&config);
  const int64_t xstride = K * 2;  // bytes per activation row
  const BTileShuffles<BITS> shuffles;
  for (int64_t t = t0; t < t1; ++t) {
    build_b_tiles<BITS>(w, t, shuffles, bbuf);
    const uint16_t* sz = w.scale_zero + t * G * 2 * kTileCols;
    for (int64_t mb = 0; mb < MB; mb += 2) {
      const bool two = mb + 1 < MB;
      const uint16_t* x0 = a.x + mb * 16 * K;
      const uint16_t* x1 = x0 + 16 * K;
      std::memset(tot, 0, sizeof(tot));
      for (int64_t g = 0; g < G; ++g) {
        const int64_t kb0 = g * gs / kAmxK, kb1 = std::min(K, (g + 1) * gs) / kAmxK;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t kb = kb0; kb < kb1; ++kb) {
          const uint8_t* b = bbuf + 2 * kb * kAmxTileBytes;
          _tile_loadd(4, x0 + kb * kAmxK, xstride);
          _tile_loadd(6, b, 64);
          _tile_loadd(7, b + kAmxTileBytes, 64);
          _tile_dpbf16ps(0, 4, 6);
          _tile_dpbf16ps(1, 4, 7);
          if (two) {
            _tile_loadd(5, x1 + kb * kAmxK, xstride);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
          }
        }
        _tile_stored(0, cbuf[0], 64);
        _tile_stored(1, cbuf[1], 64);
        if (two) {
          _tile_stored(2, cbuf[2], 64);
          _tile_stored(3, cbuf[3], 64);
        }
        // out += scale * (sum x q - zero * sum x), per column half h and row block q
        const uint16_t* szg = sz + g * 2 * kTileCols;
        for (int h = 0; h < 2; ++h) {
          const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(szg + 16 * h)));
          const __m512 zero =
              _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(szg + kTileCols + 16 * h)));
          for (int q = 0; q < (two ? 2 : 1); ++q) {
            const float* c = cbuf[2 * q + h];
            const float* xs = a.xsum + (mb + q) * 16 * G + g;
            for (int i = 0; i < 16; ++i) {
              float* o = &tot[q][i][16 * h];
              const __m512 corr = _mm512_fnmadd_ps(zero, _mm512_set1_ps(xs[i * G]), _mm512_load_ps(c + 16 * i));
              _mm512_store_ps(o, _mm512_fmadd_ps(scale, corr, _mm512_load_ps(o)));
            }
          }
        }
      }
      for (int q = 0; q < (two ? 2 : 1); ++q) {
        const int64_t m0 = (mb + q) * 16, rows = std::min<int64_t>(16, a.M - m0);
        for (int64_t i = 0; i < rows; ++i) {
          typename V::F out[1][kTileCols / V::L];
          for (int v = 0; v < kTileCols / V::L; ++v) out[0][v] = V::load(&tot[q][i][v * V::L]);
          store_tile<1>(out, a.y, t, w.N, m0 + i);
        }
      }
    }
  }
  _tile_release();
}

inline void large_m_gemm_amx_any(const LargeMAmxArgs& a, int64_t t0, int64_t t1) {
  switch (a.w.bits) {
    case 2: large_m_gemm_amx_bits<2>(a, t0, t1); break;
    case 4: large_m_gemm_amx_bits<4>(a, t0, t1); break;
    default: break;  // the glue routes only bf16_bits widths here
  }
}

}  // namespace SF_ISA_NS
}  // namespace gptq
}  // namespace slimformer
#endif
