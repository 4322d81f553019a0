// 2:4 sparse GEMM kernels of one ISA, included once by each per-ISA TU (sparse24_cpu_<isa>.cpp) after it has
// defined SF_ISA_NS; the TU's compile flags (CMake, by file suffix) decide which chunk implementation is built.
//
// Small M (the decode path, memory-bound): y[m, n] = sum over the kept weights of row n of value * x[m, column].
// The weight streams once; the activations stay in L1. Work goes in chunks of KC inputs (KC/2 kept values, KC/8
// bitmask bytes): the chunk's mask bits become, per kept value, the index of its column inside the chunk, and a
// permute picks those activations out of the chunk's KC inputs held in registers (AVX-512: vpermt2ps over 32
// inputs; AVX2: two vpermps over 16 and a blend), so each kept value costs one FMA lane and no dense zero is ever
// multiplied. Index of a kept value = 4 * group + first/second column of the group's nibble (kPairOfNibble, via
// a 32-entry table: one vpermt2d on AVX-512, a 256-entry byte table on AVX2). R output rows share each loaded
// activation chunk and MB activation rows share each decoded weight chunk (accumulators R x MB); the R-row tile
// of weights (R * K bytes for bf16 values) stays in L1 while the M blocks sweep it. A nibble that is not 2:4 sets
// bit 7 of its index (ignored by the permutes, so reads stay inside the chunk), which the kernel ORs together and
// reports.
//
// The tail chunk (K not a multiple of KC) runs the same code on zero-padded copies (padding groups get the valid
// nibble 0b0011, their values and activations are 0).
//
// Large M with bf16 activations and bf16 values (stored, or unpacked from 2:4 + int4) runs the kernel of
// sparse24_cpu_wide.h (activation rows in the lanes), or on the amx level that of sparse24_cpu_amx.h (tiles); where
// that route is switched off (SLIMFORMER_SPARSE24_WIDE=0), and for fp32 arithmetic at large M on amx, decompress():
// dense fp32/bf16 rows for the dense GEMM (the glue picks the row count, tile by tile).
#pragma once
#include <cstring>

#include "common/cpu_kernel_util.h"
#include "common/float_convert.h"
#include "sparse24/sparse24_cpu.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace slimformer {
namespace sparse24 {
namespace SF_ISA_NS {

// Lookup tables of the vector kernels: entry n (0-15) the first kept column of nibble n, entry 16 + n the second
// (kBadNibble where the nibble is not 2:4), the rest 0.
template <class T, int Size>
struct PairTable {
  alignas(64) T v[Size];
  constexpr PairTable() : v() {
    for (int n = 0; n < 16; ++n) {
      v[n] = static_cast<T>(first_of(pair_of_nibble(n)));
      v[16 + n] = static_cast<T>(second_of(pair_of_nibble(n)));
    }
  }
};

#if defined(__AVX512F__)
// ------------------------------------------------------------------------------------ AVX-512: 32 inputs a chunk
inline constexpr PairTable<int32_t, 32> kPairs32{};
inline constexpr PairTable<uint8_t, 64> kPairs8{};

struct Ops {
  static constexpr int KC = 32;
  static constexpr int R = 4, MB = 4;  // 16 accumulators + 8 activation registers of 32
  using XElem = float;
  using Acc = __m512;
  struct X {
    __m512 lo, hi;
  };
  struct W {
    __m512i idx;
    __m512 val;
  };
  using Bad = __m512i;
  static Bad no_bad() { return _mm512_setzero_si512(); }
  static bool is_bad(Bad b) { return _mm512_test_epi32_mask(b, _mm512_set1_epi32(kBadNibble)) != 0; }
  static Bad merge_bad(Bad a, Bad b) { return _mm512_or_si512(a, b); }
  static Acc zero() { return _mm512_setzero_ps(); }
  static Acc add(Acc a, Acc b) { return _mm512_add_ps(a, b); }
  static float reduce(Acc a) { return _mm512_reduce_add_ps(a); }
  static X load_x(const float* x) { return X{_mm512_loadu_ps(x), _mm512_loadu_ps(x + 16)}; }
  static W load_w(const void* values, bool bf16, const uint8_t* mask, Bad& bad) {
    // lane i: kept value i of the chunk, in group i / 2; nibble of that group, then its first (even lane) or second
    // (odd lane) column from the 32-entry table, plus 4 * group
    const __m512i shifts = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
    const __m512i odd = _mm512_setr_epi32(0, 16, 0, 16, 0, 16, 0, 16, 0, 16, 0, 16, 0, 16, 0, 16);
    uint32_t bits;
    std::memcpy(&bits, mask, 4);
    const __m512i nib = _mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(bits)), shifts);
    const __m512i sel = _mm512_ternarylogic_epi32(nib, _mm512_set1_epi32(0xF), odd, 0xEA);  // (nib & 15) | odd
    const __m512i pos =
        _mm512_permutex2var_epi32(_mm512_load_si512(kPairs32.v), sel, _mm512_load_si512(kPairs32.v + 16));
    bad = _mm512_or_si512(bad, pos);
    const __m512i idx = _mm512_add_epi32(pos, shifts);  // + 4 * group, which is also the nibble's shift
    __m512 val;
    if (bf16)
      val = _mm512_castsi512_ps(_mm512_slli_epi32(
          _mm512_cvtepu16_epi32(_mm256_loadu_si256(static_cast<const __m256i*>(values))), 16));
    else
      val = _mm512_loadu_ps(static_cast<const float*>(values));
    return W{idx, val};
  }
  static Acc fma(const W& w, const X& x, Acc acc) {
    return _mm512_fmadd_ps(w.val, _mm512_permutex2var_ps(x.lo, w.idx, x.hi), acc);
  }
};

