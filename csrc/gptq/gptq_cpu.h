// Framework-free interface of the GPTQ CPU kernels (weight layout: gptq_layout.h). No torch headers: these
// translation units are compiled once per ISA with different -m flags, and must not instantiate shared inline code
// that another TU could pick up.
#pragma once
#include <cstdint>

#include "gptq_layout.h"

namespace slimformer {
namespace gptq {

// Activations as the op receives them: x [M, K] in kernel row order, fp32 or bf16 (bit patterns). The prepare
// functions read bf16 directly (widening is exact), so a bf16 call needs no converted copy of x.
struct KernelInput {
  const void* data;
  bool bf16;
};

// Where a small-M kernel writes the columns of its tiles (columns >= N are skipped): y [M, ld] in fp32, or in bf16
// rounded to nearest even (as torch rounds) when bf16 is set, after adding bias (fp32 [N], optional).
struct KernelOutput {
  void* data;
  bool bf16;
  const float* bias;
  int64_t ld;
  // Optional per-row factor applied before the bias: row m is multiplied by row_factor[2 * m] (the small-M float
  // path's rows with |x| >= 2^100, see prepare_rows); nullptr = 1.
  const float* row_factor = nullptr;
};

// Small-M (decode) GEMM over column tiles [t0, t1).
//   xs   fp32 [M, K]  activations in kernel row order, prescaled for the ISA's extraction by its prepare_rows
//   xsum fp32 [M, G]  plain (unscaled) sum of the activations of each group
//   row_scale fp32 [M, 2]  per row: the factor the group sums are multiplied by, and the factor the output row is
//                          multiplied by (1 unless the row holds |x| >= 2^100; see prepare_rows in gptq_cpu_float.h)
struct SmallMArgs {
  TiledWeight w;
  const float* xs;
  const float* xsum;
  const float* row_scale;
  KernelOutput y;
  int64_t M;
};

// Dequantizes column tiles [t0, t1) into out fp32 [K, ldo], tile t0 landing at column 0.
struct DequantArgs {
  TiledWeight w;
  float* out;
  int64_t ldo;
};

// Integer path for bf16 activations (any bit width), over column tiles [t0, t1).
// Each activation row is split per block of up to kI16Block rows of K (blocks never cross a quantization group):
// x = hi * bscale + lo, where hi is int16 (x rounded to the block's 2^(e-15) grid, e = the exponent of the block's
// largest |x|) and lo is what the rounding left, exactly representable. The kernel sums hi * q exactly in int32
// (vpmaddwd) and adds the few nonzero lo * q in fp32. For bf16 inputs lo is nonzero only for elements more than
// 2^8 below their block's maximum, and every product lo * q is exact, so all products are exact bf16 products.
//   xq      int32 [M, K/2]  pairs of int16 hi values in the order the kernel reads them (see prepare_rows_i16)
//   bscale  fp32 [M, NB]    2^(e-15) per block (NB = blocks_i16(w))
//   xsum    fp32 [M, G]     plain sum of the activations of each group
//   res_n   int32 [M]       the number of residuals of row m: res_k/res_g/res_lo[m * K + i] for i < res_n[m]
//   res_k   int32 [M, K]    kernel-order row index k of a nonzero lo
//   res_g   int32 [M, K]    its quantization group
//   res_lo  fp32 [M, K]     that lo
constexpr int64_t kI16Block = 128;
// A block's int32 sum: at most kI16Block products |hi * q| <= (2^15 - 1) * (2^8 - 1) (8-bit weights are the widest),
// which must not overflow int32.
static_assert(kI16Block * 32767 * 255 <= INT32_MAX, "kI16Block overflows the integer kernel's int32 block sums");
inline int64_t i16_blocks_per_group(const TiledWeight& w) {
  const int64_t gs = w.group_size < w.K ? w.group_size : w.K;
  return (gs + kI16Block - 1) / kI16Block;
}
inline int64_t blocks_i16(const TiledWeight& w) { return w.groups() * i16_blocks_per_group(w); }
constexpr bool i16_bits(int64_t bits) { return gptq_bits_supported(bits); }  // every width has an integer path
// The integer kernel multiplies field j of both 16-bit halves of a weight word by one int32 holding an activation
// pair: "pair" p of a packing unit is the two values (i16_pair_lo, i16_pair_hi) that share a field, and xq holds
// the pairs of each unit in order p = 0 .. unit_values/2 - 1. The words of a unit hold i16_word_pairs pairs each
// (pairs w * i16_word_pairs .. of word w); an int3 unit's last pair is its two sliced values (gptq_decode.h).
constexpr int i16_word_pairs(int bits) { return bits == 3 ? 5 : 16 / bits; }
constexpr int i16_pair_lo(int bits, int p) { return bits == 3 ? (p < 15 ? 10 * (p / 5) + p % 5 : 30) : p; }
constexpr int i16_pair_hi(int bits, int p) { return i16_pair_lo(bits, p) + (bits == 3 ? (p < 15 ? 5 : 1) : 16 / bits); }

struct SmallMI16Args {
  TiledWeight w;
  const int32_t* xq;
  const float* bscale;
  const float* xsum;
  const int32_t* res_n;
  const int32_t* res_k;
  const int32_t* res_g;
  const float* res_lo;
  KernelOutput y;
  int64_t M;
};

// Int8 dynamic-activation mode (opt-in, never the default; 4-bit weights only). Each activation row is quantized per
// block (the same blocks as the integer path: up to kI16Block rows of K, never crossing a quantization group),
// symmetrically to int8: amax = max |x| over the block, x8 = round_half_even(x * (127 / amax)), scale = amax / 127,
// all in fp32 (x8 = 0 and scale = 0 for an all-zero block). The kernel multiplies 4-bit weights by x8 with
// vpmaddubsw, sums exactly in integers per block, and folds y += scale * (s * sum(x8 q) - s * z * sum(x8)) in fp32.
// The rounding of x to 8 bits is the mode's only approximation (benchmarks/README.md measures its cost).
//   xa8    int32 [M, K/4]  per 8-value word u of a row: [2u] = x8 of values 0, 2, 4, 6 (bytes 0..3),
//                          [2u + 1] = x8 of values 1, 3, 5, 7, matching the nibbles of each byte of a weight word
//   ascale fp32 [M, NB]    the blocks' scales
//   asum   fp32 [M, NB]    the blocks' sums of x8 (integers, exact in fp32)
constexpr bool a8_bits(int64_t bits) { return bits == 4; }
struct SmallMA8Args {
  TiledWeight w;
  const int32_t* xa8;
  const float* ascale;
  const float* asum;
  KernelOutput y;
  int64_t M;
};

// bf16 path (AVX512-BF16 CPUs, bf16 activations, bf16_bits(bits)): the weights' integers q, exact in bf16, are
// looked up from a 32-entry table (vpermw) and multiplied with the activations as they are by vdpbf16ps: exact
// products, fp32 sums (rounded to nearest even, as the float kernel's; denormals flushed, so prepare_rows_bf16
// refuses rows that could meet one). No activation split, hence no residuals. y = sum over groups of
// scale * (sum x q - zero * sum x).
//   xb    int32 [M, K/2]  the bf16 bit patterns of x in the integer path's pair order (xq's, without rounding)
//   xsum  fp32 [M, G]     plain sum of the activations of each group
constexpr bool bf16_bits(int64_t bits) { return bits == 2 || bits == 4; }  // q fits the 32-entry table
struct SmallMBf16Args {
  TiledWeight w;
  const int32_t* xb;
  const float* xsum;
  KernelOutput y;
  int64_t M;
};

// Large-M route on AMX tiles (amx level, bf16 activations, bf16_bits(bits), K and the group size multiples of 32;
// gptq_cpu_amx.h). Rows are padded to a multiple of 16: x and xsum hold ceil(M / 16) * 16 rows, the padding zero.
//   x     bf16 [Mp, K]  the activations in kernel row order (bit patterns)
//   xsum  fp32 [Mp, G]  plain sum of the activations of each group (prepare_rows_bf16's)
struct LargeMAmxArgs {
  TiledWeight w;
  const uint16_t* x;
  const float* xsum;
  KernelOutput y;
  int64_t M;
};
// One ISA's kernels. prepare_rows fills xs, xsum and row_scale for activation rows [m0, m1) of x [M, K]
// (kernel row order) the way that ISA's small_m_gemm reads them.
struct CpuKernels {
  void (*prepare_rows)(const TiledWeight& w, KernelInput x, int64_t m0, int64_t m1, float* xs, float* xsum,
                       float* row_scale);
  void (*small_m_gemm)(const SmallMArgs& a, int64_t t0, int64_t t1);
  void (*dequant_tiles)(const DequantArgs& a, int64_t t0, int64_t t1);
  // Integer path (i16_bits(bits) only). prepare_rows_i16 fills xq, bscale, xsum, res_n, res_k, res_g and res_lo
  // for rows [m0, m1) of x [M, K] (kernel row order); it returns false, and the caller must use the float path,
  // when a row holds a non-finite value.
  bool (*prepare_rows_i16)(const TiledWeight& w, KernelInput x, int64_t m0, int64_t m1, int32_t* xq, float* bscale,
                           float* xsum, int32_t* res_n, int32_t* res_k, int32_t* res_g, float* res_lo);
  void (*small_m_gemm_i16)(const SmallMI16Args& a, int64_t t0, int64_t t1);
  // Int8 dynamic-activation mode (a8_bits(bits) only). prepare_rows_a8 returns false for a row holding inf or NaN.
  bool (*prepare_rows_a8)(const TiledWeight& w, KernelInput x, int64_t m0, int64_t m1, int32_t* xa8, float* ascale,
                          float* asum);
  void (*small_m_gemm_a8)(const SmallMA8Args& a, int64_t t0, int64_t t1);
  // bf16 path (null below the avx512bf16 level). prepare_rows_bf16 fills xb (unless null) and xsum for rows [m0, m1)
  // of bf16 x; it returns false, and the caller must take the integer path, for a row holding a non-finite or
  // subnormal value or with 0 < max |x| < 2^-100 (there a flushed partial sum could matter).
  bool (*prepare_rows_bf16)(const TiledWeight& w, KernelInput x, int64_t m0, int64_t m1, int32_t* xb, float* xsum);
  void (*small_m_gemm_bf16)(const SmallMBf16Args& a, int64_t t0, int64_t t1);
  // AMX large-M route (null below the amx level) over column tiles [t0, t1).
  void (*large_m_gemm_amx)(const LargeMAmxArgs& a, int64_t t0, int64_t t1);
};
const CpuKernels& cpu_kernels_scalar();
const CpuKernels& cpu_kernels_avx2();
const CpuKernels& cpu_kernels_avx512();
const CpuKernels& cpu_kernels_avx512vnni();
const CpuKernels& cpu_kernels_avx512bf16();
const CpuKernels& cpu_kernels_amx();

}  // namespace gptq
}  // namespace slimformer
