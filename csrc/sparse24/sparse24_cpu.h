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
  const void* values;  // [N, K/2] (or the rows from values_row0 on)
  bool values_bf16;  // else fp32
  const uint8_t* bitmask;  // [N, ceil(K/8)]
  float* y;  // [M, N] fp32 (ld N)
  int64_t values_row0 = 0;  // the row of W whose values `values` points at (a block of dequantized rows)
};

// 2:4 + int4 (format.py): qvalues [N, K/4] two 4-bit codes a byte (kept value j of a row in byte j / 2, the low
// nibble for even j), scales [N, groups] (fp32, bf16 or fp16) and zeros uint8 [N, groups], a group being group_size
// input columns (group_size / 2 kept values; a multiple of 4). Kept value = (code - zero) * scale, computed in fp32
// exactly as format.dequantize_int4_values does (one rounding, of the product).
enum class ScaleType : int { kFloat = 0, kBFloat16 = 1, kHalf = 2 };
struct Int4Args {
  int64_t K, N, group_size, groups;
  const uint8_t* qvalues;
  const void* scales;
  ScaleType scale_type;
  const uint8_t* zeros;
  // the kernel layout of the fused kernel (gemm_int4_bf16): qvalues in the split code order, positions (below)
  const uint8_t* positions = nullptr;
};

// The kernel layout of 2:4 + int4 (format.py: to_kernel_layout), which the fused bf16 kernel reads:
// * positions [N, ceil(K/8)]: per group of 4 inputs a nibble first | second << 2 (its two kept columns, first <
//   second), at the bitmask's place (byte g / 2, the low nibble for even g): the activation index is then a bit
//   field, where the bitmask needs a table lookup.
// * codes [N, K/4] in the split order: within each 128-input block (64 kept values, 32 bytes) byte i holds kept
//   value i in its low nibble and kept value 32 + i in its high one; a trailing partial block keeps the plain order.
constexpr int64_t kInt4MaxGroups = 512;

struct DecompressArgs {
  int64_t K, N;
  const void* values;
  bool values_bf16;
  const uint8_t* bitmask;
  void* dense;  // [rows, K] for the rows asked for, starting at row n0's
  bool dense_bf16;  // else fp32
  int64_t values_row0 = 0;  // as in GemmArgs
};

struct CpuKernels {
  // y[:, n0:n1] = x @ W[n0:n1]^T; false when a group of those rows is not 2:4 (y is then garbage).
  bool (*gemm)(const GemmArgs& a, int64_t n0, int64_t n1);
  // dense rows [n0, n1) of W (zeros where pruned); false when a group is not 2:4.
  bool (*decompress)(const DecompressArgs& a, int64_t n0, int64_t n1);
  // as gemm, for bf16 activations (a.xb) and bf16 values, where the level has such a kernel (else nullptr)
  bool (*gemm_bf16)(const GemmArgs& a, int64_t n0, int64_t n1);
  // the kept values of rows [n0, n1) of a 2:4 + int4 weight, dequantized into out [n1 - n0, K/2] (bf16 when
  // out_bf16, rounded to nearest even, else fp32): what gemm / gemm_bf16 / decompress then read as `values`
  void (*dequant_int4)(const Int4Args& q, int64_t n0, int64_t n1, void* out, bool out_bf16);
  // 2:4 + int4 with bf16 activations (a.xb; a.values and a.bitmask unused) on the kernel layout (q.qvalues in the
  // split order, q.positions) without a values buffer, where the level multiplies bf16 natively (else nullptr);
  // needs K a multiple of 128, q.group_size of 64 and q.groups <= kInt4MaxGroups. False when a position nibble is
  // not a pair of columns.
  bool (*gemm_int4_bf16)(const GemmArgs& a, const Int4Args& q, int64_t n0, int64_t n1);
};

const CpuKernels& cpu_kernels_scalar();
const CpuKernels& cpu_kernels_avx2();
const CpuKernels& cpu_kernels_avx512();
const CpuKernels& cpu_kernels_avx512bf16();

}  // namespace sparse24
}  // namespace slimformer