#if defined(__AVX512BF16__) && defined(__AVX512VBMI__)
// ------------------------------------- AVX-512 BF16 + VBMI: bf16 activations and values, 64 inputs a chunk
// 32 kept values per chunk, multiplied in pairs by vdpbf16ps (exact bf16 products, fp32 sums) with no conversion:
// the activations stay bf16 and vpermt2w picks one per kept value out of the chunk's 64. Word index of kept value j
// (group j / 2): vpmultishiftqb moves the group's nibble to the low byte of word j, a ternlog keeps it and adds 16
// for odd j, vpermb looks up the column in the 32-entry table, and 4 * group is added. 7 vector instructions per 32
// kept values and activation row, against 18 for the fp32 form above.
struct OpsBf16 {
  static constexpr int KC = 64;
  static constexpr int R = 4, MB = 4;
  using XElem = uint16_t;
  using Acc = __m512;
  struct X {
    __m512i lo, hi;
  };
  struct W {
    __m512i idx, val;
  };
  using Bad = __m512i;
  static Bad no_bad() { return _mm512_setzero_si512(); }
  static bool is_bad(Bad b) { return _mm512_test_epi16_mask(b, _mm512_set1_epi16(kBadNibble)) != 0; }
  static Bad merge_bad(Bad a, Bad b) { return _mm512_or_si512(a, b); }
  static Acc zero() { return _mm512_setzero_ps(); }
  static Acc add(Acc a, Acc b) { return _mm512_add_ps(a, b); }
  static float reduce(Acc a) { return _mm512_reduce_add_ps(a); }
  static X load_x(const uint16_t* x) { return X{_mm512_loadu_si512(x), _mm512_loadu_si512(x + 32)}; }
  static W load_w(const void* values, bool, const uint8_t* mask, Bad& bad) {
    // word j: control byte 4 * (j / 2) (the group's nibble to the low byte), base 4 * (j / 2), odd flag 16
    const __m512i ctrl = _mm512_set_epi16(60, 60, 56, 56, 52, 52, 48, 48, 44, 44, 40, 40, 36, 36, 32, 32, 28, 28, 24,
                                          24, 20, 20, 16, 16, 12, 12, 8, 8, 4, 4, 0, 0);
    const __m512i odd = _mm512_set1_epi32(16 << 16);
    uint64_t bits;
    std::memcpy(&bits, mask, 8);
    const __m512i nib = _mm512_multishift_epi64_epi8(ctrl, _mm512_set1_epi64(static_cast<long long>(bits)));
    const __m512i sel = _mm512_ternarylogic_epi32(nib, _mm512_set1_epi16(0xF), odd, 0xEA);  // (nib & 15) | odd
    const __m512i pos = _mm512_permutexvar_epi8(sel, _mm512_load_si512(kPairs8.v));
    bad = _mm512_or_si512(bad, pos);
    return W{_mm512_add_epi16(pos, ctrl), _mm512_loadu_si512(values)};
  }
  static Acc fma(const W& w, const X& x, Acc acc) {
    const __m512i picked = _mm512_permutex2var_epi16(x.lo, w.idx, x.hi);
    return _mm512_dpbf16_ps(acc, (__m512bh)w.val, (__m512bh)picked);
  }
};
#endif
#elif defined(__AVX2__)
// -------------------------------------------------------------------------------------- AVX2: 16 inputs a chunk
// For a bitmask byte (groups 2j and 2j + 1 of 8 inputs): the in-chunk column of each of its 4 kept values, one
// byte each (bit 7 set for a nibble that is not 2:4).
struct ByteTable {
  uint32_t idx[256];
  constexpr ByteTable() : idx() {
    for (int b = 0; b < 256; ++b) {
      const uint8_t lo = pair_of_nibble(b & 15), hi = pair_of_nibble(b >> 4);
      const uint32_t c0 = first_of(lo), c1 = second_of(lo), c2 = first_of(hi) | (hi == kBadNibble ? 0 : 4),
                     c3 = second_of(hi) | (hi == kBadNibble ? 0 : 4);
      idx[b] = c0 | c1 << 8 | c2 << 16 | c3 << 24;
    }
  }
};
inline constexpr ByteTable kByteTable{};

