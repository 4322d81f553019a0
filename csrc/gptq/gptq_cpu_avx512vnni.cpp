// AVX-512 + VNNI instantiation of the GPTQ CPU kernels (Ice Lake, Sapphire Rapids, Zen 4 and later): the same
// code as the avx512 TU, but the integer kernel's multiply-add is the fused vpdpwssd (simd_avx512.h): 4 instead of
// 8 instructions per 64 multiply-adds and row. Measured on Zen 4 (16 x 4096^2 int4 g128, M=128, 2 threads, raw
// kernel): 12.1-12.4 ms vs 16.9 ms for the avx512 form. 6 or 8 rows per pass (registers to spare without the
// separate add) and broadcasts folded into vpdpwssd's memory operand measured slower (12.5-13.9 ms).
// CMake compiles this TU alone with the avx512vnni flags (by its suffix).
#define SF_ISA_NS avx512vnni_impl
#include "common/simd_avx512.h"

namespace slimformer {
namespace gptq {
namespace avx512vnni_impl {
using V = simd::avx512vnni_impl::V;
}  // namespace avx512vnni_impl
}  // namespace gptq
}  // namespace slimformer
#include "common/cpu_dispatch.h"
#include "gptq_cpu_kernel.h"

namespace slimformer {
namespace gptq {
SF_DEFINE_CPU_KERNELS(CpuKernels, cpu_kernels_avx512vnni, avx512vnni_impl::kernels())
}  // namespace gptq
}  // namespace slimformer
