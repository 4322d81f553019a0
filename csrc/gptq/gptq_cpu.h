// Framework-free interface of the GPTQ CPU kernels (weight layout: gptq_layout.h). No torch headers: these
// translation units are compiled once per ISA with different -m flags, and must not instantiate shared inline code
// that another TU could pick up.
#pragma once
#include <cstdint>

#include "gptq_layout.h"

namespace slimformer {
namespace gptq {

// Small-M (decode) GEMM over column tiles [t0, t1).
//   xs   fp32 [M, K]  activations in kernel row order, prescaled for the ISA's extraction by its prepare_rows
//   xsum fp32 [M, G]  plain (unscaled) sum of the activations of each group
//   y    fp32 [M, ldy] columns of the tiles are written (columns >= N are skipped)
//   row_scale fp32 [M]  per-row factor the group sums are multiplied by (see prepare_rows in gptq_cpu_kernel.h)
struct SmallMArgs {
  TiledWeight w;
  const float* xs;
  const float* xsum;
  const float* row_scale;
  float* y;
  int64_t M, ldy;
};

// Dequantizes column tiles [t0, t1) into out fp32 [K, ldo], tile t0 landing at column 0.
struct DequantArgs {
  TiledWeight w;
  float* out;
  int64_t ldo;
};

// One ISA's kernels. prepare_rows fills xs, xsum and row_scale for activation rows [m0, m1) of x [M, K]
// (fp32, kernel row order) the way that ISA's small_m_gemm reads them.
struct CpuKernels {
  void (*prepare_rows)(const TiledWeight& w, const float* x, int64_t m0, int64_t m1, float* xs, float* xsum,
                       float* row_scale);
  void (*small_m_gemm)(const SmallMArgs& a, int64_t t0, int64_t t1);
  void (*dequant_tiles)(const DequantArgs& a, int64_t t0, int64_t t1);
};
const CpuKernels& cpu_kernels_scalar();
const CpuKernels& cpu_kernels_avx2();
const CpuKernels& cpu_kernels_avx512();

}  // namespace gptq
}  // namespace slimformer