struct Ops {
  static constexpr int KC = 16;
  static constexpr int R = 4, MB = 2;  // 8 accumulators + 4 activation registers of 16
  using XElem = float;
  using Acc = __m256;
  struct X {
    __m256 lo, hi;
  };
  struct W {
    __m256i idx;
    __m256 val;
  };
  using Bad = uint64_t;
  static Bad no_bad() { return 0; }
  static bool is_bad(Bad b) { return (b & 0x8080808080808080ull) != 0; }
  static Bad merge_bad(Bad a, Bad b) { return a | b; }
  static Acc zero() { return _mm256_setzero_ps(); }
  static Acc add(Acc a, Acc b) { return _mm256_add_ps(a, b); }
  static float reduce(Acc a) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
  }
  static X load_x(const float* x) { return X{_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8)}; }
  static W load_w(const void* values, bool bf16, const uint8_t* mask, Bad& bad) {
    const uint64_t bytes = kByteTable.idx[mask[0]] | (static_cast<uint64_t>(kByteTable.idx[mask[1]] + 0x08080808u) << 32);
    bad |= bytes;
    const __m256i idx = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(bytes)));
    __m256 val;
    if (bf16)
      val = _mm256_castsi256_ps(_mm256_slli_epi32(
          _mm256_cvtepu16_epi32(_mm_loadu_si128(static_cast<const __m128i*>(values))), 16));
    else
      val = _mm256_loadu_ps(static_cast<const float*>(values));
    return W{idx, val};
  }
  static Acc fma(const W& w, const X& x, Acc acc) {
    const __m256 lo = _mm256_permutevar8x32_ps(x.lo, w.idx), hi = _mm256_permutevar8x32_ps(x.hi, w.idx);
    // column >= 8 (bit 3) takes the upper half of the chunk: bit 3 moved to the sign bit selects
    const __m256 picked = _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(w.idx, 28)));
    return _mm256_fmadd_ps(w.val, picked, acc);
  }
};
#else
// ---------------------------------------------------------------------------------------- portable: 8 inputs
struct Ops {
  static constexpr int KC = 8;
  static constexpr int R = 2, MB = 1;
  using XElem = float;
  using Acc = float;
  struct X {
    const float* p;
  };
  struct W {
    float val[4];
    uint8_t col[4];
  };
  using Bad = uint8_t;
  static Bad no_bad() { return 0; }
  static bool is_bad(Bad b) { return (b & kBadNibble) != 0; }
  static Bad merge_bad(Bad a, Bad b) { return static_cast<Bad>(a | b); }
  static Acc zero() { return 0.f; }
  static Acc add(Acc a, Acc b) { return a + b; }
  static float reduce(Acc a) { return a; }
  static X load_x(const float* x) { return X{x}; }
  static W load_w(const void* values, bool bf16, const uint8_t* mask, Bad& bad) {
    W w;
    const uint8_t lo = pair_of_nibble(mask[0] & 15), hi = pair_of_nibble(mask[0] >> 4);
    bad |= lo | hi;
    w.col[0] = lo & 3;
    w.col[1] = lo >> 2 & 3;
    w.col[2] = 4 | (hi & 3);
    w.col[3] = 4 | (hi >> 2 & 3);
    for (int i = 0; i < 4; ++i)
      w.val[i] = bf16 ? bf16_to_float(static_cast<const uint16_t*>(values)[i])
                      : static_cast<const float*>(values)[i];
    return w;
  }
  static Acc fma(const W& w, const X& x, Acc acc) {
    for (int i = 0; i < 4; ++i) acc += w.val[i] * x.p[w.col[i]];
    return acc;
  }
};
#endif

