// 2:4 x bf16 for many activation rows on AMX tiles (Sapphire Rapids and later Xeons), included by
// sparse24_cpu_kernel.h inside the amx TU. It is that level's large-M bf16 route (pack_wide_bf16 / gemm_wide_bf16 of
// the kernel table), in place of the AVX-512 one of sparse24_cpu_wide.h.
//
// One tdpbf16ps multiplies a 16 x 32 bf16 tile A by a 32 x 16 tile B (stored as 16 rows of 16 pairs, "VNNI" order)
// into a 16 x 16 fp32 tile C: 16K flops in 16 cycles, 16x what vdpbf16ps does on the same core. The tensor unit has
// no use for sparsity, so the weight is decompressed to dense bf16 tiles on the fly and half the multiplies are of
// zeros; at these sizes the dense work on AMX still takes a fraction of what the sparse multiply-adds take on
// AVX-512. The roles are turned around so that the weight needs no transposing: A is 16 output rows x 32 inputs of
// W, exactly the rows the 2:4 expansion produces (one vpexpandw of 16 kept values per row and 32 inputs), B is 32
// inputs x 16 activation rows, which pack_amx_bf16 lays out once per call (16 pairs of inputs per tile row: a 16 x 16
// transpose of 32-bit pairs), and C = W x^T is y's transpose, turned around in registers as it is written out.
//
// gemm_amx_bf16 takes the output rows 32 at a time: their K inputs are expanded into a per-thread buffer of A tiles
// (32 x K x 2 bytes, 256 KiB at 4096 inputs, which stays in L2), then for each pair of activation row blocks 2 x 2 C
// tiles accumulate over all of K (per 32 inputs: 2 A and 2 B tile loads, 4 tdpbf16ps), and go out through a 16 x 16
// transpose with the bias added in fp32 and one rounding to bf16. The packed activations (M x K x 2 bytes) are read
// once per 32 output rows, from L2 up to 128 rows at 4096 inputs; beyond 1 MiB of them K goes in chunks (below).
// While a pass multiplies, the next pass's values and bitmask are prefetched into L2 a few lines per step, so its
// expansion does not wait on DRAM.
//
// Tails: activation rows past M and inputs past K are packed as zeros; output rows past the range are expanded as
// zeros (their sums never written); the tail block of inputs (K % 32, a multiple of 4) expands only its real groups.
// A group that is not 2:4 is reported (the 32-input word fails the check) and expanded as columns 0, 1, so no
// expansion reads more than the block's kept values.
#pragma once
#include <algorithm>
#include <cstring>
#include <vector>

#include "common/amx_tiles.h"
#include "sparse24/sparse24_cpu.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512VBMI2__)
#include <immintrin.h>

