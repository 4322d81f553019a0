// 2:4 sparse GEMM on the CPU: interface shared by the per-ISA kernels (sparse24_cpu_<isa>.cpp) and the torch glue
// (sparse24_cpu_ops.cpp). Framework-free.
//
// Weight layout (the compressed-tensors sparse-24-bitmask layout, python/slimformer/sparse24/format.py): for W
// [N, K] with K a multiple of 4, `values` [N, K/2] holds each row's kept weights in column order (fp32 or bf16)
// and `bitmask` [N, ceil(K/8)] one bit per column (bit j % 8 of byte j / 8), so the 4 columns of group g are the
// nibble (byte g / 2) >> (4 * (g % 2)); each nibble has exactly two bits set. A kernel turns a nibble into the two
// kept columns with kPairOfNibble and flags a nibble that is not 2:4 (the op reports it; the kernels never read
// outside the chunk they are working on, whatever the bits say).
#pragma once
#include <cstdint>

#include "sparse24/sparse24_layout.h"

namespace slimformer {
namespace sparse24 {

struct GemmArgs {
  int64_t M, K, N;
  const float* x;  // [M, K] fp32, row-major (the glue converts bf16/fp16 activations once per call), for gemm
  const uint16_t* xb;  // [M, K] bf16 activations, for gemm_bf16
  const void* values;  // [N, K/2] (the rows from row0 on)
  bool values_bf16;  // else fp32
  const uint8_t* bitmask;  // [N, ceil(K/8)] (the rows from row0 on)
  float* y;  // [M, N] fp32 (ld N)
  int64_t row0 = 0;  // the row of W whose values and bitmask `values` and `bitmask` point at (a block of rows)
  // the large-M bf16 kernel only: fp32 bias [N] added before the output's rounding (or nullptr), and bf16 output
  // [M, N] written instead of y where not nullptr
  const float* bias = nullptr;
  uint16_t* yb = nullptr;
};

// 2:4 + int4 (format.py) in its kernel layout, "tiles" [ceil(N/4), ceil(K/128) * 192] uint8: rows in tiles of 4,
// inputs in blocks of 128 (K padded up to a multiple of 128), each tile's blocks one after another; a block is the
// codes of the tile's 4 rows (32 bytes a row: byte i holds kept value i of the block's 64 in its low nibble and kept
// value 32 + i in its high one) then their positions (16 bytes a row: a nibble a group of 4 inputs, the low nibble the
// even group: first kept column | second kept column << 2, first < second). Padding groups: nibble 0x4, code 0.
// scales [N, groups] (fp32, bf16 or fp16) and zeros uint8 [N, groups], a group being group_size input columns
// (group_size / 2 kept values; a multiple of 4). Kept value = (code - zero) * scale, computed in fp32 exactly as
// format.dequantize_int4_values does (one rounding, of the product).
enum class ScaleType : int { kFloat = 0, kBFloat16 = 1, kHalf = 2 };
constexpr int64_t kTileRows = 4, kTileBlock = 128, kTileBlockBytes = 192;
SF_S24_HD constexpr int64_t tile_bytes(int64_t K) { return (K + kTileBlock - 1) / kTileBlock * kTileBlockBytes; }
struct Int4Args {
  int64_t K, N, group_size, groups;
  const uint8_t* tiles;
  const void* scales;
  ScaleType scale_type;
  const uint8_t* zeros;
};
// The fused kernel keeps each row's scales in a stack buffer of this many groups.
constexpr int64_t kInt4MaxGroups = 512;

struct DecompressArgs {
  int64_t K, N;
  const void* values;
  bool values_bf16;
  const uint8_t* bitmask;
  void* dense;  // [rows, K] for the rows asked for, starting at row n0's
  bool dense_bf16;  // else fp32
  int64_t row0 = 0;  // as in GemmArgs
};

// The AVX-512 large-M bf16 kernel's packed activations (sparse24_cpu_wide.h): blocks of kWideGroups groups of 4 inputs x 16
// activation rows, block (kb, mb) at (kb * wide_row_blocks(M) + mb) * kWideBlockBytes, 64-byte aligned.
constexpr int64_t kWideGroups = 16, kWideBlockBytes = kWideGroups * 6 * 64;
constexpr int64_t wide_row_blocks(int64_t M) { return (M + 15) / 16; }
constexpr int64_t wide_k_blocks(int64_t K) { return (K / 4 + kWideGroups - 1) / kWideGroups; }
constexpr int64_t wide_packed_bytes(int64_t M, int64_t K) { return wide_k_blocks(K) * wide_row_blocks(M) * kWideBlockBytes; }

struct CpuKernels {
  // y[:, n0:n1] = x @ W[n0:n1]^T; false when a group of those rows is not 2:4 (y is then garbage).
  bool (*gemm)(const GemmArgs& a, int64_t n0, int64_t n1);
  // dense rows [n0, n1) of W (zeros where pruned); false when a group is not 2:4.
  bool (*decompress)(const DecompressArgs& a, int64_t n0, int64_t n1);
  // as gemm, for bf16 activations (a.xb) and bf16 values, where the level has such a kernel (else nullptr)
  bool (*gemm_bf16)(const GemmArgs& a, int64_t n0, int64_t n1);
  // rows [n0, n1) of a 2:4 + int4 weight in the layout of the kernels above: the kept values dequantized into
  // values [n1 - n0, K/2] (bf16 when values_bf16, rounded to nearest even, else fp32) and the bitmask into bitmask
  // [n1 - n0, ceil(K/8)]; false when a position nibble is not a pair of distinct columns in order.
  bool (*unpack_int4)(const Int4Args& q, int64_t n0, int64_t n1, void* values, bool values_bf16, uint8_t* bitmask);
  // 2:4 + int4 with bf16 activations (a.xb; a.values and a.bitmask unused) straight from the tiles [t0, t1), where
  // the level multiplies bf16 natively (else nullptr); needs q.group_size a multiple of 64 and q.groups <=
  // kInt4MaxGroups. False when a position nibble is not a pair of distinct columns in order.
  bool (*gemm_int4_bf16)(const GemmArgs& a, const Int4Args& q, int64_t t0, int64_t t1);
  // the same with fp32 activations (a.x) and fp32 arithmetic, on any AVX-512 level (else nullptr); needs K and
  // q.group_size multiples of 32.
  bool (*gemm_int4_f32)(const GemmArgs& a, const Int4Args& q, int64_t t0, int64_t t1);
  // the large-M bf16 route, where the level multiplies bf16 natively (else nullptr): pack K blocks [kb0, kb1) of
  // x [M, K] bf16 for every row block, then y[:, n0:n1) = x @ W[n0:n1)^T from the packed activations (bf16 values;
  // a.xb unused); false when a group of those rows is not 2:4.
  void (*pack_wide_bf16)(const uint16_t* x, int64_t M, int64_t K, uint8_t* packed, int64_t kb0, int64_t kb1);
  bool (*gemm_wide_bf16)(const GemmArgs& a, const uint8_t* packed, int64_t n0, int64_t n1);
  // the large-M route's packed activations for M rows of K inputs: their bytes (64-byte aligned) and the number of K
  // blocks pack_wide_bf16 counts in; and the activation rows from which the route beats the small-M bf16 kernel
  // (bf16 values) and the fused 2:4 + int4 one (rows unpacked to bf16 first)
  int64_t (*wide_packed_bytes)(int64_t M, int64_t K);
  int64_t (*wide_pack_blocks)(int64_t K);
  int64_t wide_min_rows, wide_min_rows_int4;
  // output rows per thread task of gemm_wide_bf16 (a whole number of the kernel's own row blocks)
  int64_t wide_task_rows;
  // activation rows from which fp32 arithmetic goes to decompressed tiles and the dense fp32 GEMM (0: never)
  int64_t f32_tiles_min_rows;
};

const CpuKernels& cpu_kernels_scalar();
const CpuKernels& cpu_kernels_avx2();
const CpuKernels& cpu_kernels_avx512();
const CpuKernels& cpu_kernels_avx512bf16();
const CpuKernels& cpu_kernels_amx();

}  // namespace sparse24
}  // namespace slimformer