#ifndef SF_S24_PREFETCH
#define SF_S24_PREFETCH 0
#endif
constexpr int kPrefetchBytes = SF_S24_PREFETCH;
// The one-row kernel's software prefetch: values into L2 this many bytes ahead, the bitmask (into L1) an eighth of it.
// Measured on Zen 4 through the op (M=1, 16 x 4096x11008 bf16, 2 threads, alternating, median ratio of GB/s to no
// prefetch over 45 rounds where the read bandwidth probed 45-58 GB/s and 5 where it probed ~32): 1 KiB 1.08 / 1.10,
// 2 KiB 1.04 / 1.06, 3 KiB 1.06 / 1.23; an earlier 40 rounds: 2 KiB 1.06 / 1.08, 4 KiB 0.98 / 1.05; into L1
// (512 B-2 KiB) 0.87-0.92.
constexpr int64_t kOneRowAhead = 1024;
// The level's own prefetch of one chunk's values (vp) and bitmask (mp), where it has one (amx: measured on Intel).
inline void level_prefetch(const uint8_t* vp, const uint8_t* mp) {
  if constexpr (kPrefetchBytes > 0) {
    __builtin_prefetch(vp + kPrefetchBytes);
    __builtin_prefetch(mp + kPrefetchBytes / 4);
  }
}
// Rows [n0, n0 + R) of W against activation rows [m0, m0 + MB), values bf16 (VBF16) or fp32. Everything the loop
// reads is copied to locals first: through the argument struct GCC reloaded the pointers and the dtype flag (and
// stored the bad-nibble accumulator) on every chunk, since the stores might alias them.
template <class Ops, int R, int MB, bool VBF16>
void gemm_tile(const GemmArgs& a, const typename Ops::XElem* x, int64_t n0, int64_t m0,
               typename Ops::Bad& bad_out) {
  constexpr int KC = Ops::KC;
  constexpr int vsize = VBF16 ? 2 : 4;
  const int64_t K = a.K, KB = (K + 7) / 8, KV = K / 2;
  const uint8_t* vrow[R];
  const uint8_t* mrow[R];
  for (int r = 0; r < R; ++r) {
    vrow[r] = static_cast<const uint8_t*>(a.values) + (n0 + r - a.row0) * KV * vsize;
    mrow[r] = a.bitmask + (n0 + r - a.row0) * KB;
  }
  const typename Ops::XElem* xrow = x + m0 * K;
  typename Ops::Bad bad = Ops::no_bad();
  typename Ops::Acc acc[R][MB];
  for (int r = 0; r < R; ++r)
    for (int mb = 0; mb < MB; ++mb) acc[r][mb] = Ops::zero();
  const int64_t full = K / KC;
  int64_t c = 0;
  if constexpr (R == 1 && MB == 1) {
    // One row against one activation row: four chunks at a time into four accumulators, or the loop runs at the
    // multiply-add's latency instead of its throughput (plain variables: as arrays GCC kept them in memory).
    // Measured on Zen 4 through the op, 1 thread, one layer in cache, M=1, time before / after: avx512bf16 bf16
    // 4096x1024 1.16x, 1536x2048 1.13x; fp32 1536x2048 1.08x; avx2 (fp32 arithmetic) 1.18-1.22x. Streaming from
    // DRAM (16 x 4096x11008) it is the memory that sets the pace: 0.98x, within the noise; there the prefetch
    // (kOneRowAhead) gains a little.
    const uint8_t* vp = vrow[0];
    const uint8_t* mp = mrow[0];
    typename Ops::Acc a0 = Ops::zero(), a1 = Ops::zero(), a2 = Ops::zero(), a3 = Ops::zero();
    typename Ops::Bad bad1 = Ops::no_bad();
    constexpr int64_t VB = (KC / 2) * vsize, MBY = KC / 8;  // values and bitmask bytes of a chunk
    for (; c + 4 <= full; c += 4) {
      if constexpr (kPrefetchBytes > 0) {
        for (int i = 0; i < 4; ++i) level_prefetch(vp + (c + i) * VB, mp + (c + i) * MBY);
      } else {
        for (int i = 0; i < 4; ++i) __builtin_prefetch(vp + (c + i) * VB + kOneRowAhead, 0, 2);
        __builtin_prefetch(mp + c * MBY + kOneRowAhead / 8, 0, 3);
      }
      const typename Ops::W w0 = Ops::load_w(vp + c * VB, VBF16, mp + c * MBY, bad);
      const typename Ops::W w1 = Ops::load_w(vp + (c + 1) * VB, VBF16, mp + (c + 1) * MBY, bad1);
      const typename Ops::W w2 = Ops::load_w(vp + (c + 2) * VB, VBF16, mp + (c + 2) * MBY, bad);
      const typename Ops::W w3 = Ops::load_w(vp + (c + 3) * VB, VBF16, mp + (c + 3) * MBY, bad1);
      a0 = Ops::fma(w0, Ops::load_x(xrow + c * KC), a0);
      a1 = Ops::fma(w1, Ops::load_x(xrow + (c + 1) * KC), a1);
      a2 = Ops::fma(w2, Ops::load_x(xrow + (c + 2) * KC), a2);
      a3 = Ops::fma(w3, Ops::load_x(xrow + (c + 3) * KC), a3);
    }
    acc[0][0] = Ops::add(Ops::add(a0, a1), Ops::add(a2, a3));
    bad = Ops::merge_bad(bad, bad1);
  }
  for (; c < full; ++c) {
    typename Ops::X xs[MB];
    for (int mb = 0; mb < MB; ++mb) xs[mb] = Ops::load_x(xrow + mb * K + c * KC);
    for (int r = 0; r < R; ++r) {
      const uint8_t* vp = vrow[r] + c * (KC / 2) * vsize;
      const uint8_t* mp = mrow[r] + c * (KC / 8);
      level_prefetch(vp, mp);
      const typename Ops::W w = Ops::load_w(vp, VBF16, mp, bad);
      for (int mb = 0; mb < MB; ++mb) acc[r][mb] = Ops::fma(w, xs[mb], acc[r][mb]);
    }
  }
  if (const int64_t rem = K - full * KC) {  // zero-padded copies of the tail chunk (rem is a multiple of 4)
    alignas(64) typename Ops::XElem xp[MB][KC];
    alignas(64) uint8_t vp[KC / 2 * 4];
    uint8_t mp[KC / 8];
    typename Ops::X xs[MB];
    for (int mb = 0; mb < MB; ++mb) {
      std::memset(xp[mb], 0, sizeof(xp[mb]));
      std::memcpy(xp[mb], xrow + mb * K + full * KC, rem * sizeof(xp[mb][0]));
      xs[mb] = Ops::load_x(xp[mb]);
    }
    for (int r = 0; r < R; ++r) {
      std::memset(vp, 0, sizeof(vp));
      std::memcpy(vp, vrow[r] + full * (KC / 2) * vsize, (rem / 2) * vsize);
      for (int i = 0; i < KC / 8; ++i) mp[i] = 0x33;  // padding groups: columns 0 and 1 (values 0)
      const uint8_t* src = mrow[r] + full * (KC / 8);
      for (int64_t g = 0; g < rem / 4; ++g) {
        const int sh = 4 * static_cast<int>(g % 2);
        mp[g / 2] = static_cast<uint8_t>((mp[g / 2] & ~(15 << sh)) | (src[g / 2] >> sh & 15) << sh);
      }
      const typename Ops::W w = Ops::load_w(vp, VBF16, mp, bad);
      for (int mb = 0; mb < MB; ++mb) acc[r][mb] = Ops::fma(w, xs[mb], acc[r][mb]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int mb = 0; mb < MB; ++mb) a.y[(m0 + mb) * a.N + n0 + r] = Ops::reduce(acc[r][mb]);
  bad_out = Ops::merge_bad(bad_out, bad);
}

template <class O, int R, bool VBF16>
void gemm_rows(const GemmArgs& a, const typename O::XElem* x, int64_t n0, typename O::Bad& bad) {
  cpu::SF_ISA_NS::for_row_blocks<O::MB>(
      a.M, [&](auto mb, int64_t m0) { gemm_tile<O, R, decltype(mb)::value, VBF16>(a, x, n0, m0, bad); });
}

template <class O, bool VBF16>
bool gemm_dtype(const GemmArgs& a, const typename O::XElem* x, int64_t n0, int64_t n1) {
  typename O::Bad bad = O::no_bad();
  int64_t n = n0;
  // One activation row (decode) and rows of at most kOneRowMaxBytes of values: one output row at a time (2 streams
  // per thread instead of 2R). Measured on Zen 4 (2 threads, 16 layers of K x N, M = 1, us per layer, R = 4 / 1):
  // bf16 values K = 2048 2588 / 1669, K = 4096 1885 / 1348, 2124 / 1751, 2302 / 1800, K = 5120 1890 / 1262,
  // K = 8192 2021 / 2079, K = 11008 1729 / 2041, 1904 / 2028; fp32 values K = 2048 3575 / 3074, K = 4096
  // 3399 / 3403, 2967 / 2777, K = 11008 3112 / 4117, 2922 / 4138. Staggering the 4 rows' chunk order (so their
  // streams sit at different page offsets) was slower still (K = 4096: 3038), so it is the number of streams
  // that short rows cannot afford, not cache-set aliasing. From 2 activation rows R = 4's shared activation loads
  // win (K = 4096, bf16: M = 2 2160 / 2176, M = 4 3484 / 5287). One row's single accumulator chain costs nothing
  // measurable in cache either (1 thread, 384x1536 bf16 values: 22 / 23 us; 1536x384 fp32: 43 / 39 us), and the AVX2
  // form gains too (4096x11008 bf16 values 3389 / 2751 us; in cache 52.7 / 50.5 us).
  constexpr int64_t kOneRowMaxBytes = 8192;
  if (a.M == 1 && (a.K / 2) * (VBF16 ? 2 : 4) <= kOneRowMaxBytes) {
    for (; n < n1; ++n) gemm_rows<O, 1, VBF16>(a, x, n, bad);
    return !O::is_bad(bad);
  }
  for (; n + O::R <= n1; n += O::R) gemm_rows<O, O::R, VBF16>(a, x, n, bad);
  for (; n < n1; ++n) gemm_rows<O, 1, VBF16>(a, x, n, bad);
  return !O::is_bad(bad);
}

inline bool gemm(const GemmArgs& a, int64_t n0, int64_t n1) {
  return a.values_bf16 ? gemm_dtype<Ops, true>(a, a.x, n0, n1) : gemm_dtype<Ops, false>(a, a.x, n0, n1);
}

#if defined(__AVX512BF16__) && defined(__AVX512VBMI__)
inline bool gemm_bf16(const GemmArgs& a, int64_t n0, int64_t n1) {
  return gemm_dtype<OpsBf16, true>(a, a.xb, n0, n1);
}
#endif

// Whether each of the 16 nibbles of v keeps exactly 2 columns (bit counts per 2, then per 4 bits).
inline bool groups_are_2_of_4(uint64_t v) {
  const uint64_t c2 = v - ((v >> 1) & 0x5555555555555555ull);
  const uint64_t c4 = (c2 & 0x3333333333333333ull) + ((c2 >> 2) & 0x3333333333333333ull);
  return c4 == 0x2222222222222222ull;
}

// One row's 64-input chunk: dense[0:64) from the 32 kept values at v and the chunk's 64 mask bits. The bitmask is
// exactly an expand mask: the kept values, in order, land on the set bits (vexpandps / vpexpandw); the portable
// form places each group's pair.
template <bool VBF16, bool DBF16>
inline void expand_chunk(const uint8_t* v, uint64_t bits, void* dense) {
#if defined(__AVX512F__)
  if constexpr (!DBF16) {
    float* d = static_cast<float*>(dense);
    for (int q = 0; q < 4; ++q) {  // 16 inputs, 8 kept values each
      const __mmask16 m = static_cast<__mmask16>(bits >> (16 * q));
      __m512 out;
      if constexpr (VBF16)
        out = _mm512_maskz_expand_ps(m, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_zextsi128_si256(
                                            _mm_loadu_si128(reinterpret_cast<const __m128i*>(v + 16 * q)))), 16)));
      else
        out = _mm512_maskz_expandloadu_ps(m, v + 32 * q);
      _mm512_storeu_ps(d + 16 * q, out);
    }
    return;
  }