namespace slimformer {
namespace sparse24 {
namespace SF_ISA_NS {

constexpr int64_t kAmxRows = 32;  // output rows per pass: two A tiles
inline int64_t amx_k_blocks(int64_t K) { return (K + kAmxK - 1) / kAmxK; }
inline int64_t amx_packed_bytes(int64_t M, int64_t K) { return wide_row_blocks(M) * amx_k_blocks(K) * kAmxTileBytes; }

// Tile (mb, kb) of the packed activations, at (mb * amx_k_blocks(K) + kb) * kAmxTileBytes: row p's 32-bit word j is
// (x[16 mb + j, 32 kb + 2p], x[16 mb + j, 32 kb + 2p + 1]), zeros past M and K. Blocks [kb0, kb1) of every row block.
inline void pack_amx_bf16(const uint16_t* x, int64_t M, int64_t K, uint8_t* packed, int64_t kb0, int64_t kb1) {
  const int64_t MB = wide_row_blocks(M), KBk = amx_k_blocks(K);
  const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          _mm512_set1_epi32(static_cast<int>(2 * K)));
  for (int64_t mb = 0; mb < MB; ++mb) {
    const int64_t real = std::min<int64_t>(16, M - 16 * mb);
    const __mmask16 rmask = static_cast<__mmask16>(real >= 16 ? 0xFFFF : (1u << real) - 1);
    const uint16_t* xr = x + 16 * mb * K;
    for (int64_t kb = kb0; kb < kb1; ++kb) {
      uint8_t* tile = packed + (mb * KBk + kb) * kAmxTileBytes;
      for (int64_t p = 0; p < 16; ++p) {
        const int64_t col = kAmxK * kb + 2 * p;  // K is even: a pair is all in or all out
        __m512i v = _mm512_setzero_si512();
        if (col < K) v = _mm512_mask_i32gather_epi32(v, rmask, rows, xr + col, 1);
        _mm512_store_si512(tile + 64 * p, v);
      }
    }
  }
}

// The 16 x 16 fp32 block at c (row stride 16) transposed: out[j] = column j.
inline void transpose16(const float* c, __m512 out[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    const __m512 a = _mm512_load_ps(c + 16 * i), b = _mm512_load_ps(c + 16 * (i + 1));
    t[i] = _mm512_unpacklo_ps(a, b);  // per 128-bit lane: a0 b0 a1 b1
    t[i + 1] = _mm512_unpackhi_ps(a, b);  // a2 b2 a3 b3
  }
  for (int g = 0; g < 16; g += 4) {  // u[g + c], lane L: column 4L + c of rows g .. g + 3
    const __m512d t0 = _mm512_castps_pd(t[g]), t1 = _mm512_castps_pd(t[g + 1]);
    const __m512d t2 = _mm512_castps_pd(t[g + 2]), t3 = _mm512_castps_pd(t[g + 3]);
    u[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
    u[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
    u[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
    u[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
  }
  for (int c = 0; c < 4; ++c) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x44), v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xEE);
    const __m512 w0 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x44),
                 w1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xEE);
    out[c] = _mm512_shuffle_f32x4(v0, w0, 0x88);
    out[4 + c] = _mm512_shuffle_f32x4(v0, w0, 0xDD);
    out[8 + c] = _mm512_shuffle_f32x4(v1, w1, 0x88);
    out[12 + c] = _mm512_shuffle_f32x4(v1, w1, 0xDD);
  }
}

// Tiles (common/amx_tiles.h): 0-3 the sums C, 4-5 the weight tiles A, 6-7 the activation tiles B.

// A 32-input word of the bitmask keeps 2 of each group of 4.
inline bool word_is_2_of_4(uint32_t w) { return groups_are_2_of_4(w | uint64_t{0x33333333} << 32); }

// Inputs per chunk, in 32-input blocks: the packed activations of one chunk (row blocks x blocks x 1 KiB) are at most
// this many bytes, so that they stay in L2 beside the A tiles while every pass of the call reads them.
constexpr int64_t kAmxChunkBytes = int64_t{1} << 20;
constexpr int64_t kAmxExpandAhead = 32;  // blocks of 32 inputs (16 kept bf16 values, 32 bytes) the expansion prefetches

// y[:, n0:n1) = x @ W[n0:n1)^T from the packed activations (a.xb unused).
//
// Where the packed activations of all of K would not stay in L2 (at 128 rows: K above 4096), K is taken in chunks,
// the chunk loop outside the passes, and each pass's C tiles wait between chunks in a per-thread buffer (4 KiB per
// pass and pair of row blocks); otherwise every pass streamed all of them from L3 (11008 inputs, M=128: 2.8 MB a
// pass, 1.30x dense torch bf16's time).
inline bool gemm_amx_bf16(const GemmArgs& a, const uint8_t* packed, int64_t n0, int64_t n1) {
  const int64_t K = a.K, KBk = amx_k_blocks(K), MB = wide_row_blocks(a.M), KV = K / 2, KB = (K + 7) / 8;
  const int64_t full = K / kAmxK, tail_groups = (K % kAmxK) / 4;
  const int64_t chunk = std::min(KBk, std::max<int64_t>(8, kAmxChunkBytes / (MB * kAmxTileBytes)));
  const int64_t pairs = (MB + 1) / 2, passes = (n1 - n0 + kAmxRows - 1) / kAmxRows;
  const uint16_t* values = static_cast<const uint16_t*>(a.values);
  thread_local std::vector<uint8_t> store;
  if (store.size() < static_cast<size_t>(chunk * 2 * kAmxTileBytes + 64)) store.resize(chunk * 2 * kAmxTileBytes + 64);
  uint8_t* abuf = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(store.data()) + 63) & ~uintptr_t{63});
  thread_local std::vector<float> held;  // C tiles between chunks: [pass][pair][4 tiles][256]
  if (chunk < KBk && held.size() < static_cast<size_t>(passes * pairs * 4 * 256 + 16))
    held.resize(passes * pairs * 4 * 256 + 16);
  float* hbuf = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(held.data()) + 63) & ~uintptr_t{63});
  alignas(64) float cbuf[4][256];
  static const AmxTileConfig config;
  _tile_loadconfig(&config);
  bool good = true;
  for (int64_t kc0 = 0; kc0 < KBk; kc0 += chunk) {
    const int64_t kc1 = std::min(KBk, kc0 + chunk), nblk = kc1 - kc0;
    const bool first = kc0 == 0, last = kc1 == KBk;
    for (int64_t nb = n0; nb < n1; nb += kAmxRows) {
      const int64_t rows = std::min(kAmxRows, n1 - nb);
      // the 32 rows' A tiles of the chunk: block kb's two tiles (rows 0-15, 16-31) at abuf + (kb - kc0) * 2 KiB
      for (int64_t r = 0; r < kAmxRows; ++r) {
        uint8_t* dst = abuf + (r / 16) * kAmxTileBytes + (r % 16) * 64;
        if (r >= rows) {
          for (int64_t kb = 0; kb < nblk; ++kb) _mm512_store_si512(dst + kb * 2 * kAmxTileBytes, _mm512_setzero_si512());
          continue;
        }
        const uint16_t* v = values + (nb + r - a.row0) * KV;
        const uint8_t* mk = a.bitmask + (nb + r - a.row0) * KB;
        for (int64_t kb = kc0; kb < std::min(kc1, full); ++kb) {
          // 1 KiB ahead in the row (rows follow each other, so past its end into the next one), a line per two
          // blocks: with few activation rows the passes are short and the next pass's prefetch has no time to land.
          // Raw kernel, 8 x 4096x11008, 2 threads, huge pages, ms per layer, without / with: M=8 5.0-5.3 / 4.5,
          // M=16 5.4-5.6 / 4.6-4.8, M=128 8.1 / 7.6-7.7.
          if (kb % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(v + 16 * (kb + kAmxExpandAhead)), _MM_HINT_T0);
          uint32_t bits;
          std::memcpy(&bits, mk + 4 * kb, 4);
          if (!word_is_2_of_4(bits)) {
            good = false;
            bits = 0x33333333u;
          }
          _mm512_store_si512(dst + (kb - kc0) * 2 * kAmxTileBytes,
                             _mm512_maskz_expand_epi16(bits, _mm512_castsi256_si512(_mm256_loadu_si256(
                                                                 reinterpret_cast<const __m256i*>(v + 16 * kb)))));
        }
        if (tail_groups && kc1 > full) {
          const uint32_t keep = (1u << (4 * tail_groups)) - 1;  // tail_groups < 8
          uint32_t bits = 0;
          std::memcpy(&bits, mk + 4 * full, static_cast<size_t>((4 * tail_groups + 7) / 8));
          bits &= keep;
          if (!word_is_2_of_4(bits | (0x33333333u & ~keep))) {
            good = false;
            bits = 0x33333333u & keep;
          }
          _mm512_store_si512(dst + (full - kc0) * 2 * kAmxTileBytes,
                             _mm512_maskz_expandloadu_epi16(bits, v + 16 * full));
        }
      }
      // the next pass's values and bitmask of this chunk (a run of bytes in each row) are prefetched into L2 over
      // this pass's multiplies, a few lines per step, so that its expansion reads from cache, not DRAM
      const int64_t next = std::min(nb + kAmxRows, n1), next_rows = std::min(kAmxRows, n1 - next);
      const int64_t vb0 = 32 * kc0, vb1 = std::min<int64_t>(2 * KV, 32 * kc1), mb0 = 4 * kc0,
                    mb1 = std::min<int64_t>(KB, 4 * kc1);
      const int64_t v_lines = (vb1 - vb0 + 63) / 64 + 1, m_lines = (mb1 - mb0 + 63) / 64 + 1;
      const int64_t total_lines = next_rows * (v_lines + m_lines);
      const int64_t steps = pairs * nblk, per_step = (total_lines + steps - 1) / steps;
      int64_t line = 0;
      auto prefetch_some = [&] {
        for (int64_t i = 0; i < per_step && line < total_lines; ++i, ++line) {
          const int64_t r = line / (v_lines + m_lines), j = line % (v_lines + m_lines);
          const char* p = j < v_lines
                              ? reinterpret_cast<const char*>(values + (next + r - a.row0) * KV) + vb0 + 64 * j
                              : reinterpret_cast<const char*>(a.bitmask + (next + r - a.row0) * KB) + mb0 +
                                    64 * (j - v_lines);
          _mm_prefetch(p, _MM_HINT_T1);
        }
      };
      for (int64_t mb = 0; mb < MB; mb += 2) {
        const bool two = mb + 1 < MB;
        const uint8_t* b0 = packed + mb * KBk * kAmxTileBytes;
        const uint8_t* b1 = b0 + KBk * kAmxTileBytes;
        float* hold = hbuf + (((nb - n0) / kAmxRows) * pairs + mb / 2) * 4 * 256;
        if (first) {
          _tile_zero(0);
          _tile_zero(1);
          _tile_zero(2);
          _tile_zero(3);
        } else {
          _tile_loadd(0, hold, 64);
          _tile_loadd(1, hold + 256, 64);
          _tile_loadd(2, hold + 512, 64);
          _tile_loadd(3, hold + 768, 64);
        }
        if (two) {
          for (int64_t kb = kc0; kb < kc1; ++kb) {
            const uint8_t* at = abuf + (kb - kc0) * 2 * kAmxTileBytes;
            _tile_loadd(4, at, 64);
            _tile_loadd(6, b0 + kb * kAmxTileBytes, 64);
            _tile_loadd(5, at + kAmxTileBytes, 64);
            _tile_loadd(7, b1 + kb * kAmxTileBytes, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
            prefetch_some();
          }
        } else {
          for (int64_t kb = kc0; kb < kc1; ++kb) {
            const uint8_t* at = abuf + (kb - kc0) * 2 * kAmxTileBytes;
            _tile_loadd(4, at, 64);
            _tile_loadd(6, b0 + kb * kAmxTileBytes, 64);
            _tile_loadd(5, at + kAmxTileBytes, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(2, 5, 6);
            prefetch_some();
          }
        }
        if (!last) {  // the sums wait for the next chunk
          _tile_stored(0, hold, 64);
          _tile_stored(1, hold + 256, 64);
          _tile_stored(2, hold + 512, 64);
          _tile_stored(3, hold + 768, 64);
          continue;
        }
        // C tile 2h + q: output rows nb + 16h .. (A half h) x activation rows 16 (mb + q) .. (B tile q)
        _tile_stored(0, cbuf[0], 64);
        _tile_stored(1, cbuf[1], 64);
        _tile_stored(2, cbuf[2], 64);
        _tile_stored(3, cbuf[3], 64);
        for (int h = 0; h < 2; ++h) {
          const int64_t n = nb + 16 * h, nreal = std::min<int64_t>(16, rows - 16 * h);
          if (nreal <= 0) break;
          const __mmask16 k = static_cast<__mmask16>(nreal >= 16 ? 0xFFFF : (1u << nreal) - 1);
          const __m512 bias = a.bias != nullptr ? _mm512_maskz_loadu_ps(k, a.bias + n) : _mm512_setzero_ps();
          for (int q = 0; q < (two ? 2 : 1); ++q) {
            __m512 col[16];
            transpose16(cbuf[2 * h + q], col);
            const int64_t m0 = 16 * (mb + q), mreal = std::min<int64_t>(16, a.M - m0);
            for (int64_t j = 0; j < mreal; ++j) {
              const __m512 v = _mm512_add_ps(col[j], bias);
              if (a.yb != nullptr)
                _mm256_mask_storeu_epi16(a.yb + (m0 + j) * a.N + n, k, (__m256i)_mm512_cvtneps_pbh(v));
              else
                _mm512_mask_storeu_ps(a.y + (m0 + j) * a.N + n, k, v);
            }
          }
        }
      }
    }
  }
  _tile_release();
  return good;
}

}  // namespace SF_ISA_NS
}  // namespace sparse24
}  // namespace slimformer
#endif
