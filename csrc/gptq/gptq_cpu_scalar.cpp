// Portable scalar instantiation of the GPTQ CPU kernels (compiled with the baseline flags only).
#define SF_ISA_NS scalar_impl
#include "common/simd_scalar.h"

namespace slimformer {
namespace gptq {
namespace scalar_impl {
using V = simd::scalar_impl::V;
}  // namespace scalar_impl
}  // namespace gptq
}  // namespace slimformer
#include "common/cpu_dispatch.h"
#include "gptq_cpu_kernel.h"

namespace slimformer {
namespace gptq {
SF_DEFINE_CPU_KERNELS(CpuKernels, cpu_kernels_scalar, scalar_impl::kernels())

// Declared in gptq_cpu.h. Here because this TU has the baseline flags: the same code serves every ISA. A counting
// sort by k (count: K + 1 ints of scratch); rows stay in order within one k.
void sort_residuals_i16(const TiledWeight& w, int64_t M, const int32_t* res_n, const int32_t* res_k,
                        const int32_t* res_g, const float* res_lo, int32_t* count, I16Residual* out) {
  const int64_t K = w.K;
  const int UV = unit_values(static_cast<int>(w.bits)), UW = unit_words(static_cast<int>(w.bits));
  for (int64_t k = 0; k <= K; ++k) count[k] = 0;
  for (int64_t m = 0; m < M; ++m)
    for (int32_t i = 0; i < res_n[m]; ++i) ++count[res_k[m * K + i] + 1];
  for (int64_t k = 0; k < K; ++k) count[k + 1] += count[k];  // count[k]: where k's residuals start
  for (int64_t m = 0; m < M; ++m)
    for (int32_t i = 0; i < res_n[m]; ++i) {
      const int32_t k = res_k[m * K + i];
      out[count[k]++] = I16Residual{(k / UV) * UW * static_cast<int32_t>(kTileCols) + k % UV,
                                    static_cast<int32_t>(m),
                                    res_g[m * K + i] * 2 * static_cast<int32_t>(kTileCols), res_lo[m * K + i]};
    }
}
}  // namespace gptq
}  // namespace slimformer