#if defined(__AVX512VBMI2__)
  if constexpr (DBF16 && VBF16) {
    uint16_t* d = static_cast<uint16_t*>(dense);
    for (int h = 0; h < 2; ++h)  // 32 inputs, 16 kept values each
      _mm512_storeu_si512(d + 32 * h, _mm512_maskz_expandloadu_epi16(static_cast<__mmask32>(bits >> (32 * h)),
                                                                   v + 32 * h));
    return;
  }
#endif
#endif
  for (int g = 0; g < 16; ++g) {
    const uint8_t pair = pair_of_nibble(static_cast<int>(bits >> (4 * g) & 15));
    const int c0 = 4 * g + (pair & 3), c1 = 4 * g + (pair >> 2 & 3);
    float f[2];
    for (int i = 0; i < 2; ++i) {
      uint16_t b;
      if constexpr (VBF16) std::memcpy(&b, v + (2 * g + i) * 2, 2);
      if constexpr (VBF16) f[i] = bf16_to_float(b);
      else std::memcpy(f + i, v + (2 * g + i) * 4, 4);
    }
    if constexpr (DBF16) {
      uint16_t* d = static_cast<uint16_t*>(dense);
      for (int c = 0; c < 4; ++c) d[4 * g + c] = 0;
      d[c0] = float_to_bf16(f[0]);
      d[c1] = float_to_bf16(f[1]);
    } else {
      float* d = static_cast<float*>(dense);
      for (int c = 0; c < 4; ++c) d[4 * g + c] = 0.f;
      d[c0] = f[0];
      d[c1] = f[1];
    }
  }
}

// Dense rows [n0, n1): each group's two values at their columns, zeros elsewhere; chunks of 64 inputs, the tail
// through a zero-padded copy (padding groups 0b0011, values 0).
template <bool VBF16, bool DBF16>
bool decompress_rows(const DecompressArgs& a, int64_t n0, int64_t n1) {
  constexpr int vsize = VBF16 ? 2 : 4, dsize = DBF16 ? 2 : 4;
  const int64_t K = a.K, KB = (K + 7) / 8, KV = K / 2, full = K / 64, rem = K % 64;
  bool ok = true;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* mask = a.bitmask + (n - a.row0) * KB;
    const uint8_t* v = static_cast<const uint8_t*>(a.values) + (n - a.row0) * KV * vsize;
    uint8_t* d = static_cast<uint8_t*>(a.dense) + (n - n0) * K * dsize;
    for (int64_t c = 0; c < full; ++c) {
      uint64_t bits;
      std::memcpy(&bits, mask + 8 * c, 8);
      ok &= groups_are_2_of_4(bits);
      expand_chunk<VBF16, DBF16>(v + 32 * c * vsize, bits, d + 64 * c * dsize);
    }
    if (rem) {
      uint64_t bits = 0x3333333333333333ull, real = 0;
      std::memcpy(&real, mask + 8 * full, (rem + 7) / 8);
      const uint64_t keep = (uint64_t{1} << rem) - 1;  // rem < 64
      bits = (bits & ~keep) | (real & keep);
      ok &= groups_are_2_of_4(bits);
      alignas(64) uint8_t vp[32 * 4] = {};
      alignas(64) uint8_t dp[64 * 4];
      std::memcpy(vp, v + 32 * full * vsize, (rem / 2) * vsize);
      expand_chunk<VBF16, DBF16>(vp, bits, dp);
      std::memcpy(d + 64 * full * dsize, dp, rem * dsize);
    }
  }
  return ok;
}

inline bool decompress(const DecompressArgs& a, int64_t n0, int64_t n1) {
  if (a.values_bf16)
    return a.dense_bf16 ? decompress_rows<true, true>(a, n0, n1) : decompress_rows<true, false>(a, n0, n1);
  return a.dense_bf16 ? decompress_rows<false, true>(a, n0, n1) : decompress_rows<false, false>(a, n0, n1);
}

}  // namespace SF_ISA_NS
}  // namespace sparse24
}  // namespace slimformer

#include "sparse24/sparse24_cpu_int4.h"
#include "sparse24/sparse24_cpu_wide.h"
#include "sparse24/sparse24_cpu_amx.h"

namespace slimformer {
namespace sparse24 {
namespace SF_ISA_NS {

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512VBMI2__)
// The avx512bf16 kernels with the large-M route on AMX tiles (sparse24_cpu_amx.h). It takes over from 5 activation
// rows for bf16 values and from 10 for 2:4 + int4 (whose rows are unpacked to bf16 first, ~3 ms a layer here).
// Measured through the op on a 2-core Xeon (Emerald Rapids), 8 x 4096x11008, alternating, median us per layer, small-M
// kernel / AMX: bf16 M=4 4037 / 5200, 4535 / 5203; M=5 4776 / 4406; M=6 6412 / 4467, 8525 / 5029; M=8 8198 / 4969;
// 2:4 + int4 fused / AMX: M=6 4383 / 7276; M=8 8717 / 9415; M=9 8126 / 8906; M=10 8496 / 8300, 9041 / 8261;
// M=12 10935 / 7626. fp32 arithmetic goes to decompressed tiles and the dense fp32 GEMM (MKL) from 48 rows (same
// setup, sparse kernel / tiles: M=16 16154 / 41882, M=32 23818 / 42040, M=64 52640 / 41379); on Zen 4 the sparse
// kernel stays ahead at every M.
inline CpuKernels kernels() {
  return CpuKernels{&gemm,           &decompress,    &gemm_bf16,        &unpack_int4,  &gemm_int4_bf16,
                    &gemm_int4_f32,  &pack_amx_bf16, &gemm_amx_bf16,    &amx_packed_bytes,
                    &amx_k_blocks,   5,              10,               8 * kAmxRows, 48};
}
#elif defined(__AVX512BF16__) && defined(__AVX512VBMI__)
inline int64_t wide_bytes(int64_t M, int64_t K) { return wide_packed_bytes(M, K); }
inline int64_t wide_blocks(int64_t K) { return wide_k_blocks(K); }
// The large-M route from 32 activation rows (measured: sparse24_cpu_ops.cpp, large_m_threshold).
inline CpuKernels kernels() {
  return CpuKernels{&gemm,           &decompress,    &gemm_bf16,      &unpack_int4, &gemm_int4_bf16,
                    &gemm_int4_f32,  &pack_wide_bf16, &gemm_wide_bf16, &wide_bytes,  &wide_blocks,
                    32,              32,             kWideSuperRows, 0};
}
#elif defined(__AVX512F__)
inline CpuKernels kernels() {
  return CpuKernels{&gemm, &decompress, nullptr, &unpack_int4, nullptr, &gemm_int4_f32, nullptr, nullptr,
                    nullptr, nullptr, 0, 0, 0, 0};
}
#else
inline CpuKernels kernels() {
  return CpuKernels{&gemm, &decompress, nullptr, &unpack_int4, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0, 0, 0, 0};
}
#endif

}  // namespace SF_ISA_NS
}  // namespace sparse24
}  // namespace slimformer
